"""Header-only reading of a DICOM archive and the rules that sort its files (used by
:mod:`.dicom_archive`).

:func:`iter_files` walks a folder tree lazily (a stack of ``os.scandir`` iterators, never a list
of the tree); :func:`read_headers` reads the attributes the import needs from a batch of files with
``pydicom.dcmread(stop_before_pixels=True, specific_tags=...)`` and runs in worker processes; and
:func:`classify` decides what a header is: a chest CR/DX image (frontal or lateral, with how the
view was known) or a reason to leave the file out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavarad.io.images import detect_format

__all__ = ["HEADER_TAGS", "Classified", "classify", "iter_files", "read_header", "read_headers"]

#: The attributes read from each file (everything else, pixel data included, is never parsed).
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "PatientID",
    "Modality", "ViewPosition", "ViewCodeSequence", "BodyPartExamined", "SeriesDescription", "StudyDescription",
    "ProtocolName", "ImageLaterality", "Laterality",
)
_STRING_TAGS = tuple(t for t in HEADER_TAGS if t != "ViewCodeSequence")
_TAG_LIST = list(HEADER_TAGS)

_DICOMDIR = "1.2.840.10008.1.3.10"
_SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7",)  # and its multi-frame .7.1-.7.4 children
_FOR_PROCESSING = {"1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3.1"}
_CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_PA", "CHEST_AP", "CHEST_LAT", "TORAX", "THORAX_PA"}
_CHEST_WORDS = re.compile(r"\b(CHEST|THORAX|THORAC\w*|CXR|LUNGS?|TORAX|TH[OÖ]RAX|POUMONS?)\b")
_VIEW_WORDS = (
    (re.compile(r"\b(LAT|LATERAL|LL|RL|LLAT|RLAT|SEITLICH|PROFIL)\b"), "LATERAL"),
    (re.compile(r"\b(PA|P-A|POSTERO-?ANTERIOR|POSTEROANTERIOR)\b"), "PA"),
    (re.compile(r"\b(AP|A-P|ANTERO-?POSTERIOR|ANTEROPOSTERIOR|SUPINE|PORTABLE)\b"), "AP"),
)


def iter_files(root: Path) -> Iterator[str]:
    """Paths of the regular files under ``root``, relative and with '/' separators, found lazily.

    Directory symlinks are not followed (no cycles); hidden entries (starting with '.') are
    skipped. Order is the file system's, which does not matter: the import sorts at the end.
    """
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    rel = prefix + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((Path(entry.path), rel + "/"))
                        elif entry.is_file():
                            yield rel
                    except OSError:
                        yield rel  # reported as unreadable by read_header
        except OSError:
            continue  # an unreadable folder: its files are invisible; logged by the caller's counts


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_header(root: str, rel: str) -> dict[str, Any]:
    """The header fields of one file as a JSON-ready dict, or ``status`` not_dicom / unreadable."""
    import pydicom

    path = os.path.join(root, rel)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; one open serves the sniff and the parse
    except OSError as exc:
        return {"path": rel, "status": "unreadable", "error": f"cannot open ({exc.strerror or exc})"}
    with fh:
        if detect_format(fh.read(132)) != "dicom":
            return {"path": rel, "status": "not_dicom", "error": "not a DICOM file (no DICM marker, no DICOM elements)"}
        fh.seek(0)
        out: dict[str, Any] = {"path": rel, "status": "ok", **dict.fromkeys(_STRING_TAGS), "ViewCodeMeaning": None}
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True, specific_tags=_TAG_LIST)
            # reading stops at the pixel data; a file that ends first is truncated (or holds no image)
            truncated = fh.tell() >= os.fstat(fh.fileno()).st_size
            for elem in ds:  # one pass over the few elements read; no per-keyword lookups
                if elem.keyword == "ViewCodeSequence":
                    out["ViewCodeMeaning"] = next((_text(c.get("CodeMeaning")) for c in elem.value or []
                                                   if _text(c.get("CodeMeaning"))), None)
                elif elem.keyword in out:
                    out[elem.keyword] = _text(elem.value)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files; each is a problem row
            return {"path": rel, "status": "unreadable",
                    "error": f"unreadable DICOM header ({type(exc).__name__}: {exc})"}
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR:
        return {"path": rel, "status": "not_image", "error": "a DICOMDIR (media directory), not an image"}
    if not any(out.get(t) for t in ("SOPInstanceUID", "StudyInstanceUID", "Modality")):
        return {"path": rel, "status": "unreadable", "error": "no DICOM elements could be read (truncated or corrupt)"}
    if truncated and (out.get("Modality") or "").upper() in ("CR", "DX", ""):
        # an SR / KO / PR has no pixels by design and is left out by its modality instead
        return {"path": rel, "status": "unreadable", "error": "the file ends before any pixel data (truncated?)"}
    return out


def read_headers(root: str, rels: list[str]) -> list[dict[str, Any]]:
    """:func:`read_header` for a batch (one task of the worker pool)."""
    return [read_header(root, rel) for rel in rels]


@dataclass
class Classified:
    """What one header is: a kept image (``reason`` None) or the reason it is left out.

    ``flags`` are (reason, message) pairs of kept images that need a look (guessed view, view
    unknown, body part from a description, no PatientID).
    """

    reason: str | None
    message: str = ""
    view: str | None = None
    frontal: bool | None = None
    view_source: str | None = None
    body_part: str | None = None
    flags: tuple[tuple[str, str], ...] = ()


def _guess(header: dict[str, Any], fields: tuple[str, ...], patterns: Any) -> tuple[str | None, str | None]:
    for name in fields:
        text = (header.get(name) or "").upper().replace("_", " ")
        for pattern, value in patterns:
            if text and pattern.search(text):
                return value, name
    return None, None


def classify(header: dict[str, Any], *, modalities: tuple[str, ...] = ("CR", "DX"),
             keep_secondary_capture: bool = False, unknown_body_part: str = "exclude") -> Classified:
    """Sort one ``status == "ok"`` header (see :func:`read_header`) by the import's rules."""
    from llavarad.data.importers._common import normalize_view
    from llavarad.io._dicom import normalise_view

    sop_class = header.get("SOPClassUID") or ""
    if not header.get("SOPInstanceUID") or not header.get("StudyInstanceUID"):
        return Classified("missing_uid", "no SOP Instance UID or Study Instance UID; cannot place the image in a study")
    if sop_class.startswith(_SECONDARY_CAPTURE) and not keep_secondary_capture:
        return Classified("secondary_capture", f"secondary capture (SOP class {sop_class}), not an acquired radiograph; "
                                               "--keep-secondary-capture keeps such files")
    if sop_class in _FOR_PROCESSING:
        return Classified("for_processing", f"a 'for processing' (raw detector) image, SOP class {sop_class}")
    modality = (header.get("Modality") or "").upper()
    if modality not in modalities:
        return Classified("not_cr_dx", f"modality {modality or 'missing'}, not one of {', '.join(modalities)}")
    flags: list[tuple[str, str]] = []
    part = (header.get("BodyPartExamined") or "").upper().replace(" ", "_")
    if part and part not in _CHEST_PARTS:
        return Classified("non_chest", f"body part {part}, not the chest")
    if not part:
        guessed, where = _guess(header, ("SeriesDescription", "StudyDescription", "ProtocolName"),
                                ((_CHEST_WORDS, "CHEST"),))
        if guessed is None and unknown_body_part == "exclude":
            return Classified("body_part_unknown", "no BodyPartExamined and no description naming the chest; "
                                                   "--unknown-body-part keep keeps such files")
        part = guessed
        flags.append(("body_part_guessed", f"no BodyPartExamined; chest taken from {where}") if guessed else
                     ("body_part_unknown", "no BodyPartExamined and no description naming the chest; kept as asked"))
    raw_view, source = header.get("ViewPosition"), "ViewPosition"
    if not raw_view and header.get("ViewCodeMeaning"):
        raw_view, source = header["ViewCodeMeaning"], "ViewCodeSequence"
    view, frontal = normalise_view(raw_view)
    if view is None:
        guessed_view, where = _guess(header, ("SeriesDescription", "ProtocolName", "StudyDescription"), _VIEW_WORDS)
        if guessed_view is not None:
            view, frontal = normalise_view(guessed_view)
            source = f"guessed from {where}"
            flags.append(("view_guessed", (f"no ViewPosition; {view} guessed from {where} "
                                          f"{header.get(where)!r}")))
        else:
            source = None
            flags.append(("view_missing", ("no ViewPosition and no view in the descriptions; view left empty "
                                          "(the build step leaves such images out)")))
    laterality = (header.get("ImageLaterality") or header.get("Laterality") or "").upper()
    if frontal and laterality in ("L", "R"):
        flags.append(("unilateral_frontal", f"frontal view with ImageLaterality {laterality} (one side only?)"))
    if not header.get("PatientID"):
        flags.append(("missing_patient_id", "no PatientID; the split uses the Study Instance UID instead"))
    return Classified(None, view=normalize_view(view), frontal=frontal, view_source=source, body_part=part,
                      flags=tuple(flags))
