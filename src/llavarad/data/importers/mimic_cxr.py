"""MIMIC-CXR-JPG 2.x (images, metadata, split, CheXpert labels) with MIMIC-CXR's report texts.

Layout::

    mimic-cxr-jpg/2.0.0/
      mimic-cxr-2.0.0-metadata.csv.gz   dicom_id,subject_id,study_id,...,ViewPosition,...
      mimic-cxr-2.0.0-split.csv.gz      dicom_id,study_id,subject_id,split (train/validate/test)
      mimic-cxr-2.0.0-chexpert.csv.gz   subject_id,study_id,Atelectasis,...,Support Devices
      files/p10/p10000032/s50414267/<dicom_id>.jpg
    mimic-cxr-reports/files/p10/p10000032/s50414267.txt   (from MIMIC-CXR, "mimic-cxr-reports.zip")

One record per DICOM. The report is split by the rule-based sectioner (``text_source``
"rule_based"); its path is kept in ``report_path`` for the LLM structuring step. Joins run through
on-disk indexes, so memory stays flat over the 377,110 images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llavarad.data._index import DiskIndex
from llavarad.data.importers._common import (
    DatasetLayoutError,
    ImportProblem,
    chexpert_labels,
    find_file,
    good_rows,
    iter_csv,
    normalize_view,
)
from llavarad.data.sections import SectionerConfig, Sections, split_sections
from llavarad.io.manifest import ManifestRecord

__all__ = ["DATASET", "iter_mimic_cxr", "report_path"]

DATASET = "mimic-cxr"


def report_path(reports_dir: Path, subject_id: str, study_id: str) -> Path:
    """``files/p10/p10000032/s50414267.txt`` under the reports folder."""
    return reports_dir / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


def _find_reports_dir(root: Path) -> Path | None:
    for cand in (root / "mimic-cxr-reports" / "files", root.parent / "mimic-cxr-reports" / "files",
                 root / "reports" / "files", root / "files"):
        if cand.is_dir() and next(cand.glob("p*/p*/s*.txt"), None) is not None:
            return cand
    return None


def _label_rows(path: Path, problems: list[ImportProblem]) -> Iterator[tuple[str, dict[str, float | None]]]:
    for line, row in iter_csv(path, ["subject_id", "study_id"]):
        if isinstance(row, ImportProblem):
            problems.append(row)
            continue
        where = f"{path}:{line}"
        try:
            yield f"{row['subject_id']}/{row['study_id']}", chexpert_labels(row, where)
        except ValueError as exc:
            problems.append(ImportProblem(where, str(exc), row.get("study_id")))


def iter_mimic_cxr(root: str | Path, reports_dir: str | Path | None = None,
                   sectioner: SectionerConfig | None = None) -> Iterator[ManifestRecord | ImportProblem]:
    """Yield one record per image of the metadata CSV, joined with split, labels and report sections."""
    root = Path(root)
    meta = find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "MIMIC-CXR-JPG metadata CSV")
    split_csv = find_file(root, ["mimic-cxr-2.0.0-split.csv"], "MIMIC-CXR-JPG split CSV")
    try:
        label_csv: Path | None = find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "MIMIC-CXR-JPG CheXpert CSV")
    except DatasetLayoutError:
        label_csv = None
    rdir = Path(reports_dir) if reports_dir else _find_reports_dir(root)
    if rdir is None:
        raise DatasetLayoutError(
            f"{root}: no report texts found (looked for mimic-cxr-reports/files/p*/p*/s*.txt); pass "
            "reports_dir= / --reports the 'files' folder of MIMIC-CXR's mimic-cxr-reports.zip")
    with DiskIndex() as splits, DiskIndex() as labels:
        label_problems: list[ImportProblem] = []
        splits.put_many((row["dicom_id"], row["split"]) for _l, row in
                        good_rows(iter_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"]), label_problems))
        if label_csv is not None:
            labels.put_many(_label_rows(label_csv, label_problems))
        yield from label_problems
        last_study: tuple[str, Sections | None, str | None] = ("", None, None)
        for line, row in iter_csv(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
            if isinstance(row, ImportProblem):
                yield row
                continue
            where = f"{meta}:{line}"
            dicom, subject, study = row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip()
            split = splits.get(dicom)
            if split is None:
                yield ImportProblem(where, f"{where}: dicom_id {dicom!r} is not in {split_csv.name}", dicom)
                continue
            if study != last_study[0]:
                rpath = report_path(rdir, subject, study)
                try:
                    text = rpath.read_text(encoding="utf-8", errors="replace")
                    last_study = (study, split_sections(text, sectioner), None)
                except OSError as exc:
                    last_study = (study, None, f"{rpath}: report not readable ({exc.strerror or exc})")
            sections, error = last_study[1], last_study[2]
            if error:
                yield ImportProblem(where, error, dicom)
            extra = {"report_path": str(report_path(rdir, subject, study)), "frontal": None}
            view = normalize_view(row["ViewPosition"])
            extra["frontal"] = view in ("PA", "AP") if view else None
            if sections is not None:
                extra["comparison"] = sections.comparison
                extra["technique"] = sections.technique
            yield ManifestRecord(
                id=f"{DATASET}/{dicom}",
                image=str(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"),
                dataset=DATASET, split=split, patient_id=subject, study_id=study, view=view,
                indication=sections.indication if sections else None,
                findings=sections.findings if sections else None,
                impression=sections.impression if sections else None,
                labels=(labels.get(f"{subject}/{study}") or {}) if label_csv else {},
                text_source="rule_based", extra=extra,
            )
