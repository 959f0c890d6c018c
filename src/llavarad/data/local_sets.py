"""Stage 2/3 and evaluation sets from a hospital's own imported manifest (``data build local``).

The manifest of :mod:`llavarad.data.importers.dicom_archive` keeps every chest image, frontal or
lateral, with or without a report. Training and evaluation want what the paper used: frontal
(PA/AP) images whose report has a findings section. :func:`build_local_sets` streams the manifest
once and writes ``<prefix>_train.jsonl``, ``<prefix>_validate.jsonl`` and ``<prefix>_test.jsonl``
(the import's patient split), counting every record left out under its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from llavarad.data.builders import CountTable
from llavarad.io.manifest import SPLITS, iter_manifest

__all__ = ["build_local_sets"]


def _h(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=8).digest()


def build_local_sets(manifest: str | Path, out_dir: str | Path, *, prefix: str = "local",
                     views: tuple[str, ...] = ("PA", "AP")) -> CountTable:
    """Write the frontal-with-findings records of ``manifest`` into one file per split; return the counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not prefix or "/" in prefix:
        raise ValueError(f"prefix={prefix!r}: a file-name prefix without '/' such as 'local'")
    kept: Counter = Counter()
    excluded: Counter = Counter()
    # 8-byte hashes, not ids: a million patients cost ~100 MB as strings, a fraction as digests
    patients: dict[str, set[bytes]] = {s: set() for s in SPLITS}
    studies: dict[str, set[bytes]] = {s: set() for s in SPLITS}
    tmp = {s: out / f".{prefix}_{s}.jsonl.partial" for s in SPLITS}
    handles = {s: tmp[s].open("w", encoding="utf-8") for s in SPLITS}
    try:
        for rec in iter_manifest(manifest):
            if rec.view not in views:
                excluded["lateral" if rec.view == "LATERAL" else f"view {rec.view or 'unknown'}"] += 1
                continue
            if not (rec.findings or "").strip():
                excluded[f"{rec.split}: no findings"] += 1
                continue
            if not Path(rec.image).is_absolute():  # keep image paths valid next to the new files
                rec.image = str((Path(manifest).resolve().parent / rec.image).resolve())
            handles[rec.split].write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            kept[rec.split] += 1
            patients[rec.split].add(_h(rec.patient_id or rec.study_id or rec.id))
            studies[rec.split].add(_h(rec.study_id or rec.id))
    finally:
        for fh in handles.values():
            fh.close()
    for s in SPLITS:
        tmp[s].replace(out / f"{prefix}_{s}.jsonl")
    rows = [["Patients", *(f"{len(patients[s]):,}" for s in SPLITS)],
            ["Studies", *(f"{len(studies[s]):,}" for s in SPLITS)],
            ["Images (frontal, with findings)", *(f"{kept[s]:,}" for s in SPLITS)]]
    notes = [f"left out {n:,} image(s): {reason}" for reason, n in sorted(excluded.items())]
    return CountTable(f"Sets of {manifest}", ["", "train", "validate", "test"], rows, notes,
                      {"kept": {s: kept[s] for s in SPLITS}, "excluded": dict(excluded),
                       "files": {s: str(out / f"{prefix}_{s}.jsonl") for s in SPLITS}})
