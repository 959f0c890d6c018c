"""Phase 2 of the DICOM archive import (:mod:`.dicom_archive`): headers + reports -> manifest.

Works in the caller's SQLite workspace so that nothing grows with the archive in memory: the
classified images, the reports by join key and the problem rows live in tables; images are read
back sorted by study (so each study's report is sectioned once and the output order never depends
on how the headers were read) and streamed into the manifest writer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llavarad.data.importers._common import ImportProblem
from llavarad.data.importers._dicom_headers import classify
from llavarad.data.importers.report_sources import iter_reports
from llavarad.data.sections import SectionerConfig, split_sections
from llavarad.io.manifest import ManifestRecord, read_jsonl, write_manifest

if TYPE_CHECKING:
    from llavarad.data.importers._dicom_config import DicomImportConfig, ImportSummary

__all__ = ["EXCLUDING", "assemble", "patient_split", "problem_row"]

#: Reasons whose items never reach the manifest (the others are flags on kept records).
EXCLUDING: tuple[str, ...] = (
    "unreadable", "not_dicom", "not_image", "vanished", "missing_uid", "secondary_capture", "for_processing", "not_cr_dx", "non_chest",
    "body_part_unknown", "duplicate_sop", "duplicate_report", "report_unusable", "report_without_study")
_IMAGE_COLUMNS = ("path", "sop", "study", "patient", "accession", "series", "view", "frontal", "view_source",
                  "body_part", "laterality", "modality")
#: rows per executemany: a bounded buffer (a few hundred kB), not the archive
_INSERT_BATCH = 500
AddProblem = Callable[[dict[str, Any], int, str], None]


def problem_row(reason: str, where: str, message: str, rid: str | None = None, action: str | None = None) -> dict[str, Any]:
    """One line of ``M.problems.jsonl``: ``where``/``id``/``error`` as the other importers, plus ``reason``
    and ``action`` (excluded: not in the manifest; flagged: in it, worth a look)."""
    action = action or ("excluded" if reason in EXCLUDING else "flagged")
    return {"reason": reason, "action": action, "where": where, "id": rid, "error": message}


def patient_split(patient: str, fractions: tuple[float, float, float], salt: str) -> str:
    """train / validate / test for a patient from a salted BLAKE2 hash (stable across runs, machines and
    archive growth: adding studies never moves a patient)."""
    digest = hashlib.blake2b(f"{salt}\0{patient}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    return "validate" if u < fractions[0] + fractions[1] else "test"


def assemble(db: sqlite3.Connection, root: Path, reports: Path, paths: dict[str, Path], cfg: DicomImportConfig,
             summary: ImportSummary, progress: Callable[[str, int, int | None], None] | None) -> None:
    """Join the state file's headers with ``reports``; write the manifest and the problems file."""
    db.execute("CREATE TABLE problems (ord INTEGER, sortkey TEXT, row TEXT)")
    counts: Counter = Counter()

    def add(row: dict[str, Any], order: int, sortkey: str) -> None:
        counts[row["reason"]] += 1
        summary.excluded += row["action"] == "excluded"
        db.execute("INSERT INTO problems VALUES (?, ?, ?)", (order, sortkey, json.dumps(row, ensure_ascii=False)))

    summary.reports = _reports_into(db, reports, cfg, add)
    _images_into(db, paths["state"], cfg, add, summary)
    _drop_duplicates(db, cfg, add)
    total = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    write_manifest(_records(db, root, paths["manifest"], cfg, summary, add, total, progress), paths["manifest"])
    for key, src in db.execute("SELECT key, src FROM reports WHERE used = 0 ORDER BY rowid").fetchall():
        add(problem_row("report_without_study", src, f"{src}: no imported study has {cfg.join} {key!r}", key), 3, "")
    summary.patients = db.execute("SELECT COUNT(DISTINCT COALESCE(patient, 's:' || study)) FROM images").fetchone()[0]
    rows = (json.loads(r) for (r,) in db.execute("SELECT row FROM problems ORDER BY ord, sortkey, rowid"))
    write_manifest(rows, paths["problems"])
    summary.problems = dict(sorted(counts.items()))


def _reports_into(db: sqlite3.Connection, reports: Path, cfg: DicomImportConfig, add: AddProblem) -> int:
    """Index reports by join key; a higher-ranked duplicate (an amendment over a draft) replaces the first."""
    db.execute("CREATE TABLE reports (key TEXT PRIMARY KEY, text TEXT, indication TEXT, src TEXT, rid TEXT, "
               "rank INTEGER, used INTEGER DEFAULT 0)")
    n = 0
    for item in iter_reports(reports, cfg.join, cfg.reports_format, cfg.columns, cfg.fhir_version):
        if isinstance(item, ImportProblem):
            add(problem_row("report_unusable", item.where, item.message, item.id), 3, "")
            continue
        n += 1
        old = db.execute("SELECT src, rank FROM reports WHERE key = ?", (item.key,)).fetchone()
        if old is not None:
            replace = item.rank > old[1]
            loser, winner = (old[0], item.where) if replace else (item.where, old[0])
            add(problem_row("duplicate_report", loser, f"{loser}: another report for {cfg.join} {item.key!r} "
                            f"({winner}) is used instead", item.key), 3, "")
            if not replace:
                continue
        db.execute("INSERT OR REPLACE INTO reports (key, text, indication, src, rid, rank) VALUES (?, ?, ?, ?, ?, ?)",
                   (item.key, item.text, item.indication, item.where, item.report_id, item.rank))
    return n


def _images_into(db: sqlite3.Connection, state: Path, cfg: DicomImportConfig, add: AddProblem,
                 summary: ImportSummary) -> None:
    db.execute(f"CREATE TABLE images ({', '.join(_IMAGE_COLUMNS)}, PRIMARY KEY (path))")
    batch: list[tuple[Any, ...]] = []
    insert = f"INSERT OR REPLACE INTO images VALUES ({', '.join('?' * len(_IMAGE_COLUMNS))})"
    for _line, h in read_jsonl(state):
        if "meta" in h:
            continue
        path = h["path"]
        gone = db.execute("SELECT seen FROM done WHERE path = ?", (path,)).fetchone()
        if gone is not None and not gone[0]:  # read by an earlier run, no longer in the tree
            add(problem_row("vanished", path, f"{path}: read by an earlier run but no longer in the tree; left out"),
                0, path)
            continue
        summary.files += 1
        if h.get("status") != "ok":
            add(problem_row(h.get("status", "unreadable"), path, f"{path}: {h.get('error')}"), 0, path)
            continue
        c = classify(h, modalities=cfg.modalities, keep_secondary_capture=cfg.keep_secondary_capture,
                     unknown_body_part=cfg.unknown_body_part)
        rid = f"{cfg.dataset}/{h['SOPInstanceUID']}" if h.get("SOPInstanceUID") else None
        if c.reason is not None:
            add(problem_row(c.reason, path, f"{path}: {c.message}", rid), 0, path)
            continue
        for reason, message in c.flags:
            add(problem_row(reason, path, f"{path}: {message}", rid, action="flagged"), 0, path)
        batch.append((path, h["SOPInstanceUID"], h["StudyInstanceUID"], h.get("PatientID"), h.get("AccessionNumber"),
                      h.get("SeriesInstanceUID"), c.view, c.frontal, c.view_source, c.body_part,
                      h.get("ImageLaterality") or h.get("Laterality"), h.get("Modality")))
        if len(batch) >= _INSERT_BATCH:
            db.executemany(insert, batch)
            batch.clear()
    db.executemany(insert, batch)
    db.execute("CREATE INDEX images_sop ON images (sop)")
    db.execute("CREATE INDEX images_study ON images (study, path)")


def _drop_duplicates(db: sqlite3.Connection, cfg: DicomImportConfig, add: AddProblem) -> None:
    """Keep the first path (in sorted order) of each SOP Instance UID; list the others."""
    dups = db.execute("SELECT i.sop, i.path FROM images i JOIN (SELECT sop FROM images GROUP BY sop "
                      "HAVING COUNT(*) > 1) d ON i.sop = d.sop ORDER BY i.sop, i.path").fetchall()
    for sop, group in itertools.groupby(dups, key=lambda r: r[0]):
        first, *rest = [path for _sop, path in group]
        for path in rest:
            add(problem_row("duplicate_sop", path, f"{path}: SOP Instance UID {sop} was already imported from {first}",
                            f"{cfg.dataset}/{sop}"), 1, path)
            db.execute("DELETE FROM images WHERE path = ?", (path,))


def _image_path(root: str, rel: str, manifest_dir: str) -> str:
    """Relative to the manifest's folder when the image lies under it, absolute otherwise (string
    operations: pathlib would intern every UID-named path part of a million-file archive)."""
    full = os.path.join(root, rel)
    if full.startswith(manifest_dir + os.sep):
        return full[len(manifest_dir) + 1:].replace(os.sep, "/")
    return full


def _study_report(db: sqlite3.Connection, study: str, rows: list[tuple], cfg: DicomImportConfig,
                  add: AddProblem) -> tuple[Any, str | None, str | None]:
    """The sectioned report of one study (or None), its indication column and its source (file:line)."""
    accessions = sorted({r[4] for r in rows if r[4]})
    if len(accessions) > 1:
        add(problem_row("accession_mismatch", study, f"study {study}: its images carry accession numbers "
                        f"{', '.join(accessions)}; {accessions[0]} is used", study), 2, study)
    key = study if cfg.join == "study-uid" else (accessions[0] if accessions else None)
    found = db.execute("SELECT text, indication, src FROM reports WHERE key = ?", (key,)).fetchone() if key else None
    if found is None:
        why = "no AccessionNumber in its images" if key is None else f"no report with {cfg.join} {key!r}"
        add(problem_row("study_without_report", study, f"study {study}: {why}; its {len(rows)} image(s) are kept "
                        "without text", study), 2, study)
        return None, None, None
    db.execute("UPDATE reports SET used = 1 WHERE key = ?", (key,))
    sections = split_sections(found[0], SectionerConfig(headerless_to=cfg.headerless_to))
    if not sections.findings:
        add(problem_row("report_without_findings", found[2], f"{found[2]}: the report of study {study} has no "
                        "findings section (see --headerless-to)", study), 2, study)
    return sections, found[1], found[2]


def _records(db: sqlite3.Connection, root: Path, manifest: Path, cfg: DicomImportConfig, summary: ImportSummary,
             add: AddProblem, total: int, progress: Any) -> Iterator[ManifestRecord]:
    manifest_dir, root_dir = str(manifest.resolve().parent), str(root)
    cursor = db.cursor().execute(f"SELECT {', '.join(_IMAGE_COLUMNS)} FROM images ORDER BY study, path")
    splits: Counter = Counter()
    done = 0
    for study, group in itertools.groupby(cursor, key=lambda r: r[2]):
        rows = list(group)
        summary.studies += 1
        sections, indication_col, src = _study_report(db, study, rows, cfg, add)
        summary.studies_with_report += sections is not None
        patient = next((r[3] for r in rows if r[3]), None)
        split = patient_split(patient or study, cfg.split, cfg.split_salt)
        for path, sop, _study, _p, accession, series, view, frontal, view_source, body_part, laterality, modality in rows:
            findings = sections.findings if sections else None
            summary.frontal += frontal == 1
            summary.lateral += frontal == 0
            summary.view_unknown += frontal is None
            summary.with_findings += bool(findings)
            splits[split] += 1
            extra = {"frontal": None if frontal is None else bool(frontal), "accession_number": accession,
                     "series_instance_uid": series, "sop_instance_uid": sop, "modality": modality,
                     "body_part": body_part, "laterality": laterality, "view_source": view_source,
                     "report_source": src, "comparison": sections.comparison if sections else None,
                     "technique": sections.technique if sections else None}
            yield ManifestRecord(
                id=f"{cfg.dataset}/{sop}", image=_image_path(root_dir, path, manifest_dir), dataset=cfg.dataset,
                split=split, patient_id=patient, study_id=study, view=view,
                indication=(sections.indication if sections else None) or indication_col,
                findings=findings, impression=sections.impression if sections else None,
                text_source="rule_based" if sections else "original", extra=extra)
            summary.images += 1
            done += 1
        if progress:
            progress("assemble", done, total)
    summary.splits = {s: splits.get(s, 0) for s in ("train", "validate", "test")}
