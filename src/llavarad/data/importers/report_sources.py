"""Report sources of a hospital's own data: a RIS dump (CSV or JSONL) or a FHIR bulk export.

Each source yields :class:`ReportRow` objects (the join key, the report text and where it came
from) or :class:`~llavarad.data.importers._common.ImportProblem` for a row that cannot be used, so
the DICOM archive importer (:mod:`.dicom_archive`) counts every report it could not join.

* CSV / JSONL: one report per row; the key column (accession number or Study Instance UID), the
  text column and an optional separate indication column are configurable
  (:class:`ReportColumns`).
* FHIR bulk-export NDJSON of ``DiagnosticReport`` resources, validated with ``fhir.resources``.
  FHIR R4 (4.0.1) exports are read with the library's ``R4B`` models (``fhir.resources`` 7+ ships
  R5 as its default and R4B/STU3 as subpackages, no R4 one; a DiagnosticReport is the same in R4
  and R4B); ``fhir_version="R5"`` reads R5, where ``imagingStudy`` became ``study``. The text
  comes from the first plain-text ``presentedForm`` attachment, else from ``conclusion``; the
  study link from an ``imagingStudy`` reference (its ``urn:dicom:uid`` identifier, a contained
  ImagingStudy's identifier, or an ``ImagingStudy/<uid>`` id made of digits and dots) and the
  accession number from an identifier typed ``ACSN`` (HL7 v2-0203).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llavarad.data.importers._common import DatasetLayoutError, ImportProblem, iter_csv

__all__ = [
    "JOIN_KEYS",
    "REPORT_FORMATS",
    "JoinKey",
    "ReportColumns",
    "ReportFormat",
    "ReportRow",
    "detect_report_format",
    "iter_reports",
]

JoinKey = Literal["accession", "study-uid"]
JOIN_KEYS: tuple[str, ...] = ("accession", "study-uid")
ReportFormat = Literal["auto", "csv", "jsonl", "fhir"]
REPORT_FORMATS: tuple[str, ...] = ("auto", "csv", "jsonl", "fhir")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DROP_STATUS = {"entered-in-error", "cancelled", "registered"}
#: FHIR status -> preference when several reports share a key (an amendment beats the first draft).
_STATUS_RANK = {"amended": 3, "corrected": 3, "appended": 3, "final": 2, "preliminary": 1, "partial": 1}


@dataclass(frozen=True)
class ReportColumns:
    """Column (CSV) or field (JSONL) names of a report dump.

    key: the join key's column; ``None`` picks by the join: ``accession_number`` for accession,
        ``study_instance_uid`` for study-uid (a few common spellings are tried, see
        :data:`_KEY_CANDIDATES`).
    text: the free-text report column (sectioned by the rule-based sectioner).
    indication: optional column with the reason for the exam, used when the text has none.
    """

    key: str | None = None
    text: str = "report"
    indication: str | None = None

    def __post_init__(self) -> None:
        problems = [f"{name}={value!r} must be a non-empty column name" for name, value in
                    (("key", self.key), ("text", self.text), ("indication", self.indication))
                    if value is not None and not str(value).strip()]
        if problems:
            raise ValueError("; ".join(problems))


_KEY_CANDIDATES: dict[str, tuple[str, ...]] = {
    "accession": ("accession_number", "AccessionNumber", "accession", "acc_no", "ACCESSION_NUMBER"),
    "study-uid": ("study_instance_uid", "StudyInstanceUID", "study_uid", "STUDY_INSTANCE_UID"),
}


@dataclass
class ReportRow:
    """One report: join ``key``, ``text``, optional ``indication``, ``where`` (file:line), ``rank``."""

    key: str
    text: str
    where: str
    indication: str | None = None
    report_id: str | None = None
    rank: int = 0


def detect_report_format(path: Path) -> ReportFormat:
    """``csv`` for .csv(.gz); ``fhir`` for .ndjson or a JSONL whose first object has a resourceType."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".ndjson"):
        return "fhir"
    if name.endswith((".jsonl", ".json")):
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        first = json.loads(raw)
                    except json.JSONDecodeError:
                        return "jsonl"
                    return "fhir" if isinstance(first, dict) and "resourceType" in first else "jsonl"
        return "jsonl"
    raise DatasetLayoutError(f"{path}: cannot tell the report format from the name; pass --reports-format csv, "
                             "jsonl or fhir")


def iter_reports(path: str | Path, join: JoinKey = "accession", fmt: ReportFormat = "auto",
                 columns: ReportColumns | None = None,
                 fhir_version: Literal["R4", "R4B", "R5"] = "R4") -> Iterator[ReportRow | ImportProblem]:
    """Stream the reports of ``path`` keyed by ``join``; unusable rows come back as problems.

    Raises:
        DatasetLayoutError: the file is missing, or a CSV lacks the named columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: no such report file (a CSV/JSONL dump of the RIS or a FHIR NDJSON export)")
    if join not in JOIN_KEYS:
        raise ValueError(f"join={join!r}: use one of {', '.join(JOIN_KEYS)}")
    fmt = detect_report_format(path) if fmt == "auto" else fmt
    columns = columns or ReportColumns()
    if fmt == "fhir":
        yield from _iter_fhir(path, join, fhir_version)
    elif fmt in ("csv", "jsonl"):
        yield from _iter_table(path, join, fmt, columns)
    else:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(REPORT_FORMATS)}")


def _table_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | ImportProblem]]:
    if fmt == "csv":
        yield from iter_csv(path)
        return
    from llavarad.io.manifest import ManifestError, read_jsonl

    try:
        yield from read_jsonl(path)
    except ManifestError as exc:
        raise DatasetLayoutError(str(exc)) from exc


def _iter_table(path: Path, join: JoinKey, fmt: str, columns: ReportColumns) -> Iterator[ReportRow | ImportProblem]:
    key_col: str | None = None
    for line, row in _table_rows(path, fmt):
        where = f"{path}:{line}"
        if isinstance(row, ImportProblem):  # an unreadable CSV row, named by io.text
            yield row
            continue
        if not isinstance(row, dict):
            yield ImportProblem(where, f"{where}: expected a JSON object, got {type(row).__name__}")
            continue
        if key_col is None:  # columns are resolved once, from the first row
            key_col = _resolve_column(path, row, columns.key, _KEY_CANDIDATES[join], f"--key-column ({join})")
            _resolve_column(path, row, columns.text, (columns.text,), "--report-column")
            if columns.indication:
                _resolve_column(path, row, columns.indication, (columns.indication,), "--indication-column")
        key = _cell(row.get(key_col))
        text = _cell(row.get(columns.text))
        if not key:
            yield ImportProblem(where, f"{where}: empty {key_col!r}; the report cannot be joined to a study", None)
            continue
        if not text:
            yield ImportProblem(where, f"{where}: empty report text in {columns.text!r}", key)
            continue
        indication = _cell(row.get(columns.indication)) if columns.indication else None
        yield ReportRow(key=key, text=text, where=where, indication=indication or None)


def _resolve_column(path: Path, row: dict[str, Any], wanted: str | None, candidates: tuple[str, ...], flag: str) -> str:
    for name in ((wanted,) if wanted else candidates):
        if name in row:
            return name
    found = ", ".join(list(row)[:12])
    raise DatasetLayoutError(f"{path}: no column {' / '.join(repr(c) for c in ((wanted,) if wanted else candidates))}; "
                             f"the file has {found}. Name the right one with {flag}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none", "null") else text


def _fhir_model(version: str) -> Any:
    try:
        if version == "R5":
            from fhir.resources.diagnosticreport import DiagnosticReport
        else:
            from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    except ImportError as exc:
        raise DatasetLayoutError("reading FHIR reports needs the 'fhir.resources' package (pip install "
                                 "'fhir.resources>=7')") from exc
    return DiagnosticReport


def _iter_fhir(path: Path, join: JoinKey, version: str) -> Iterator[ReportRow | ImportProblem]:
    from llavarad.io.manifest import ManifestError, read_jsonl

    model = _fhir_model(version)
    try:
        for line, obj in read_jsonl(path):
            where = f"{path}:{line}"
            item = _fhir_row(model, obj, where, join, version)
            if item is not None:
                yield item
    except ManifestError as exc:
        raise DatasetLayoutError(str(exc)) from exc


def _fhir_row(model: Any, obj: Any, where: str, join: JoinKey, version: str) -> ReportRow | ImportProblem | None:
    if not isinstance(obj, dict) or obj.get("resourceType") != "DiagnosticReport":
        kind = obj.get("resourceType") if isinstance(obj, dict) else type(obj).__name__
        if kind in ("ImagingStudy", "Patient", "ServiceRequest", "Observation"):
            return None  # other resources of the same bulk export are not reports
        return ImportProblem(where, f"{where}: not a DiagnosticReport (resourceType {kind!r})")
    try:
        report = model.model_validate(obj)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError and value errors alike
        first = str(exc).splitlines()[:3]
        return ImportProblem(where, f"{where}: invalid FHIR {version} DiagnosticReport ({' '.join(first)})", obj.get("id"))
    rid = report.id
    status = str(report.status or "")
    if status in _DROP_STATUS:
        return ImportProblem(where, f"{where}: DiagnosticReport {rid} has status {status!r}; not used", rid)
    key = _fhir_accession(report) if join == "accession" else _fhir_study_uid(report, version)
    if not key:
        what = "an identifier of type ACSN (accession number)" if join == "accession" else \
            "an imagingStudy reference with the Study Instance UID"
        return ImportProblem(where, f"{where}: DiagnosticReport {rid} has no {what}; cannot join it (try the other "
                                    "--join)", rid)
    text = _fhir_text(report)
    if not text:
        return ImportProblem(where, f"{where}: DiagnosticReport {rid} has no plain-text presentedForm and no "
                                    "conclusion", rid)
    return ReportRow(key=key, text=text, where=where, report_id=rid, rank=_STATUS_RANK.get(status, 0))


def _fhir_accession(report: Any) -> str | None:
    for ident in report.identifier or []:
        codes = [c.code for c in (ident.type.coding or [])] if ident.type else []
        if "ACSN" in codes and ident.value:
            return str(ident.value).strip()
    return None


def _uid_from_identifier(ident: Any) -> str | None:
    if ident is None or not ident.value:
        return None
    value = str(ident.value).strip()
    if (ident.system or "") == "urn:dicom:uid" or value.startswith("urn:oid:"):
        value = value.removeprefix("urn:oid:")
        return value if _UID.match(value) else None
    return None


def _fhir_study_uid(report: Any, version: str) -> str | None:
    refs = (getattr(report, "study", None) if version == "R5" else report.imagingStudy) or []
    contained = {c.id: c for c in (report.contained or []) if getattr(c, "id", None)}
    for ref in refs:
        uid = _uid_from_identifier(ref.identifier)
        if uid:
            return uid
        target = str(ref.reference or "")
        if target.startswith("#") and target[1:] in contained:
            for ident in getattr(contained[target[1:]], "identifier", None) or []:
                uid = _uid_from_identifier(ident)
                if uid:
                    return uid
        if target.startswith("ImagingStudy/") and _UID.match(target.split("/", 1)[1]):
            return target.split("/", 1)[1]
    return None


def _fhir_text(report: Any) -> str | None:
    for att in report.presentedForm or []:
        ctype = str(att.contentType or "").lower()
        if att.data and (ctype.startswith("text/plain") or not ctype):
            data = att.data
            text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
            if text.strip():
                return text.strip()
    return str(report.conclusion).strip() if report.conclusion and str(report.conclusion).strip() else None
