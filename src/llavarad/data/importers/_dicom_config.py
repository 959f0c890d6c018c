"""The settings and the counts of one DICOM archive import (:mod:`.dicom_archive`).

They live below both phases (:mod:`.dicom_archive` reads headers, :mod:`._dicom_assemble` builds the
manifest), so each phase imports them from here and the imports flow one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llavarad.data.importers.report_sources import JOIN_KEYS, JoinKey, ReportColumns, ReportFormat

__all__ = ["DicomImportConfig", "ImportSummary"]


@dataclass
class DicomImportConfig:
    """Settings of one import (recorded in ``M.summary.json``).

    join: how reports find their study: ``accession`` (AccessionNumber) or ``study-uid``.
    reports_format / columns / fhir_version: how to read the report file (:mod:`.report_sources`).
    dataset: the manifest's ``dataset`` value and id prefix.
    split: train / validate / test fractions by patient; split_salt: the hash's salt.
    workers: header-reading processes (1 reads in this process); batch: files per task.
    keep_secondary_capture / unknown_body_part / modalities: what counts as a chest radiograph.
    headerless_to: where a report without section headers goes (see :class:`SectionerConfig`).
    restart: ignore the state of an earlier run and read every header again.
    """

    join: JoinKey = "accession"
    reports_format: ReportFormat = "auto"
    columns: ReportColumns = field(default_factory=ReportColumns)
    fhir_version: Literal["R4", "R4B", "R5"] = "R4"
    dataset: str = "local"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_salt: str = "llavarad"
    workers: int = 2
    batch: int = 64
    keep_secondary_capture: bool = False
    unknown_body_part: Literal["exclude", "keep"] = "exclude"
    modalities: tuple[str, ...] = ("CR", "DX")
    headerless_to: Literal["none", "findings", "impression"] = "none"
    restart: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.join not in JOIN_KEYS:
            problems.append(f"join={self.join!r}: use one of {', '.join(JOIN_KEYS)}")
        if len(self.split) != 3 or any(x < 0 for x in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            problems.append(f"split={self.split!r}: three fractions (train, validate, test) >= 0 that sum to 1")
        if self.workers < 1 or self.batch < 1:
            problems.append(f"workers={self.workers}, batch={self.batch}: both must be >= 1")
        if not self.dataset.strip() or "/" in self.dataset:
            problems.append(f"dataset={self.dataset!r}: a non-empty name without '/' (e.g. 'local')")
        if self.unknown_body_part not in ("exclude", "keep"):
            problems.append(f"unknown_body_part={self.unknown_body_part!r}: use exclude or keep")
        if self.fhir_version not in ("R4", "R4B", "R5"):
            problems.append(f"fhir_version={self.fhir_version!r}: use R4, R4B or R5")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class ImportSummary:
    """Counts of one import; ``problems`` maps reason -> count (see ``M.problems.jsonl``); ``excluded``
    counts the problem rows whose item is not in the manifest."""

    files: int = 0
    headers_read_now: int = 0
    images: int = 0
    frontal: int = 0
    lateral: int = 0
    view_unknown: int = 0
    studies: int = 0
    studies_with_report: int = 0
    patients: int = 0
    reports: int = 0
    with_findings: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    paths: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
