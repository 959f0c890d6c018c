"""BraX (Hospital Israelita Albert Einstein): ``master_spreadsheet_update.csv`` of release 1.1.0.

Layout::

    brax/1.1.0/
      master_spreadsheet_update.csv   DicomPath,PngPath,PatientID,AccessionNumber,ViewPosition,
                                      No Finding,...,Support Devices,PatientSex,PatientAge,...
      images/id_.../Study_.../Series_.../image-....png

BraX has no official split: every image is ``train``. Labels are the CheXpert labeler's (1 / 0 /
-1 / blank); images without a ViewPosition get ``view`` None.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import (
    ImportProblem,
    chexpert_labels,
    find_file,
    iter_csv,
    normalize_view,
    record_or_problem,
)
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "iter_brax"]

DATASET = "brax"


def iter_brax(root: str | Path) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image listed in the master spreadsheet."""
    root = Path(root)
    path = find_file(root, ["master_spreadsheet_update.csv", "master_spreadsheet.csv"], "BraX master spreadsheet")
    for line, row in iter_csv(path, ["PngPath", "PatientID", "ViewPosition", "No Finding"]):
        if isinstance(row, ImportProblem):
            yield row
            continue
        where = f"{path}:{line}"
        rel = (row.get("PngPath") or "").strip()

        def make(row: dict[str, str] = row, rel: str = rel, where: str = where) -> ManifestRecord:
            if not rel:
                raise ValueError("empty PngPath")
            view = normalize_view(row.get("ViewPosition"))
            return ManifestRecord(
                id=f"{DATASET}/{rel}",
                image=str(root / rel),
                dataset=DATASET,
                split="train",
                patient_id=(row.get("PatientID") or "").strip() or None,
                study_id=(row.get("AccessionNumber") or "").strip() or None,
                view=view,
                labels=chexpert_labels(row, where),
                extra={"frontal": view in ("PA", "AP") if view else None},
            )

        yield record_or_problem(make, where, rel or None)
