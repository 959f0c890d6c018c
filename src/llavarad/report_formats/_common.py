"""What both report formats start from: the draft, the model that wrote it, and the source DICOM header."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from llavarad.errors import LlavaradError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from llavarad.model.build import ModelBundle

__all__ = ["DraftReport", "ModelInfo", "ReportFormatError", "indication_from_dicom", "read_source_header"]

#: Said in every rendering, so nobody takes the draft for a radiologist's signed report.
DISCLAIMER = ("Preliminary machine-generated draft (AI); not reviewed or verified by a radiologist. "
              "For use only as a draft by a qualified reader.")
#: Value of Manufacturer in every SR and of the Device's manufacturer in FHIR: the software that wrote it.
MANUFACTURER = "llavarad"


class ReportFormatError(LlavaradError, ValueError):
    """A draft that cannot be rendered in the asked format (no source study, empty findings, ...)."""


@dataclass(frozen=True)
class ModelInfo:
    """The model that wrote a draft: ``name`` (a label), ``version`` (changes when the weights change),
    ``settings`` (generation settings). ``identity`` is what the PACS loop uses to recognise its own SRs."""

    name: str
    version: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not str(self.name).strip():
            problems.append("ModelInfo.name is empty: give the model a name (e.g. its folder name)")
        if not str(self.version).strip():
            problems.append("ModelInfo.version is empty")
        if problems:
            raise ReportFormatError("; ".join(problems))

    @property
    def identity(self) -> str:
        """``name version``: one line that names this exact model (SR Series Description, FHIR Device)."""
        return f"{self.name} {self.version}"

    def parameters(self) -> list[str]:
        """Settings as ``key=value`` strings, sorted (SR Algorithm Parameters, FHIR Device properties)."""
        return [f"{k}={_plain(v)}" for k, v in sorted(self.settings.items())]

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, settings: Mapping[str, Any] | None = None,
                       bundle: ModelBundle | None = None) -> ModelInfo:
        """Name and version of a llavarad model folder.

        The name is ``llavarad.json``'s ``name`` when present, else the folder's name (a label only:
        loading never depends on it). The version is ``llavarad <library version> weights <fingerprint>``:
        a SHA-256 over ``llavarad.json``, ``config.json`` and the size and last MiB of every safetensors
        file, so a retrained or converted model gets a new version without hashing gigabytes.
        """
        from llavarad import __version__

        folder = Path(model_dir)
        meta = bundle.meta if bundle is not None else _read_json(folder / "llavarad.json")
        digest = hashlib.sha256()
        for name in ("llavarad.json", "config.json"):
            path = folder / name
            if path.is_file():
                digest.update(path.read_bytes())
        for path in sorted(folder.glob("*.safetensors")):
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as fh:
                fh.seek(max(0, size - (1 << 20)))
                digest.update(fh.read())
        name = str(meta.get("name") or folder.resolve().name)
        return cls(name=name, version=f"llavarad {__version__} weights {digest.hexdigest()[:12]}",
                   settings=dict(settings or {}))


@dataclass(frozen=True)
class DraftReport:
    """A generated report: the Findings text and, optionally, the indication and warnings it came with."""

    findings: str
    indication: str | None = None
    warnings: tuple[str, ...] = ()
    created: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))

    def __post_init__(self) -> None:
        if not isinstance(self.findings, str) or not self.findings.strip():
            raise ReportFormatError("the draft has no findings text (generation failed or returned nothing); "
                                    "only successful drafts can be written as FHIR or SR")
        if self.created.tzinfo is None:
            raise ReportFormatError("DraftReport.created must be timezone-aware (e.g. datetime.now(timezone.utc))")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DraftReport:
        """From a predictions row (``prediction``, ``indication``, ``error``) or a served report
        (``findings``, ``warnings``)."""
        if record.get("error"):
            raise ReportFormatError(f"record {record.get('id')!r} is an error record ({record['error']}); "
                                    "there is no draft to write")
        text = record.get("findings", record.get("prediction"))
        warnings = record.get("warnings") or ([record["warning"]] if record.get("warning") else [])
        return cls(findings=text, indication=record.get("indication"), warnings=tuple(str(w) for w in warnings))


def require(module: str) -> None:
    """Fail with the install command when an optional library of the ``pacs`` extra is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (e.g. ``fhir`` of ``fhir.resources``) is missing
        found = False
    if not found:
        raise ReportFormatError(f"{module} is not installed: pip install 'llavarad[pacs]'")


@contextlib.contextmanager
def values_never_quoted() -> Iterator[None]:
    """While active, pydicom neither validates values on reading nor on writing.

    pydicom warns about, and logs, an invalid value by quoting it (``Invalid value for VR DA:
    '<birth date>'``); archives hold many such values, some of them patient data. Values are passed
    on as the source has them, and none is quoted into a log. Not thread-safe (pydicom's settings
    are global); the settings are restored on exit.
    """
    from pydicom import config

    saved = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


def read_source_header(source: str | Path | BinaryIO) -> Dataset:
    """The DICOM header of a source image (pixel data not read), for the SR's and FHIR's references.

    ``source`` is a path or an open binary file (e.g. ``io.BytesIO`` of an upload; read from its
    current position, named by its ``name`` attribute or ``upload`` in messages). A PNG or JPEG has no
    study to attach a report to: :class:`ReportFormatError` says so.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from llavarad.io.images import detect_format

    in_memory = not isinstance(source, (str, os.PathLike))
    name = str(getattr(source, "name", "") or "upload") if in_memory else str(source)
    try:
        if in_memory:
            start = source.tell()
            head = source.read(512)
            source.seek(start)
        else:
            with Path(source).open("rb") as fh:
                head = fh.read(512)
    except OSError as exc:
        raise ReportFormatError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    fmt = detect_format(head)
    if fmt != "dicom":
        raise ReportFormatError(f"{name}: a {fmt.upper() if fmt else 'non-DICOM'} file has no DICOM study to attach "
                                "a report to; use --format jsonl or fhir, or give the DICOM file")
    try:
        ds = pydicom.dcmread(source if in_memory else str(source), force=True, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ReportFormatError(f"{name}: DICOM header cannot be read ({type(exc).__name__})") from exc
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        raise ReportFormatError(f"{name}: the DICOM header lacks {', '.join(missing)}; a report cannot reference it")
    return ds


def indication_from_dicom(ds: Dataset) -> str | None:
    """The reason for the exam as the image header carries it, for the model's prompt; None when absent.

    Looks at Reason for the Requested Procedure in the Request Attributes Sequence (where modalities
    copy it from the worklist), then at the top level, then at the retired Reason for Study.
    """
    candidates = [item.get("ReasonForTheRequestedProcedure") for item in ds.get("RequestAttributesSequence") or []]
    candidates += [ds.get("ReasonForTheRequestedProcedure"), ds.get("ReasonForStudy")]
    for value in candidates:
        text = " ".join(str(value or "").split())
        if text:
            return text
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportFormatError(f"{path}: cannot read the model's metadata ({exc}); is this a llavarad model folder?") from exc


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
