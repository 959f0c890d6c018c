"""VinDr-CXR (Hospital 108 / Hanoi Medical University): radiologists' labels per image.

Two release layouts are read:

- Kaggle "VinBigData" (the one the paper's 15,000 training pairs match)::

      train.csv   image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
      train/<image_id>.dicom            (one row per box; "No finding" rows have no box)

- PhysioNet 1.0.0::

      annotations/image_labels_train.csv   image_id,rad_id,<label>,...,No finding  (0/1 per radiologist)
      annotations/image_labels_test.csv
      train/<image_id>.dicom, test/<image_id>.dicom

Three radiologists read each training image. A label is positive when at least ``min_votes`` of
them marked it (default 1: any reader), else 0; "No finding" is 1 only when no label is positive.
The per-image votes are grouped in memory (18,000 images at most).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import DatasetLayoutError, ImportProblem, iter_csv
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "KAGGLE_CLASSES", "iter_vindr"]

DATASET = "vindr-cxr"
#: The 14 box classes of the Kaggle release, in class_id order (class 14 is "No finding").
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)
_TO_CHEXPERT = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
                "Lung Opacity": "Lung Opacity", "Pleural effusion": "Pleural Effusion", "Pneumothorax": "Pneumothorax",
                "Nodule/Mass": "Lung Lesion"}
_NO_FINDING = "No finding"


def _record(image_id: str, split: str, folder: Path, ext: str, votes: dict[str, int], classes: list[str],
            min_votes: int) -> ManifestRecord:
    source = {name: float(votes.get(name, 0) >= min_votes) for name in classes}
    any_positive = any(source.values())
    source[_NO_FINDING] = float(not any_positive)
    labels: dict[str, float | None] = {"No Finding": source[_NO_FINDING]}
    for name, obs in _TO_CHEXPERT.items():
        if name in source:
            labels[obs] = source[name]
    return ManifestRecord(
        id=f"{DATASET}/{image_id}", image=str(folder / f"{image_id}{ext}"), dataset=DATASET, split=split,
        labels=labels, extra={"source_labels": source, "frontal": True},
    )


def iter_vindr(root: str | Path, min_votes: int = 1, image_ext: str = ".dicom") -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image with its aggregated labels."""
    if min_votes < 1:
        raise ValueError(f"min_votes={min_votes} must be >= 1 (1 = any radiologist)")
    root = Path(root)
    physionet = [(split, root / "annotations" / f"image_labels_{stem}.csv") for stem, split in
                 (("train", "train"), ("test", "test"))]
    if any(p.is_file() for _, p in physionet):
        for split, path in physionet:
            if path.is_file():
                yield from _iter_physionet(path, split, root / ("train" if split == "train" else "test"),
                                           min_votes, image_ext)
        return
    kaggle = root / "train.csv"
    if not kaggle.is_file():
        raise DatasetLayoutError(f"{root}: neither annotations/image_labels_train.csv (PhysioNet) nor train.csv "
                                 "(Kaggle) of VinDr-CXR found; pass the release folder")
    votes: dict[str, dict[str, int]] = {}
    readers: dict[str, set[tuple[str, str]]] = {}
    for line, row in iter_csv(kaggle, ["image_id", "class_name", "rad_id"]):
        if isinstance(row, ImportProblem):
            yield row
            continue
        image_id, name = row["image_id"].strip(), row["class_name"].strip()
        if not image_id or (name not in KAGGLE_CLASSES and name != _NO_FINDING):
            yield ImportProblem(f"{kaggle}:{line}", f"{kaggle}:{line}: bad image_id {image_id!r} or class_name {name!r}")
            continue
        per_image = votes.setdefault(image_id, {})
        seen = readers.setdefault(image_id, set())
        if name != _NO_FINDING and (name, row["rad_id"]) not in seen:  # one vote per reader per class
            seen.add((name, row["rad_id"]))
            per_image[name] = per_image.get(name, 0) + 1
    for image_id, per_image in votes.items():
        yield _record(image_id, "train", root / "train", image_ext, per_image, list(KAGGLE_CLASSES), min_votes)


def _iter_physionet(path: Path, split: str, folder: Path, min_votes: int, ext: str) -> Iterator[ManifestRecord | ImportProblem]:
    """One record per image; a reader's repeated row counts once, an image with a bad cell gets no record."""
    votes: dict[str, dict[str, int]] = {}
    classes: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    bad: set[str] = set()
    for line, row in iter_csv(path, ["image_id"]):
        if isinstance(row, ImportProblem):
            yield row
            continue
        if not classes:
            classes = [c for c in row if c not in ("image_id", "rad_id", "rad_ID", _NO_FINDING)]
            if not classes:  # otherwise every image would be written as "No finding"
                raise DatasetLayoutError(f"{path}: no label columns besides image_id/rad_id; is this "
                                         "annotations/image_labels_*.csv of VinDr-CXR?")
        image_id = row["image_id"].strip()
        where = f"{path}:{line}"
        reader = (row.get("rad_id") or row.get("rad_ID") or "").strip()
        if (image_id, reader) in seen:
            yield ImportProblem(where, f"{where}: reader {reader!r} already read {image_id} on line "
                                       f"{seen[image_id, reader]}; the repeated row is not counted again", image_id)
            continue
        seen[image_id, reader] = line
        per_image = votes.setdefault(image_id, {})
        cells = {name: (row.get(name) or "").strip() for name in classes}
        odd = {name: cell for name, cell in cells.items() if cell not in ("", "0", "1", "0.0", "1.0")}
        if odd:
            bad.add(image_id)
            name, cell = next(iter(odd.items()))
            yield ImportProblem(where, f"{where}: column {name!r} has {cell!r}; expected 0 or 1 (the image is "
                                       "not written)", image_id)
            continue
        for name, cell in cells.items():
            if cell in ("1", "1.0"):
                per_image[name] = per_image.get(name, 0) + 1
    for image_id, per_image in votes.items():
        if image_id not in bad:
            yield _record(image_id, split, folder, ext, per_image, classes, min_votes)
