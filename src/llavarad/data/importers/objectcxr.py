"""object-CXR (JF Healthcare, MIDL 2020): foreign objects on frontal chest X-rays.

Layout of the release::

    object-CXR/
      train.csv   image_name,annotation   (annotation blank = no foreign object)
      dev.csv     image_name,annotation
      train/<image_name>.jpg              (or train.zip / dev.zip as distributed)
      dev/<image_name>.jpg

``train.csv`` gives split train, ``dev.csv`` validate and a ``test.csv`` (if present) test. Images
kept inside the zip archives get a ``zip://`` style path ``<zip>::<member>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import ImportProblem, iter_csv
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "iter_objectcxr"]

DATASET = "object-cxr"
_FILES = (("train", "train"), ("dev", "validate"), ("test", "test"))


def iter_objectcxr(root: str | Path) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image of train.csv / dev.csv / test.csv (whichever exist)."""
    root = Path(root)
    found = False
    for stem, split in _FILES:
        path = root / f"{stem}.csv"
        if not path.is_file():
            continue
        found = True
        folder = root / stem
        archive = root / f"{stem}.zip"
        for line, row in iter_csv(path, ["image_name", "annotation"]):
            if isinstance(row, ImportProblem):  # a short row must not read as "no foreign object"
                yield row
                continue
            name = row["image_name"].strip()
            if not name:
                yield ImportProblem(f"{path}:{line}", f"{path}:{line}: empty image_name")
                continue
            image = folder / name if folder.is_dir() or not archive.is_file() else Path(f"{archive}::{stem}/{name}")
            positive = bool((row.get("annotation") or "").strip())
            yield ManifestRecord(
                id=f"{DATASET}/{stem}/{name}", image=str(image), dataset=DATASET, split=split,
                view=None, labels={},
                extra={"source_labels": {"Foreign Object": float(positive)}, "frontal": True},
            )
    if not found:
        from llavarad.data.importers._common import DatasetLayoutError

        raise DatasetLayoutError(f"{root}: no train.csv / dev.csv of object-CXR; pass the release folder")
