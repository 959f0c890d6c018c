"""A draft report as a DICOM Comprehensive SR in the source image's study (built with highdicom).

The SR is a new series in the source's study (same Study Instance UID; patient and study modules
copied from the source, as the standard wants), marked as unfinished and unchecked
(CompletionFlag PARTIAL, VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY), written by a
device observer (the model) and not by a person. Its content tree follows the shape of TID 2000
(Basic Diagnostic Imaging Report) without claiming the template:

    CONTAINER (LN 18748-4 "Diagnostic Imaging Report")
      HAS CONCEPT MOD  CODE  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  observer type Device; device UID, name, manufacturer, model name (TID 1002/1004)
      HAS CONCEPT MOD  TEXT  Algorithm Name / Algorithm Version / Algorithm Parameters (TID 4019)
      CONTAINS CONTAINER (DCM 121070 "Findings")
        CONTAINS TEXT (DCM 121071 "Finding") = the findings
          INFERRED FROM IMAGE (DCM 121324 "Source image") -> the source SOP instance
      CONTAINS TEXT (DCM 121106 "Comment") = the disclaimer and any warnings

Series and SOP Instance UIDs are derived from the study, the source image and the model's identity,
so writing the same draft twice gives the same UIDs (a PACS stores it once).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llavarad.report_formats._common import (
    DISCLAIMER,
    MANUFACTURER,
    DraftReport,
    ModelInfo,
    ReportFormatError,
    require,
    values_never_quoted,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

__all__ = ["SR_SERIES_NUMBER", "series_description", "sr_uids", "to_sr"]

#: Series Number of the SR series (a high number keeps it after the image series in viewers).
SR_SERIES_NUMBER = 9901
_AGE = re.compile(r"\d{3}[DWMY]")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
#: Type 2 attributes highdicom reads from the source: present (empty if unknown) in the SR.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime")


def series_description(model: ModelInfo) -> str:
    """The SR's Series Description: how the PACS loop recognises the SRs of this exact model (LO, 64 chars)."""
    import hashlib

    text = f"AI draft {model.identity}"
    if len(text) <= 64:
        return text
    return f"AI draft {model.name[:30]} {hashlib.sha256(model.identity.encode()).hexdigest()[:16]}"[:64]


def sr_uids(study_uid: str, source_sop_uid: str, model: ModelInfo) -> tuple[str, str, str]:
    """Deterministic ``(series_uid, sop_instance_uid, device_uid)`` for a draft of ``study_uid``.

    UUID-derived UIDs (``2.25.<uuid5 as integer>``, ISO/IEC 9834-8): no registered root needed, and
    the same study and model always give the same UIDs (pydicom's ``generate_uid(prefix=None)`` would
    ignore its entropy sources and draw a random UUID).
    """
    import uuid

    def uid(*parts: str) -> str:
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"

    return (uid("llavarad-sr-series", study_uid, model.identity),
            uid("llavarad-sr", study_uid, source_sop_uid, model.identity),
            uid("llavarad-device", model.identity))


def to_sr(report: DraftReport, source: Dataset | Sequence[Dataset], model: ModelInfo) -> Dataset:
    """The draft as a Comprehensive SR (a ``highdicom.sr.ComprehensiveSR``, a pydicom ``Dataset``).

    ``source`` is the image the findings were drafted from (its header is enough), or several images
    of the same study: the first is the one the findings are inferred from; all are listed as
    evidence. Raises :class:`ReportFormatError` when a source lacks the UIDs a reference needs or the
    sources belong to different studies.
    """
    require("highdicom")
    import highdicom as hd

    sources = [source] if not isinstance(source, Sequence) else list(source)
    if not sources:
        raise ReportFormatError("to_sr needs the source image's DICOM header (none given)")
    with values_never_quoted():  # a malformed source value is never quoted into a warning or log
        evidence = [_checked_copy(ds, i) for i, ds in enumerate(sources)]
    study_uid = str(evidence[0].StudyInstanceUID)
    if any(str(ds.StudyInstanceUID) != study_uid for ds in evidence):
        raise ReportFormatError("the source images belong to different studies; an SR reports on one study")
    series_uid, sop_uid, device_uid = sr_uids(study_uid, str(evidence[0].SOPInstanceUID), model)
    when = report.created.astimezone()
    with warnings.catch_warnings():
        # highdicom warns about one-component person names and quotes the name: patient data never
        # goes into a warning (warnings can end up in logs); the name is copied as the source has it.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sr = _build(hd, report, evidence, model, (series_uid, sop_uid, device_uid), when)
    return sr


def _build(hd, report: DraftReport, evidence: list[Dataset], model: ModelInfo, uids: tuple[str, str, str], when):
    series_uid, sop_uid, device_uid = uids
    return hd.sr.ComprehensiveSR(
        evidence=evidence, content=_content(report, evidence[0], model, device_uid),
        series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=1, manufacturer=MANUFACTURER, is_complete=False, is_final=False, is_verified=False,
        series_description=series_description(model), manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64], content_date=when.date(), content_time=when.time().replace(tzinfo=None),
        series_date=when.date(), series_time=when.time().replace(tzinfo=None),
        specific_character_set="ISO_IR 192",  # UTF-8: any findings text and any copied name fit
    )


def _checked_copy(ds: Dataset, index: int) -> Dataset:
    """A header-only copy with the attributes highdicom reads present (empty when the source has none)."""
    from pydicom.dataset import Dataset as _Dataset

    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        raise ReportFormatError(f"source image {index + 1} lacks {', '.join(missing)}; the SR cannot reference it")
    copy = _Dataset()
    for elem in ds:
        if elem.tag.group != 0x7FE0 and elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            copy.add(elem)
    for keyword in _TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, "")
    # highdicom copies the whole Patient and Patient Study modules; a malformed age (e.g. "62" for
    # "062Y", seen in real exports) would make the SR invalid, and the attribute is optional.
    if "PatientAge" in copy and not _AGE.fullmatch(str(copy.PatientAge or "")):
        logger.debug("source %d: Patient's Age is not a valid AS value (nnnD/W/M/Y); left out of the SR", index + 1)
        del copy.PatientAge
    for keyword, form in (("PatientBirthDate", _DATE), ("StudyDate", _DATE), ("StudyTime", _TIME)):
        raw = str(copy.get(keyword) or "").strip()
        if raw and not form.fullmatch(raw):  # type 2: an empty value is valid, a malformed one is not
            logger.debug("source %d: %s is malformed; left empty in the SR (the value is not logged)", index + 1, keyword)
            setattr(copy, keyword, "")
    return copy


def _content(report: DraftReport, source: Dataset, model: ModelInfo, device_uid: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rel = hd.sr.RelationshipTypeValues
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, is_content_continuous=False)
    root.ContentSequence = hd.sr.ContentSequence([
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept("en", "RFC5646", "English")),
        *hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid, name=model.name[:64], manufacturer_name=MANUFACTURER, model_name=model.name[:64]),
        ),
        *hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64],
                                       parameters=[p[:1024] for p in model.parameters()] or None),
        _findings_container(report, source),
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=_comment(report), relationship_type=rel.CONTAINS),
    ], is_root=False)
    return root


def _findings_container(report: DraftReport, source: Dataset):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rel = hd.sr.RelationshipTypeValues
    finding = hd.sr.TextContentItem(name=codes.DCM.Finding, value=report.findings.strip(),
                                    relationship_type=rel.CONTAINS)
    finding.ContentSequence = hd.sr.ContentSequence([
        hd.sr.ImageContentItem(name=codes.DCM.SourceImage, referenced_sop_class_uid=str(source.SOPClassUID),
                               referenced_sop_instance_uid=str(source.SOPInstanceUID),
                               relationship_type=rel.INFERRED_FROM),
    ], is_root=False)
    container = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type=rel.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([finding], is_root=False)
    return container


def _comment(report: DraftReport) -> str:
    lines = [DISCLAIMER]
    if report.indication:
        lines.append(f"Indication given to the model: {report.indication.strip()}")
    lines.extend(f"Warning: {w}" for w in report.warnings)
    return "\n".join(lines)
