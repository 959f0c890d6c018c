"""A draft report as a FHIR R4 ``DiagnosticReport`` (status ``preliminary``), built with ``fhir.resources``.

``fhir.resources`` 8 defaults to FHIR R5; this module uses its ``R4B`` models (FHIR 4.3). A
DiagnosticReport written with only the elements used here has the same JSON in R4 (4.0.1) and
R4B, so the output is accepted by R4 servers. Shape:

- ``status`` preliminary; ``category`` v2-0074 ``RAD`` (Radiology); ``code`` LOINC ``36554-4``
  "XR Chest Single view": the model drafts from one frontal radiograph (the IHE Imaging Diagnostic
  Report examples use the same code for a single-view chest report; ``36643-5`` "XR Chest 2 Views"
  would claim a lateral the model never read).
- ``subject``: a logical reference (identifier = Patient ID, assigner = Issuer of Patient ID) when
  the source DICOM has one; ``imagingStudy``: identifier ``urn:dicom:uid`` / ``urn:oid:<Study UID>``;
  ``basedOn``: the order by Accession Number (identifier type ``ACSN``), when present.
- ``conclusion`` and a ``text/plain`` ``presentedForm`` (base64, with size and SHA-1) hold the findings.
- Who wrote it: R4 allows only Practitioner, PractitionerRole, Organization or CareTeam as
  ``performer``, so a model cannot be put there. The model is a contained ``Device`` (name, version,
  settings as properties) that the contained findings ``Observation`` names as its ``device``; the
  report carries the HL7 security label ``AIAST`` ("Artificial Intelligence asserted", as the HL7 AI
  Transparency IG does) and a narrative that says it is an unverified machine draft. ``performer`` and
  ``resultsInterpreter`` stay empty until a radiologist signs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import uuid
from typing import TYPE_CHECKING, Any

from llavarad.report_formats._common import (
    DISCLAIMER,
    MANUFACTURER,
    DraftReport,
    ModelInfo,
    ReportFormatError,
    require,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["LOINC_CHEST_XR", "to_fhir", "to_fhir_json", "to_fhir_resource"]

LOINC = "http://loinc.org"
#: (code, display) of the report type: a chest radiograph report from a single (frontal) view.
LOINC_CHEST_XR = ("36554-4", "XR Chest Single view")
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
          "display": "Artificial Intelligence asserted"}
_DICOM_UID = "urn:dicom:uid"


def to_fhir_resource(report: DraftReport, source: Dataset | None, model: ModelInfo):
    """The draft as a validated ``fhir.resources.R4B.diagnosticreport.DiagnosticReport``.

    ``source`` is the DICOM header of the image (or None for PNG/JPEG: no subject or study references).
    """
    require("fhir.resources")
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydantic import ValidationError

    body = _body(report, source, model)
    try:
        return DiagnosticReport.model_validate(body)
    except ValidationError as exc:  # a bug here, or a source value FHIR cannot hold: name the field
        raise ReportFormatError(f"the FHIR DiagnosticReport did not validate: {exc.errors()[0]['loc']}: "
                                f"{exc.errors()[0]['msg']}") from exc


def to_fhir(report: DraftReport, source: Dataset | None, model: ModelInfo) -> dict[str, Any]:
    """The draft as a FHIR R4 DiagnosticReport, as a JSON-ready dict (validated by ``fhir.resources``)."""
    import json

    return json.loads(to_fhir_json(report, source, model))


def to_fhir_json(report: DraftReport, source: Dataset | None, model: ModelInfo) -> str:
    """The draft as FHIR R4 DiagnosticReport JSON text."""
    return to_fhir_resource(report, source, model).model_dump_json(exclude_none=True)


def _body(report: DraftReport, source: Dataset | None, model: ModelInfo) -> dict[str, Any]:
    findings = report.findings.strip()
    issued = report.created.isoformat()
    study_uid = str(source.get("StudyInstanceUID", "")) if source is not None else ""
    body: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        # one draft per study and model: the same id again (a PUT replaces it); no study: a fresh id
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"llavarad:{study_uid}:{model.identity}") if study_uid else uuid.uuid4()),
        "meta": {"security": [_AIAST]},
        "text": {"status": "generated", "div": _narrative(report, model)},
        "contained": [_device(model), _observation(findings, issued)],
        "status": "preliminary",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": LOINC_CHEST_XR[0], "display": LOINC_CHEST_XR[1]}],
                 "text": "Chest X-ray findings (AI draft)"},
        "issued": issued,
        "result": [{"reference": "#findings", "display": "AI-drafted findings"}],
        "conclusion": findings,
        "presentedForm": [_attachment(report, issued)],
    }
    if source is not None:
        body.update(_references(source))
    return body


def _references(source: Dataset) -> dict[str, Any]:
    """subject / imagingStudy / basedOn / effective from the source's DICOM tags, when present."""
    out: dict[str, Any] = {}
    patient_id = str(source.get("PatientID", "") or "").strip()
    if patient_id:
        ident: dict[str, Any] = {"value": patient_id}
        issuer = str(source.get("IssuerOfPatientID", "") or "").strip()
        if issuer:
            ident["assigner"] = {"display": issuer}
        out["subject"] = {"type": "Patient", "identifier": ident}
    study_uid = str(source.get("StudyInstanceUID", "") or "").strip()
    if study_uid:
        out["imagingStudy"] = [{"type": "ImagingStudy",
                                "identifier": {"system": _DICOM_UID, "value": f"urn:oid:{study_uid}"}}]
    accession = str(source.get("AccessionNumber", "") or "").strip()
    if accession:
        out["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": _V2_0203, "code": "ACSN", "display": "Accession ID"}]}, "value": accession}}]
    effective = _dicom_datetime(source)
    if effective:
        out["effectiveDateTime"] = effective
    return out


def _dicom_datetime(source: Dataset) -> str | None:
    """StudyDate (+ StudyTime when the source gives its UTC offset) as a FHIR dateTime; None when absent.

    FHIR wants a zone on any dateTime with a time; DICOM times are local, so without Timezone Offset
    From UTC only the date is given rather than a guessed zone.
    """
    date = str(source.get("StudyDate", "") or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = str(source.get("StudyTime", "") or "").split(".")[0].strip()
    offset = str(source.get("TimezoneOffsetFromUTC", "") or "").strip()
    if len(time) >= 4 and time.isdigit() and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        time = time.ljust(6, "0")[:6]
        return f"{text}T{time[:2]}:{time[2:4]}:{time[4:6]}{offset[:3]}:{offset[3:]}"
    return text


def _device(model: ModelInfo) -> dict[str, Any]:
    return {
        "resourceType": "Device", "id": "model",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "manufacturer": MANUFACTURER,
        "type": {"text": "AI chest X-ray report-generation model (LLaVA-Rad)"},
        "version": [{"value": model.version}],
        "property": [{"type": {"text": key}, "valueCode": [{"text": str(value)}]}
                     for key, value in sorted(model.settings.items())],
        "note": [{"text": DISCLAIMER}],
    }


def _observation(findings: str, issued: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "findings", "status": "preliminary",
        "meta": {"security": [_AIAST]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18782-3", "display": "Radiology Study observation (narrative)"}],
                 "text": "Findings"},
        "issued": issued, "valueString": findings, "device": {"reference": "#model"},
    }


def _attachment(report: DraftReport, issued: str) -> dict[str, Any]:
    data = report.findings.strip().encode("utf-8")
    return {"contentType": "text/plain; charset=utf-8", "language": "en",
            "data": base64.b64encode(data).decode("ascii"), "size": len(data),
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
            "title": "Findings (preliminary AI draft, not verified)", "creation": issued}


def _narrative(report: DraftReport, model: ModelInfo) -> str:
    parts = [f"<p><b>{html.escape(DISCLAIMER)}</b></p>", f"<p>Model: {html.escape(model.identity)}</p>"]
    if report.indication:
        parts.append(f"<p>Indication: {html.escape(report.indication.strip())}</p>")
    parts.append(f"<p>Findings: {html.escape(report.findings.strip())}</p>")
    parts.extend(f"<p>Warning: {html.escape(w)}</p>" for w in report.warnings)
    return '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(parts) + "</div>"
