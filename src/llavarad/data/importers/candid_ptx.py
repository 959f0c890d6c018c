"""CANDID-PTX (Dunedin Hospital): pneumothorax, acute rib fracture and chest tube annotations.

Layout of the release::

    CANDID-PTX/
      Pneumothorax_reports.csv   SOPInstanceUID,EncodedPixels     ("-1" = no pneumothorax;
                                                                  one row per pneumothorax mask)
      acute_rib_fracture.csv     anon_SOPUID,mask_rle             (rows only for positive images)
      chest_tube.csv             anon_SOPUID,mask_rle             (rows only for positive images)
      dataset/<SOPInstanceUID>.dcm

Every image of ``Pneumothorax_reports.csv`` is a record; an image absent from the fracture or tube
file is negative for it (the release annotates all three on every image). There is no official
split: all records are ``train``, as in the paper's count of 19,237 pairs. Patient ids live only
in the DICOM headers: ``read_dicom_headers=True`` reads them (and the view) with pydicom, without
pixel data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import ImportProblem, find_file, good_rows, iter_csv, normalize_view
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "SOURCE_LABELS", "iter_candid_ptx"]

DATASET = "candid-ptx"
#: Source label names, in sentence order; CheXpert equivalents for the manifest's ``labels``.
SOURCE_LABELS: dict[str, str] = {"Pneumothorax": "Pneumothorax", "Rib Fracture": "Fracture", "Chest Tube": "Support Devices"}


def _positive_ids(path: Path, problems: list[ImportProblem]) -> set[str]:
    ids: set[str] = set()
    for _line, row in good_rows(iter_csv(path, ["anon_SOPUID"]), problems):
        uid = row["anon_SOPUID"].strip()
        if uid:
            ids.add(uid)
    return ids


def _dicom_header(path: Path) -> tuple[str | None, str | None]:
    import pydicom  # local: only needed with read_dicom_headers

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["PatientID", "ViewPosition"])
    if len(ds) == 0 and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise ValueError("no DICOM elements (not a DICOM file)")
    return (str(ds.get("PatientID", "")) or None, str(ds.get("ViewPosition", "")) or None)


def iter_candid_ptx(root: str | Path, images_dir: str | Path | None = None,
                    read_dicom_headers: bool = False) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image (grouping the per-mask rows of the pneumothorax file)."""
    root = Path(root)
    ptx_path = find_file(root, ["Pneumothorax_reports.csv"], "CANDID-PTX Pneumothorax_reports.csv")
    problems: list[ImportProblem] = []
    fracture = _positive_ids(find_file(root, ["acute_rib_fracture.csv"], "CANDID-PTX acute_rib_fracture.csv"), problems)
    tube = _positive_ids(find_file(root, ["chest_tube.csv"], "CANDID-PTX chest_tube.csv"), problems)
    yield from problems
    img_dir = Path(images_dir) if images_dir else next(
        (d for d in (root / "dataset", root / "images") if d.is_dir()), root)
    # Rows of one image are adjacent in the release; a dict keeps the order and is ~20k entries.
    ptx: dict[str, tuple[int, bool]] = {}
    for line, row in iter_csv(ptx_path, ["SOPInstanceUID", "EncodedPixels"]):
        if isinstance(row, ImportProblem):
            yield row
            continue
        uid = row["SOPInstanceUID"].strip()
        if not uid:
            yield ImportProblem(f"{ptx_path}:{line}", f"{ptx_path}:{line}: empty SOPInstanceUID")
            continue
        positive = row["EncodedPixels"].strip() not in ("-1", "")
        first_line, seen = ptx.get(uid, (line, False))
        ptx[uid] = (first_line, seen or positive)
    for uid, (line, positive) in ptx.items():
        image = img_dir / f"{uid}.dcm"
        patient, view = None, None
        if read_dicom_headers:
            try:
                patient, view = _dicom_header(image)
            except Exception as exc:  # noqa: BLE001 - any unreadable DICOM is reported, not fatal
                yield ImportProblem(str(image), f"{image}: unreadable DICOM header ({exc})", f"{DATASET}/{uid}")
        source = {"Pneumothorax": float(positive), "Rib Fracture": float(uid in fracture),
                  "Chest Tube": float(uid in tube)}
        # A negative rib fracture / chest tube says nothing about other fractures or devices.
        labels = {SOURCE_LABELS[k]: v for k, v in source.items() if v == 1.0 or k == "Pneumothorax"}
        yield ManifestRecord(
            id=f"{DATASET}/{uid}", image=str(image), dataset=DATASET, split="train", patient_id=patient,
            view=normalize_view(view) if view else None, labels=labels,
            extra={"source_labels": source, "frontal": True},
        )
