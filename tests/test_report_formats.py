"""FHIR R4 DiagnosticReport and DICOM SR renderings of a draft, on the real DICOMs in ../shared/data."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import pytest

pytest.importorskip("highdicom")
pytest.importorskip("fhir.resources")

from dicom3tools import DCIODVFY, dciodvfy_errors

from llavarad.report_formats import (
    DraftReport,
    ModelInfo,
    ReportFormatError,
    read_source_header,
    to_fhir,
    to_sr,
)

DICOMS = ("siim_pa_jpeg_baseline.dcm", "siim_pa_flagged_monochrome1.dcm", "cr_monochrome1_10bit_nopreamble.dcm")
MODEL = ModelInfo("tiny-test", "llavarad 0.1.0 weights 0123456789ab", {"max_new_tokens": 256, "prompt_format": "v1"})
FINDINGS = "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."
def content_items(ds, path=()):
    """Flatten an SR content tree into (concept-name meaning path, item) pairs."""
    for item in getattr(ds, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        yield (*path, name), item
        yield from content_items(item, (*path, name))


@pytest.mark.parametrize("name", DICOMS)
def test_sr_from_each_real_dicom_is_valid_and_references_its_source(shared_data, tmp_path, name):
    source = read_source_header(shared_data / "images" / name)
    sr = to_sr(DraftReport(FINDINGS, indication="Cough.", warnings=("a warning",)), source, MODEL)
    out = tmp_path / "sr.dcm"
    sr.save_as(out, enforce_file_format=True)

    import pydicom

    back = pydicom.dcmread(out)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert back.PatientID == source.get("PatientID", "") and str(back.PatientName) == str(source.get("PatientName", ""))
    assert back.Manufacturer == "llavarad" and back.SeriesDescription == f"AI draft {MODEL.identity}"
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    items = dict(content_items(back))
    assert items[("Findings", "Finding")].TextValue == FINDINGS
    image = items[("Findings", "Finding", "Source image")]
    assert image.RelationshipType == "INFERRED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert items[("Algorithm Name",)].TextValue == MODEL.name
    assert items[("Algorithm Version",)].TextValue == MODEL.version
    params = [it.TextValue for path, it in content_items(back) if path == ("Algorithm Parameters",)]
    assert params == ["max_new_tokens=256", "prompt_format=v1"]
    assert items[("Observer Type",)].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert "not reviewed or verified by a radiologist" in items[("Comment",)].TextValue
    assert "Warning: a warning" in items[("Comment",)].TextValue

    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; the SR was checked without it")
    errors, _warnings = dciodvfy_errors(out)
    assert errors == [], errors


def test_source_header_from_memory_as_a_server_gets_it(shared_data):
    import io

    raw = (shared_data / "images" / DICOMS[2]).read_bytes()  # the no-preamble file
    upload = io.BytesIO(raw)
    assert read_source_header(upload).SOPInstanceUID == read_source_header(shared_data / "images" / DICOMS[2]).SOPInstanceUID
    png = io.BytesIO((shared_data / "images" / "00000001_000.png").read_bytes())
    with pytest.raises(ReportFormatError, match="upload: a PNG file has no DICOM study"):
        read_source_header(png)


def test_sr_uids_are_stable_per_study_and_model(shared_data):
    source = read_source_header(shared_data / "images" / DICOMS[0])
    a, b = to_sr(DraftReport("one"), source, MODEL), to_sr(DraftReport("two"), source, MODEL)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    other = to_sr(DraftReport("one"), source, ModelInfo("tiny-test", "another version"))
    assert other.SeriesInstanceUID != a.SeriesInstanceUID and other.SeriesDescription != a.SeriesDescription


def test_sr_keeps_utf8_text_and_drops_a_malformed_patient_age(shared_data, tmp_path):
    source = read_source_header(shared_data / "images" / DICOMS[0])
    assert source.PatientAge == "62"  # the real file's value: not a valid AS ("062Y")
    source.PatientName = "Müller^Zoë"
    sr = to_sr(DraftReport("Poumons clairs — pas d'épanchement."), source, MODEL)
    sr.save_as(tmp_path / "u.dcm", enforce_file_format=True)

    import pydicom

    back = pydicom.dcmread(tmp_path / "u.dcm")
    assert str(back.PatientName) == "Müller^Zoë" and "PatientAge" not in back
    assert dict(content_items(back))[("Findings", "Finding")].TextValue == "Poumons clairs — pas d'épanchement."


def test_sr_needs_a_dicom_source(shared_data, tmp_path):
    with pytest.raises(ReportFormatError, match="PNG file has no DICOM study"):
        read_source_header(shared_data / "images" / "00000001_000.png")
    import pydicom

    ds = pydicom.dcmread(shared_data / "images" / DICOMS[0], stop_before_pixels=True)
    del ds.SOPInstanceUID
    with pytest.raises(ReportFormatError, match="lacks SOPInstanceUID"):
        to_sr(DraftReport(FINDINGS), ds, MODEL)
    with pytest.raises(ReportFormatError, match="no findings"):
        DraftReport("  ")
    with pytest.raises(ReportFormatError, match="error record"):
        DraftReport.from_record({"id": "x", "prediction": None, "error": "unreadable"})


def test_sr_warnings_never_quote_the_patient_name(shared_data, recwarn):
    source = read_source_header(shared_data / "images" / DICOMS[0])
    source.PatientName = "SECRETNAME"  # one component: highdicom would warn and quote it
    to_sr(DraftReport(FINDINGS), source, MODEL)
    assert not [w for w in recwarn.list if "SECRETNAME" in str(w.message)]


def test_fhir_diagnostic_report_from_dicom(shared_data):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    source = read_source_header(shared_data / "images" / DICOMS[2])  # has an accession number, no patient ID
    source.PatientID, source.IssuerOfPatientID = "PID-4711", "HOSP-A"
    body = to_fhir(DraftReport(FINDINGS, indication="Fever."), source, MODEL)
    report = DiagnosticReport.model_validate(body)  # round-trips through the R4B models
    assert report.status == "preliminary"
    assert report.category[0].coding[0].system == "http://terminology.hl7.org/CodeSystem/v2-0074"
    assert report.category[0].coding[0].code == "RAD"
    assert (report.code.coding[0].system, report.code.coding[0].code) == ("http://loinc.org", "36554-4")
    assert (report.subject.identifier.value, report.subject.identifier.assigner.display) == ("PID-4711", "HOSP-A")
    assert report.imagingStudy[0].identifier.system == "urn:dicom:uid"
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{source.StudyInstanceUID}"
    assert report.basedOn[0].identifier.value == str(source.AccessionNumber)
    assert report.conclusion == FINDINGS
    form = body["presentedForm"][0]  # the JSON as sent (the model object holds data decoded)
    data = base64.b64decode(form["data"])
    assert form["contentType"].startswith("text/plain") and data.decode("utf-8") == FINDINGS
    assert form["size"] == len(data) and base64.b64decode(form["hash"]) == hashlib.sha1(data).digest()
    assert body["meta"]["security"][0]["code"] == "AIAST"
    assert "not reviewed or verified by a radiologist" in body["text"]["div"]
    assert "Fever." in body["text"]["div"]

    contained = {r["resourceType"]: r for r in body["contained"]}
    device = contained["Device"]
    assert device["deviceName"][0]["name"] == MODEL.name and device["version"][0]["value"] == MODEL.version
    assert {p["type"]["text"]: p["valueCode"][0]["text"] for p in device["property"]} == {
        "max_new_tokens": "256", "prompt_format": "v1"}
    observation = contained["Observation"]
    assert observation["device"]["reference"] == "#" + device["id"]
    assert observation["valueString"] == FINDINGS and body["result"][0]["reference"] == "#" + observation["id"]
    # No human performer is claimed; anything present must be a type R4 allows there.
    allowed = DiagnosticReport.model_fields["performer"].json_schema_extra["enum_reference_types"]
    assert all(p.get("type") in allowed for p in body.get("performer", []))
    assert to_fhir(DraftReport("other"), source, MODEL)["id"] == body["id"]  # one report per study and model


def test_fhir_from_png_has_no_subject_and_dates_keep_fhir_rules(shared_data):
    body = to_fhir(DraftReport(FINDINGS), None, MODEL)
    assert "subject" not in body and "imagingStudy" not in body and body["status"] == "preliminary"
    source = read_source_header(shared_data / "images" / DICOMS[0])
    assert to_fhir(DraftReport(FINDINGS), source, MODEL)["effectiveDateTime"] == "1901-01-01"  # no zone: date only
    source.TimezoneOffsetFromUTC = "+0100"
    assert to_fhir(DraftReport(FINDINGS), source, MODEL)["effectiveDateTime"] == "1901-01-01T00:00:00+01:00"


def test_model_info_version_follows_the_weights(tiny_model_dir, tmp_path):
    info = ModelInfo.from_model_dir(tiny_model_dir, settings={"max_new_tokens": 8})
    assert info.name == tiny_model_dir.name and info.version.startswith("llavarad ")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert ModelInfo.from_model_dir(copy).version == info.version  # a copy is the same model
    weights = next(copy.glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert ModelInfo.from_model_dir(copy).version != info.version


def test_generate_cli_writes_fhir_and_sr_and_refuses_sr_for_png(shared_data, tiny_model_dir, tmp_path, capsys):
    from llavarad.cli import main

    dcm, png = shared_data / "images" / DICOMS[0], shared_data / "images" / "00000001_000.png"
    common = ["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "6"]
    assert main([*common, str(dcm), str(png), "--format", "fhir"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["resourceType"] for r in lines] == ["DiagnosticReport", "DiagnosticReport"]
    assert "imagingStudy" in lines[0] and "imagingStudy" not in lines[1]

    out_dir = tmp_path / "srs"
    assert main([*common, str(dcm), str(png), "--format", "sr", "--out-dir", str(out_dir)]) == 1
    captured = capsys.readouterr()
    assert "PNG file has no DICOM study to attach a report to" in captured.err
    written = list(out_dir.glob("*.dcm"))
    assert len(written) == 1
    if DCIODVFY is not None:
        assert dciodvfy_errors(written[0])[0] == []
    assert main([*common, str(dcm), "--format", "sr"]) != 0  # no --out-dir: a usage error
