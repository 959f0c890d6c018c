"""A hospital's own data: a folder tree of DICOM files (a PACS export) plus its reports -> manifest.

:func:`import_dicom_archive` runs in two phases.

1. **Headers** (the slow part, parallel and resumable). The tree is walked lazily and each file's
   header is read without pixel data by a pool of worker processes, in bounded batches. Every
   result is appended to the state file ``M.headers.jsonl`` with the crash-safe
   :class:`~llavarad.io.manifest.JsonlWriter`; a rerun after a kill loads the finished paths into
   an on-disk index and reads only the rest. Memory stays flat for any number of files.
2. **Assembly** (fast, redone on every run, written atomically). In a temporary SQLite workspace:
   reports are indexed by the join key (accession number or Study Instance UID), kept images are
   sorted by study, duplicates of a SOP Instance UID dropped (the first path wins), each study's
   report sectioned once (:func:`llavarad.data.sections.split_sections`) and every image written
   as a manifest record (DESIGN.md contract). The split is by patient, from a salted hash, so it
   never changes when more studies arrive. Because the output is sorted, a resumed import gives
   byte-identical files to an uninterrupted one.

Nothing is dropped silently: ``M.problems.jsonl`` lists every excluded file and every flagged
image, study or report with a ``reason`` code and an ``action`` (excluded / flagged), and
``M.summary.json`` counts them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from llavarad.data.importers._common import DatasetLayoutError
from llavarad.data.importers._dicom_assemble import EXCLUDING, assemble, patient_split
from llavarad.data.importers._dicom_config import DicomImportConfig, ImportSummary
from llavarad.data.importers._dicom_headers import iter_files, read_headers
from llavarad.data.importers.report_sources import iter_reports
from llavarad.io.manifest import JsonlWriter, read_jsonl
from llavarad.io.outputs import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["EXCLUDING", "DicomImportConfig", "ImportSummary", "import_dicom_archive", "output_paths",
           "patient_split"]

_STATE_FORMAT = 1
Progress = Callable[[str, int, int | None], None]


def output_paths(out: Path) -> dict[str, Path]:
    """The files written next to the manifest ``out``: problems, summary and the headers state."""
    stem = out.name.removesuffix(".jsonl")
    return {"manifest": out, "problems": out.with_name(stem + ".problems.jsonl"),
            "summary": out.with_name(stem + ".summary.json"), "state": out.with_name(stem + ".headers.jsonl"),
            "workspace": out.with_name(f".{stem}.import.sqlite")}


def import_dicom_archive(root: str | Path, reports: str | Path, out: str | Path,
                         config: DicomImportConfig | None = None, progress: Progress | None = None) -> ImportSummary:
    """Import the DICOM tree ``root`` with the report file ``reports`` into the manifest ``out``.

    Writes ``out`` (records), ``M.problems.jsonl``, ``M.summary.json`` and keeps the state file
    ``M.headers.jsonl`` (delete it, or pass ``restart``, to read every header again).

    Raises:
        DatasetLayoutError: ``root`` or ``reports`` is missing, the report file lacks the named
            columns, or the state file belongs to another root.
    """
    cfg = config or DicomImportConfig()
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such folder; pass the top folder of the DICOM export")
    if root in out.resolve().parents:
        raise DatasetLayoutError(f"{out} lies inside the DICOM tree {root}: the walk would read the import's own "
                                 "files; write the manifest outside the tree")
    if out.resolve() == Path(reports).resolve():
        raise DatasetLayoutError(f"--out {out} is the report file; choose another manifest path")
    # a missing report file or column fails now, not after the header phase: the first row resolves them
    next(iter(iter_reports(reports, cfg.join, cfg.reports_format, cfg.columns, cfg.fhir_version)), None)
    paths = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary(paths={k: str(v) for k, v in paths.items()})
    # the workspace lives beside the output (it can reach the archive's header size, too big for a
    # small /tmp); a killed run's leftover is replaced
    db_name = paths["workspace"]
    db_name.unlink(missing_ok=True)
    db = sqlite3.connect(db_name)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        t0 = time.perf_counter()
        summary.headers_read_now = _scan_headers(db, root, paths["state"], cfg, progress)
        t1 = time.perf_counter()
        assemble(db, root, Path(reports), paths, cfg, summary, progress)
        summary.seconds = {"headers": round(t1 - t0, 3), "assemble": round(time.perf_counter() - t1, 3)}
    finally:
        db.close()
        db_name.unlink(missing_ok=True)
    with atomic_write(paths["summary"]) as fh:
        fh.write(json.dumps({**summary.to_dict(), "root": str(root), "reports": str(reports),
                             "config": asdict(cfg)}, indent=2, ensure_ascii=False) + "\n")
    return summary


def _load_state(db: sqlite3.Connection, state: Path, root: Path) -> bool:
    """Index the paths of an earlier run's state file (already repaired by its writer); return
    whether the file still needs its meta line."""
    db.execute("CREATE TABLE done (path TEXT PRIMARY KEY, seen INTEGER DEFAULT 0)")
    if not state.exists() or state.stat().st_size == 0:
        return True
    batch: list[tuple[str]] = []
    for line, obj in read_jsonl(state):
        if "meta" in obj:
            meta = obj["meta"]
            if meta.get("root") != str(root) or meta.get("format") != _STATE_FORMAT:
                raise DatasetLayoutError(f"{state}: this state file belongs to an import of {meta.get('root')!r}, not "
                                         f"{str(root)!r}; pass --restart (or another --out) to start over")
            continue
        batch.append((obj["path"],))
        if len(batch) >= 1000:  # a bounded buffer, not the archive
            db.executemany("INSERT OR IGNORE INTO done (path) VALUES (?)", batch)
            batch.clear()
    db.executemany("INSERT OR IGNORE INTO done (path) VALUES (?)", batch)
    db.commit()
    return False


def _new_files(db: sqlite3.Connection, root: Path, counter: Counter) -> Iterator[str]:
    for rel in iter_files(root):
        counter["files"] += 1
        # marks a file of an earlier run as still there; a file deleted since stays unseen (see assembly)
        if db.execute("UPDATE done SET seen = 1 WHERE path = ?", (rel,)).rowcount == 0:
            yield rel


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _start_method() -> str:
    """``fork`` on Linux while this process runs no other Python thread: workers start in
    milliseconds with pydicom already imported; otherwise ``forkserver`` / ``spawn``, which start a
    fresh interpreter (about a second: what ``fork`` saves on a few thousand files)."""
    import multiprocessing
    import threading

    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and threading.active_count() == 1 and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _pooled(root: str, batches: Iterator[list[str]], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Results of :func:`read_headers` per batch, in order, with at most ``4 * workers`` batches in flight."""
    if workers == 1:
        for batch in batches:
            yield read_headers(root, batch)
        return
    import pydicom  # noqa: F401 - imported once here, so forked workers inherit it
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(_start_method())) as pool:
        pending: deque[Future] = deque()
        for batch in batches:
            pending.append(pool.submit(read_headers, root, batch))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _scan_headers(db: sqlite3.Connection, root: Path, state: Path, cfg: DicomImportConfig,
                  progress: Progress | None) -> int:
    """Phase 1: read the header of every file not yet in ``state``; return how many were read now."""
    if cfg.restart:
        state.unlink(missing_ok=True)
    counter: Counter = Counter()
    n_new = 0
    # the writer cuts a torn last line first, so a row is "done" only if it is whole in the file
    with JsonlWriter(state, key=None, resume=True, fsync=False) as writer:
        if _load_state(db, state, root):
            writer.write({"meta": {"root": str(root), "format": _STATE_FORMAT}})
        for results in _pooled(str(root), _batches(_new_files(db, root, counter), cfg.batch), cfg.workers):
            for row in results:
                writer.write(row)
            n_new += len(results)
            if progress:
                progress("headers", n_new, None)
    logger.info("%s: %d files, %d headers read now, %d from the state file", root, counter["files"], n_new,
                counter["files"] - n_new)
    return n_new
