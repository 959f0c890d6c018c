"""Append-only caches of the evaluation stage (labels, RadGraph scores), so a killed run resumes.

Each row carries the identity of what made it (labeler name and version, RadGraph model and
package version) and a hash of its text; rows of another identity or text are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.evaluate.chexbert_f1 import OBSERVATIONS_14
from llavarad.evaluate.predictions import Pair
from llavarad.evaluate.radgraph import RadGraphScorer
from llavarad.io.manifest import JsonlWriter

logger = logging.getLogger(__name__)

_CHUNK = 256
Progress = Callable[[str, int, int], None]


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _cached_rows(path: Path, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of a cache file made with the same ``identity`` (labeler/model); other rows are ignored."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for raw in path.read_bytes().split(b"\n"):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn last line: JsonlWriter cuts it off when it reopens the file
        if isinstance(obj, dict) and obj.get("identity") == identity and "key" in obj:
            rows[obj["key"]] = obj
    return rows


def label_all(labeler: Any, pairs: list[Pair], cache: Path, progress: Progress | None,
               problems: list[dict[str, Any]]) -> tuple[list[Pair], list[dict], list[dict]]:
    """Label references and predictions (cached); pairs whose labeling fails move to ``problems``."""
    identity = {"name": str(getattr(labeler, "name", type(labeler).__name__)),
                "version": str(getattr(labeler, "version", "unknown"))}
    cached = _cached_rows(cache, identity)
    todo = [(f"{side}:{p.id}", text) for p in pairs for side, text in (("ref", p.reference), ("pred", p.prediction))
            if f"{side}:{p.id}" not in cached or cached[f"{side}:{p.id}"]["hash"] != _text_hash(text)]
    failed: dict[str, str] = {}
    total, done = 2 * len(pairs), 2 * len(pairs) - len(todo)
    with JsonlWriter(cache, key="key", fsync=False) as writer:
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start:start + _CHUNK]
            try:
                results: list[Any] = list(labeler.label([t for _, t in chunk]))
                if len(results) != len(chunk):
                    raise RuntimeError(f"labeler returned {len(results)} rows for {len(chunk)} reports")
            except Exception as exc:  # noqa: BLE001 - isolate the failing report(s), keep the rest
                logger.warning("labeling a chunk of %d reports failed (%s); retrying one by one", len(chunk), exc)
                results = []
                for key, text in chunk:
                    try:
                        results.append(labeler.label([text])[0])
                    except Exception as item_exc:  # noqa: BLE001 - recorded as a problem of that pair
                        results.append(None)
                        failed[key] = f"{type(item_exc).__name__}: {item_exc}"
            for (key, text), row in zip(chunk, results):
                if row is None:
                    continue
                if not isinstance(row, dict):
                    failed[key] = f"labeler returned {type(row).__name__}, expected {{observation: value}}"
                    continue
                rec = {"key": key, "identity": identity, "hash": _text_hash(text),
                       "labels": {o: row.get(o) for o in OBSERVATIONS_14}}
                writer.write(rec)
                cached[key] = rec
            done += len(chunk)
            if progress:
                progress("labels", done, total)
    kept, ref_rows, pred_rows = [], [], []
    for p in pairs:
        errs = [f"{side} report: {failed[f'{side}:{p.id}']}" for side in ("ref", "pred") if f"{side}:{p.id}" in failed]
        if errs:
            problems.append({"line": p.line, "id": p.id, "error": f"labeling failed ({'; '.join(errs)})"})
            continue
        kept.append(p)
        ref_rows.append(cached[f"ref:{p.id}"]["labels"])
        pred_rows.append(cached[f"pred:{p.id}"]["labels"])
    return kept, ref_rows, pred_rows


def radgraph_scores(scorer: RadGraphScorer, pairs: list[Pair], cache: Path,
                    progress: Progress | None) -> dict[str, np.ndarray]:
    """Every RadGraph score of each pair (:meth:`RadGraphScorer.score_all`), cached per pair."""
    identity = {"model_type": scorer.model_type, "version": scorer.version, "api": getattr(scorer, "api", None),
                "reward": "partial+rexrank"}
    cached = _cached_rows(cache, identity)
    todo = [p for p in pairs if p.id not in cached or cached[p.id]["hash"] != _text_hash(p.reference + "\0" + p.prediction)]
    done = len(pairs) - len(todo)
    with JsonlWriter(cache, key="key", fsync=False) as writer:
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            scores = scorer.score_all([p.reference for p in chunk], [p.prediction for p in chunk])
            for j, p in enumerate(chunk):
                rec = {"key": p.id, "identity": identity, "hash": _text_hash(p.reference + "\0" + p.prediction),
                       **{k: float(v[j]) for k, v in scores.items()}}
                writer.write(rec)
                cached[p.id] = rec
            done += len(chunk)
            if progress:
                progress("radgraph", done, len(pairs))
    return {k: np.array([cached[p.id][k] for p in pairs], dtype=np.float64)
            for k in ("partial", "entity", "relation", "combined")}
