"""A PACS-like DICOM export made from real DICOM files, for tests and benchmarks of the archive import.

:func:`make_archive` copies real radiographs (e.g. those in ``../shared/data/images``) into a
``patient/study/series/instance.dcm`` tree, giving every copy new UIDs, patient ids and accession
numbers and varying the tags the import looks at, and plants what a real export contains: lateral
views, images whose view is only in the series description or nowhere, CR and DX, a missing body
part named only in the description, an abdomen study, a CT, secondary captures, a duplicated SOP
Instance UID, a truncated file and a file that is not DICOM. :class:`ArchivePlan` says exactly
what was planted, so a test can check every count of the import.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ArchivePlan", "PlannedStudy", "make_archive"]

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class PlannedStudy:
    """One generated chest study: its ids and what its images are."""

    patient_id: str
    accession: str
    study_uid: str
    views: list[str]  # canonical view per kept image: PA, AP, LATERAL or "" (unknown)


@dataclass
class ArchivePlan:
    """What :func:`make_archive` wrote: the chest studies and the count of each planted oddity."""

    root: Path
    studies: list[PlannedStudy] = field(default_factory=list)
    planted: Counter = field(default_factory=Counter)
    files: int = 0

    @property
    def kept_images(self) -> int:
        return sum(len(s.views) for s in self.studies)


def _uid(rng: random.Random) -> str:
    # 2.25 + a 128-bit integer: the UUID-derived UID form of PS3.5 B.2, reproducible from the seed
    return f"2.25.{rng.getrandbits(127)}"


def make_archive(sources: list[Path], out: Path, n_patients: int = 10, *, studies_per_patient: int = 2,
                 seed: int = 0, oddities: bool = True) -> ArchivePlan:
    """Write a DICOM tree under ``out`` from the DICOM files ``sources``; return what it holds.

    Each study has a frontal image and, in two of three studies, a lateral one. With ``oddities``
    every few studies vary (view only in SeriesDescription, no view at all, no BodyPartExamined,
    DX instead of CR) and the extra files listed in :class:`ArchivePlan.planted` are added.
    """
    import pydicom

    rng = random.Random(seed)
    templates = [pydicom.dcmread(p, force=True) for p in sources]
    out.mkdir(parents=True, exist_ok=True)
    plan = ArchivePlan(root=out)
    k = 0
    for p in range(n_patients):
        patient = f"PAT{seed:02d}{p:05d}"
        for s in range(studies_per_patient):
            k += 1
            study = PlannedStudy(patient, f"ACC{seed:02d}{k:06d}", _uid(rng), [])
            kinds = ["frontal"] + (["lateral"] if k % 3 else [])
            for i, kind in enumerate(kinds):
                ds = templates[(k + i) % len(templates)]
                view = _vary(ds, rng, study, kind, k if oddities else 0, i)
                study.views.append(view)
                _save(ds, out / patient / f"study{k:06d}" / f"series{i + 1}" / "1.dcm")
                plan.files += 1
            plan.studies.append(study)
    if oddities:
        _plant(templates[0], out, rng, plan)
    return plan


def _vary(ds, rng: random.Random, study: PlannedStudy, kind: str, k: int, i: int) -> str:
    """Set the ids and view tags of one image; return the view the import should find ('' if none)."""
    for name, value in (("PatientID", study.patient_id), ("AccessionNumber", study.accession),
                        ("StudyInstanceUID", study.study_uid), ("SeriesInstanceUID", _uid(rng)),
                        ("SOPInstanceUID", _uid(rng))):
        setattr(ds, name, value)
    if "file_meta" in ds.__dict__ and getattr(ds, "file_meta", None) is not None and len(ds.file_meta):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dx = k % 4 == 1
    ds.Modality = "DX" if dx else "CR"
    ds.SOPClassUID = DX_STORAGE if dx else CR_STORAGE
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPClassUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "CHEST"
    if kind == "lateral":
        ds.ViewPosition, ds.SeriesDescription = "LL", "CHEST LAT"
        return "LATERAL"
    view = "AP" if k % 5 == 2 else "PA"
    ds.ViewPosition = view
    if k % 7 == 3:  # the view only in the series description: guessed and flagged
        ds.ViewPosition, ds.SeriesDescription = "", f"THORAX {view}"
        del ds.BodyPartExamined  # and the body part only there too
    elif k % 11 == 5:  # no view anywhere: flagged, view left empty
        ds.ViewPosition, ds.SeriesDescription = "", "CHEST"
        return ""
    return view


def _save(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def _plant(template, out: Path, rng: random.Random, plan: ArchivePlan) -> None:
    """The files a real export also holds and that the import must leave out (each counted in the plan)."""
    first = plan.studies[0]
    odd = out / "zz_odd"
    for reason, edit in (
        ("non_chest", lambda ds: setattr(ds, "BodyPartExamined", "ABDOMEN")),
        ("not_cr_dx", lambda ds: setattr(ds, "Modality", "CT")),
        ("secondary_capture", lambda ds: setattr(ds, "SOPClassUID", SC_STORAGE)),
    ):
        ds = template
        _vary(ds, rng, PlannedStudy(f"ODD-{reason}", f"ODD{len(plan.planted)}", _uid(rng), []), "frontal", 0, 0)
        edit(ds)
        _save(ds, odd / reason / "1.dcm")
        plan.files += 1
        plan.planted[reason] += 1
    # the first study's frontal image exported twice, under another path (same SOP Instance UID)
    src = out / first.patient_id / "study000001" / "series1" / "1.dcm"
    shutil.copyfile(src, odd / "duplicate.dcm")
    plan.files += 1
    plan.planted["duplicate_sop"] += 1
    (odd / "truncated.dcm").write_bytes(src.read_bytes()[:200])
    plan.files += 1
    plan.planted["unreadable"] += 1
    (odd / "README.txt").write_text("exported by the PACS\n", encoding="utf-8")
    plan.files += 1
    plan.planted["not_dicom"] += 1
