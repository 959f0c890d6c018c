"""Open-I / Indiana University chest X-ray collection: report XMLs and PNG images.

Layout of the NLM release::

    NLMCXR_reports.tgz  (or the unpacked ecgen-radiology/<uid>.xml)
        <eCitation> ... <AbstractText Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">
                    ... <parentImage id="CXR<uid>_IM-xxxx-xxxx"> (one per image)
    NLMCXR_png/CXR<uid>_IM-xxxx-xxxx.png

Sections come separated by the source (``text_source`` "original"). Views come from the DICOM
metadata CSV that accompanies the collection (``imageid``, ``View Position``; torchxrayvision
ships it as ``nlmcxr_dicom_metadata.csv.gz``) when given; otherwise ``view`` is None and the
evaluation builder reports those images as "view unknown". Open-I has no split: every record is
``test`` (it is an external evaluation set).
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import DatasetLayoutError, ImportProblem, good_rows, iter_csv, normalize_view
from llavarad.data.sections import normalize_whitespace
from llavarad.errors import InputError
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "iter_openi", "parse_openi_xml"]

DATASET = "openi"


def parse_openi_xml(data: bytes, where: str) -> tuple[str, dict[str, str | None], list[str], list[str]]:
    """Return ``(uid, sections, image_ids, mesh_major)`` of one report XML."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{where}: not well-formed XML ({exc})") from exc
    uid_node = root.find("uId")
    if uid_node is None or not uid_node.get("id"):
        raise ValueError(f"{where}: no <uId id=...> element; is this an Open-I report XML?")
    sections: dict[str, str | None] = {"indication": None, "comparison": None, "findings": None, "impression": None}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in sections:
            sections[label] = normalize_whitespace(node.text) or None
    images = [n.get("id", "") for n in root.findall("parentImage") if n.get("id")]
    mesh = [normalize_whitespace(n.text) for n in root.findall("./MeSH/major") if n.text]
    return uid_node.get("id", ""), sections, images, mesh


def _iter_xml(reports: Path) -> Iterator[tuple[str, bytes]]:
    if reports.is_dir():
        paths = sorted(reports.rglob("*.xml"))
        if not paths:
            raise DatasetLayoutError(f"{reports}: no Open-I report XMLs (*.xml) found; pass the ecgen-radiology "
                                     "folder or NLMCXR_reports.tgz")
        for path in paths:
            yield str(path), path.read_bytes()
    elif reports.is_file() and reports.name.endswith((".tgz", ".tar.gz", ".tar")):
        try:
            with tarfile.open(reports, "r:*") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xml"):
                        fh = tar.extractfile(member)
                        if fh is not None:
                            yield f"{reports}::{member.name}", fh.read()
        except (tarfile.TarError, EOFError, zlib.error) as exc:  # EOFError would otherwise read as Ctrl-C
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"{reports}: damaged or truncated archive ({why}); "
                             "re-download NLMCXR_reports.tgz") from exc
    else:
        raise DatasetLayoutError(f"{reports}: not a folder of Open-I XMLs nor NLMCXR_reports.tgz")


def _views(meta_csv: Path | None, problems: list[ImportProblem]) -> dict[str, str | None]:
    if meta_csv is None:
        return {}
    return {row["imageid"].strip(): normalize_view(row.get("View Position"))
            for _line, row in good_rows(iter_csv(meta_csv, ["imageid", "View Position"]), problems)}


def iter_openi(root: str | Path, reports: str | Path | None = None, images_dir: str | Path | None = None,
               metadata_csv: str | Path | None = None) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image of every report (reports without images become problems)."""
    root = Path(root)
    if reports is None:
        reports = next((p for p in (root / "NLMCXR_reports.tgz", root / "ecgen-radiology", root / "reports")
                        if p.exists()), root)
    img_dir = Path(images_dir) if images_dir else next(
        (d for d in (root / "NLMCXR_png", root / "images") if d.is_dir()), root)
    if metadata_csv is None:
        metadata_csv = next((p for p in (root / "nlmcxr_dicom_metadata.csv", root / "nlmcxr_dicom_metadata.csv.gz")
                             if p.is_file()), None)
    meta_problems: list[ImportProblem] = []
    views = _views(Path(metadata_csv) if metadata_csv else None, meta_problems)
    yield from meta_problems
    for where, data in _iter_xml(Path(reports)):
        try:
            uid, sections, images, mesh = parse_openi_xml(data, where)
        except ValueError as exc:
            yield ImportProblem(where, str(exc))
            continue
        if not images:
            yield ImportProblem(where, f"{where}: report {uid} lists no images", f"{DATASET}/{uid}")
            continue
        for image_id in images:
            yield ManifestRecord(
                id=f"{DATASET}/{image_id}", image=str(img_dir / f"{image_id}.png"), dataset=DATASET, split="test",
                patient_id=uid, study_id=uid, view=views.get(image_id), indication=sections["indication"],
                findings=sections["findings"], impression=sections["impression"], text_source="original",
                extra={"comparison": sections["comparison"], "mesh": mesh},
            )
