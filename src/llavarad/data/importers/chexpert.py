"""CheXpert (Stanford): ``train.csv`` / ``valid.csv`` of the official release (full or -small).

Layout::

    CheXpert-v1.0-small/
      train.csv   Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...,Support Devices
      valid.csv
      train/patient00001/study1/view1_frontal.jpg

``Path`` starts with the release folder's name; images resolve against the folder given. Labels are
1 / 0 / -1 / blank as released; records carry no text (the builder writes label templates).
"""

from __future__ import annotations

import re
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
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS, ManifestRecord

__all__ = ["DATASET", "iter_chexpert"]

DATASET = "chexpert"
_PATIENT = re.compile(r"(patient\d+)/(study\d+)")


def _image_path(root: Path, rel: str) -> Path:
    first, _, rest = rel.partition("/")
    if rest and (first == root.name or first.lower().startswith("chexpert")):
        return root / rest
    return root / rel


def iter_chexpert(root: str | Path) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image of ``train.csv`` (split train) and ``valid.csv`` (validate)."""
    root = Path(root)
    files = [("train", find_file(root, ["train.csv"], "CheXpert train.csv"))]
    try:
        files.append(("validate", find_file(root, ["valid.csv"], "CheXpert valid.csv")))
    except ValueError:
        pass  # the validation file is optional for pre-training
    for split, path in files:
        # every observation column is required: a missing one would read as "not mentioned" for every image
        for line, row in iter_csv(path, ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]):
            if isinstance(row, ImportProblem):
                yield row
                continue
            where = f"{path}:{line}"
            rel = row["Path"].strip()

            def make(row: dict[str, str] = row, rel: str = rel, where: str = where, split: str = split) -> ManifestRecord:
                if not rel:
                    raise ValueError("empty Path")
                m = _PATIENT.search(rel)
                frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
                return ManifestRecord(
                    id=f"{DATASET}/{rel.partition('/')[2] or rel}",
                    image=str(_image_path(root, rel)),
                    dataset=DATASET,
                    split=split,
                    patient_id=m.group(1) if m else None,
                    study_id=f"{m.group(1)}/{m.group(2)}" if m else None,
                    view=normalize_view(row["AP/PA"]) if frontal else "LATERAL",
                    labels=chexpert_labels(row, where),
                    extra={"frontal": frontal},
                )

            yield record_or_problem(make, where, rel or None)
