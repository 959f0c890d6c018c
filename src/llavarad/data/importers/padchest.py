"""PadChest (Hospital San Juan, Alicante): images with Spanish reports.

Layout of the release::

    PadChest/
      PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz)
          ,ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,...,Projection,...,ReportID,Report,
          MethodLabel,Labels,...
      <ImageDir>/<ImageID>          (ImageDir 0..54, one folder per zip of the release)

The ``Report`` column holds the released (pre-processed, Spanish) report; it is kept in the
record's ``report_es`` field with ``text_source`` "original" and no findings: ``llavarad data
translate`` writes the English findings. PadChest has no official split: every image is train.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from llavarad.data.importers._common import ImportProblem, find_file, iter_csv, normalize_view
from llavarad.io.manifest import ManifestRecord

__all__ = ["CSV_NAME", "DATASET", "iter_padchest"]

DATASET = "padchest"
CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


def _labels(raw: str) -> list[str]:
    raw = (raw or "").strip()
    if not raw or raw.lower() == "nan":
        return []
    value = ast.literal_eval(raw)
    if not isinstance(value, list):
        raise ValueError(f"Labels {raw[:40]!r} is not a list")
    return [str(v).strip() for v in value if str(v).strip()]


def iter_padchest(root: str | Path, csv_path: str | Path | None = None) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image row of the PadChest label CSV."""
    root = Path(root)
    path = Path(csv_path) if csv_path else find_file(root, [CSV_NAME], "PadChest label CSV")
    for line, row in iter_csv(path, ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report"]):
        if isinstance(row, ImportProblem):
            yield row
            continue
        where = f"{path}:{line}"
        image_id = row["ImageID"].strip()
        if not image_id:
            yield ImportProblem(where, f"{where}: empty ImageID")
            continue
        try:
            labels = _labels(row.get("Labels", ""))
        except (ValueError, SyntaxError) as exc:
            yield ImportProblem(where, f"{where}: column 'Labels' is not a list literal ({exc})", image_id)
            labels = []
        image_dir = row["ImageDir"].strip()
        if image_dir.endswith(".0"):
            image_dir = image_dir[:-2]
        view = normalize_view(row["Projection"])
        report = " ".join(row["Report"].split())
        yield ManifestRecord(
            id=f"{DATASET}/{image_id}", image=str(root / image_dir / image_id), dataset=DATASET, split="train",
            patient_id=row["PatientID"].strip() or None, study_id=row["StudyID"].strip() or None, view=view,
            extra={"report_es": report or None, "padchest_labels": labels, "frontal": view in ("PA", "AP")},
        )
