"""Cross-modal retrieval (the paper's Fig. 2E): reports <-> radiographs with stage-1 encoders.

Images are embedded with a CLIP folder's image tower and reports (findings, else impression) with
its text tower; every image ranks every report (image->text) and every report ranks every image
(text->image). Reported per encoder and direction: Recall@1/5/10, mean and median rank of the true
match, each with a paired bootstrap interval over the queries, next to the recall a random ranking
would get. Several encoders go side by side in one table (JSON, CSV, Markdown).

Ranks: the rank of a query's match is 1 + the number of *other* candidates scoring at least as high
(ties count against the encoder, so a constant encoder gets no credit). With ``positives =
"same_text"`` (default) every candidate whose report text is identical to the query's own
(after case/whitespace normalisation) counts as a match: templated or normal reports repeat
verbatim, and ranking one copy above another says nothing about the encoder. ``"pair"`` counts
only the query's own pair.

Embeddings are cached as ``.npz`` keyed by a hash of the encoder folder's weights, the dtype and
the *content* of the evaluated pairs (each id, report text and the SHA-256 of each image file's
bytes), so re-running a table with one more encoder only encodes that one, an image replaced under
the same path is encoded again, and a dataset moved to another folder still hits the cache.

Records the manifest cannot give a pair for are left out and listed with their reason
(``skipped_records``): no report text, or an id seen before (the first record of an id is kept;
the CLI names these and exits 1, since two images under one id make the table ambiguous).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llavarad.errors import LlavaradError
from llavarad.evaluate.embedding import (  # noqa: F401 - re-exported
    compute_ranks,
    embedding_validation_metrics,
    positive_groups,
)
from llavarad.io.manifest import SPLITS

logger = logging.getLogger(__name__)

__all__ = [
    "CUTOFFS",
    "EncodedSet",
    "RetrievalError",
    "chance_recall",
    "compute_ranks",
    "embedding_validation_metrics",
    "encode_pairs",
    "encoder_hash",
    "evaluate_encoder",
    "file_hash",
    "items_hash",
    "load_retrieval_pairs",
    "rank_metrics",
    "run_retrieval",
    "skipped_summary",
    "validation_metrics",
    "write_tables",
]

CUTOFFS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")
_DIRECTION_NAMES = {"i2t": "image->text", "t2i": "text->image"}


class RetrievalError(LlavaradError, RuntimeError):
    """A retrieval run that cannot proceed; the message says what to change."""


@dataclass
class EncodedSet:
    """Embeddings of the pairs that could be encoded.

    ``image`` and ``text`` are float32 ``(N, E)``, L2-normalised, row ``i`` of both from pair
    ``ids[i]``; ``failures`` lists ``{"id", "image", "error"}`` of pairs left out (unreadable image).
    """

    ids: list[str]
    texts: list[str]
    image: np.ndarray
    text: np.ndarray
    failures: list[dict[str, Any]] = field(default_factory=list)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def items_hash(items: Sequence[tuple[str, str, str]]) -> str:
    """SHA-256 over the ``(id, image path, text)`` items' ids, texts and image *bytes* (not paths);
    an unreadable image file enters as its error kind, so it is retried once it appears."""
    h = hashlib.sha256()
    for item_id, path, text in items:
        try:
            digest = file_hash(path)
        except OSError as exc:
            digest = f"unreadable:{type(exc).__name__}"
        h.update(json.dumps([item_id, text, digest], ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def encoder_hash(clip_dir: str | Path) -> str:
    """SHA-256 over the files that define a CLIP folder's embeddings (weights, configs, tokenizer);
    training logs and checkpoints in the same folder do not change it."""
    folder = Path(clip_dir)
    h = hashlib.sha256()
    files = [folder / "clip_config.json", folder / "heads.safetensors"]
    for sub in ("image_encoder", "text_encoder"):
        files.extend(sorted(p for p in (folder / sub).glob("*") if p.is_file()))
    for p in files:
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(file_hash(p).encode())
    return h.hexdigest()


def load_retrieval_pairs(manifest: str | Path, split: str | None) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """``(id, image path, report text)`` of ``manifest`` records in ``split`` (None: all splits),
    and the records left out because they have no findings/impression text."""
    from llavarad.data.pairs import load_pairs

    pairs, skipped = load_pairs(manifest, None if split is None else [split])
    return [(p.id, p.image, p.text) for p in pairs], skipped


def encode_pairs(clip, items: Sequence[tuple[str, str, str]], *, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None) -> EncodedSet:
    """Embed ``(id, image path, text)`` items with ``clip`` (a loaded :class:`CxrClip`).

    A pair whose image cannot be read is left out of both sides and listed in ``failures``.
    ``progress(n)`` is called with the number of items finished after each batch.
    """
    import torch

    from llavarad.data.pairs import read_image

    was_training = clip.training
    clip.eval()
    ids: list[str] = []
    texts: list[str] = []
    img_chunks: list[np.ndarray] = []
    txt_chunks: list[np.ndarray] = []
    failures: list[dict[str, Any]] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images, good = [], []
            for item_id, path, text in chunk:
                try:
                    images.append(read_image(path).convert("RGB"))
                    good.append((item_id, text))
                except Exception as exc:  # noqa: BLE001 - recorded and reported, never fatal
                    failures.append({"id": item_id, "image": path, "error": f"{type(exc).__name__}: {exc}"})
                    logger.warning("%s: image left out of retrieval (%s)", item_id, exc)
            if good:
                pixels = clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
                with torch.inference_mode():
                    img_chunks.append(clip.encode_image(pixels).cpu().numpy())
                    txt_chunks.append(clip.encode_text([t for _, t in good]).cpu().numpy())
                ids.extend(i for i, _ in good)
                texts.extend(t for _, t in good)
            if progress is not None:
                progress(len(chunk))
    finally:
        clip.train(was_training)
    dim = int(clip.config.embed_dim)
    image = np.concatenate(img_chunks).astype(np.float32) if img_chunks else np.zeros((0, dim), np.float32)
    text = np.concatenate(txt_chunks).astype(np.float32) if txt_chunks else np.zeros((0, dim), np.float32)
    return EncodedSet(ids, texts, image, text, failures)


def chance_recall(texts: Sequence[str], k: int, positives: Literal["same_text", "pair"] = "same_text") -> float:
    """Expected Recall@k of a random ranking: with ``m`` matches among ``N`` candidates the first
    match lands in the top ``k`` with probability ``1 - C(N-m, k) / C(N, k)``; averaged over queries."""
    from math import comb

    groups = positive_groups(texts, positives)
    n = len(groups)
    if n == 0:
        return float("nan")
    sizes = np.bincount(groups)[groups]
    kk = min(k, n)
    probs = [1.0 - comb(n - m, kk) / comb(n, kk) for m in sizes.tolist()]
    return float(np.mean(probs))


def rank_metrics(ranks: np.ndarray, *, n_resamples: int = 500, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 (percent), mean and median rank of ``(N,)`` ranks, with paired bootstrap CIs."""
    from llavarad.evaluate.bootstrap import (
        bootstrap_ci,
        bootstrap_mean_ci,
        resample_counts,
    )

    ranks = np.asarray(ranks, dtype=np.float64)
    counts = resample_counts(ranks.size, n_resamples, seed)
    out: dict[str, dict[str, float]] = {}
    for k in CUTOFFS:
        value, low, high = bootstrap_mean_ci((ranks <= k) * 100.0, n_resamples, seed, confidence, counts=counts)
        out[f"R@{k}"] = {"value": value, "ci_low": low, "ci_high": high}
    value, low, high = bootstrap_mean_ci(ranks, n_resamples, seed, confidence, counts=counts)
    out["mean_rank"] = {"value": value, "ci_low": low, "ci_high": high}
    value, low, high = bootstrap_ci(lambda idx: float(np.median(ranks[idx])), ranks.size, n_resamples, seed, confidence)
    out["median_rank"] = {"value": value, "ci_low": low, "ci_high": high}
    return out


def validation_metrics(clip, items: Sequence[tuple[str, str, str]], batch_size: int = 32) -> dict[str, float]:
    """Contrastive loss of ``items`` as one batch and pair-wise Recall@1/5 (fractions) in both
    directions, for a loaded CLIP on one process; keys are prefixed ``val_``. Stage 1 computes the
    same figures through its prepared model on every process (:func:`embedding_validation_metrics`)."""
    enc = encode_pairs(clip, items, batch_size=batch_size)
    return embedding_validation_metrics(enc.image, enc.text, float(clip.scale().detach()),
                                        n_failed=len(enc.failures))


def _cache_path(cache_dir: Path, enc_hash: str, content_hash: str, dtype: str) -> Path:
    key = hashlib.sha256(f"{enc_hash}|{content_hash}|{dtype}".encode()).hexdigest()[:24]
    return cache_dir / f"emb_{key}.npz"


def _load_cache(path: Path) -> EncodedSet | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return EncodedSet(meta["ids"], meta["texts"], z["image"].astype(np.float32), z["text"].astype(np.float32),
                              meta["failures"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        logger.warning("embedding cache %s is unreadable (%s); encoding again", path, exc)
        return None


def _save_cache(path: Path, enc: EncodedSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"ids": enc.ids, "texts": enc.texts, "failures": enc.failures})
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, image=enc.image, text=enc.text, meta=np.array(meta))
    tmp.replace(path)


def evaluate_encoder(clip_dir: str | Path, items: Sequence[tuple[str, str, str]], *, content_hash: str | None = None,
                     cache_dir: str | Path | None, batch_size: int = 32, device: str = "auto",
                     dtype: str = "auto", positives: Literal["same_text", "pair"] = "same_text",
                     n_resamples: int = 500, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode ``items`` with one CLIP folder (or reuse embeddings cached for the same encoder and
    the same content, :func:`items_hash`; computed here when ``content_hash`` is not given) and
    compute its metrics."""
    from llavarad.model.clip import load_clip

    enc_hash = encoder_hash(clip_dir)
    cached = None
    path = None
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), enc_hash, content_hash or items_hash(items), dtype)
        cached = _load_cache(path) if path.is_file() else None
    if cached is None:
        clip = load_clip(clip_dir, device=device, dtype=dtype)
        enc = encode_pairs(clip, items, batch_size=batch_size, progress=progress)
        if path is not None:
            _save_cache(path, enc)
        from_cache = False
    else:
        enc, from_cache = cached, True
        if progress is not None:
            progress(len(items))
    n = len(enc.ids)
    result: dict[str, Any] = {"folder": str(clip_dir), "encoder_hash": enc_hash, "n": n, "failures": enc.failures,
                              "from_cache": from_cache, "metrics": {}, "chance": {}}
    if n == 0:
        return result
    ranks = compute_ranks(enc.image, enc.text, enc.texts, positives)
    for direction in DIRECTIONS:
        for name, value in rank_metrics(ranks[direction], n_resamples=n_resamples, seed=seed).items():
            result["metrics"][f"{direction}_{name}"] = value
    for k in CUTOFFS:
        result["chance"][f"R@{k}"] = 100.0 * chance_recall(enc.texts, k, positives)
    return result


def _unique_names(folders: Sequence[str | Path]) -> list[str]:
    names: list[str] = []
    for f in folders:
        base = Path(f).resolve().name or str(f)
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def run_retrieval(manifest: str | Path, encoders: Sequence[str | Path], out_dir: str | Path, *,
                  split: str | None = "test", batch_size: int = 32, device: str = "auto", dtype: str = "auto",
                  positives: Literal["same_text", "pair"] = "same_text", n_resamples: int = 500, seed: int = 0,
                  cache_dir: str | Path | None = None, names: Sequence[str] | None = None,
                  progress_factory: Callable[[str, int], Callable[[int], None]] | None = None) -> dict[str, Any]:
    """Retrieval table of several encoders on one manifest; writes ``retrieval.{json,csv,md}``.

    ``cache_dir`` defaults to ``<out_dir>/embedding_cache``. ``progress_factory(name, total)``
    returns a per-encoder ``progress(n)`` callback (the CLI's progress bar). Returns the JSON dict.
    """
    from llavarad.model.build import versions

    if split is not None and split not in SPLITS:
        raise RetrievalError(f"split {split!r} is not one of {', '.join(SPLITS)} (or None for all)")
    if not encoders:
        raise RetrievalError("give at least one encoder folder (--encoder DIR)")
    names = list(names) if names else _unique_names(encoders)
    if len(names) != len(encoders):
        raise RetrievalError(f"{len(names)} names for {len(encoders)} encoders")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, skipped = load_retrieval_pairs(manifest, split)
    if not items:
        raise RetrievalError(f"{manifest}: no records with report text in split {split!r}; "
                             "pick another --split (or 'all')")
    for reason in sorted({s["reason"] for s in skipped}):
        ids = [s["id"] for s in skipped if s["reason"] == reason]
        logger.warning("%d records left out (%s): %s", len(ids), reason, ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
    mhash = file_hash(manifest)
    content = items_hash(items)
    cache = Path(cache_dir) if cache_dir is not None else out / "embedding_cache"
    results: dict[str, Any] = {}
    for name, folder in zip(names, encoders):
        progress = progress_factory(name, len(items)) if progress_factory else None
        results[name] = evaluate_encoder(folder, items, content_hash=content, cache_dir=cache,
                                         batch_size=batch_size, device=device, dtype=dtype, positives=positives,
                                         n_resamples=n_resamples, seed=seed, progress=progress)
    report = {
        "n": len(items),
        "manifest": str(manifest),
        "manifest_sha256": mhash,
        "content_sha256": content,
        "split": split,
        "skipped_records": skipped,
        "encoders": results,
        "settings": {"positives": positives, "n_resamples": n_resamples, "seed": seed, "confidence": 0.95,
                     "cutoffs": list(CUTOFFS), "device": device, "dtype": dtype, "batch_size": batch_size},
        "versions": versions(),
    }
    write_tables(report, out)
    return report


def skipped_summary(skipped: Sequence[dict[str, Any]]) -> list[str]:
    """One line per reason a record was left out, naming a few ids (for the table and the CLI)."""
    lines = []
    for reason in sorted({s["reason"] for s in skipped}):
        ids = [str(s["id"]) for s in skipped if s["reason"] == reason]
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        lines.append(f"{len(ids)} record(s) left out ({reason}): {shown}.")
    return lines


def _fmt(m: dict[str, float], digits: int = 1) -> str:
    return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, res in report["encoders"].items():
        for direction in DIRECTIONS:
            row: dict[str, Any] = {"encoder": name, "direction": _DIRECTION_NAMES[direction], "n": res["n"],
                                   "failed": len(res["failures"])}
            for metric in [f"R@{k}" for k in CUTOFFS] + ["mean_rank", "median_rank"]:
                m = res["metrics"].get(f"{direction}_{metric}")
                row[metric] = m
            rows.append(row)
    return rows


def write_tables(report: dict[str, Any], out_dir: str | Path) -> None:
    """Write ``retrieval.json``, ``retrieval.csv`` (value and CI columns) and ``retrieval.md``."""
    out = Path(out_dir)
    (out / "retrieval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    metrics = [f"R@{k}" for k in CUTOFFS] + ["mean_rank", "median_rank"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["encoder", "direction", "n", "failed"] + [f"{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high")])
    for row in _rows(report):
        cells = [row["encoder"], row["direction"], row["n"], row["failed"]]
        for m in metrics:
            v = row[m]
            cells.extend([f"{v['value']:.4f}", f"{v['ci_low']:.4f}", f"{v['ci_high']:.4f}"] if v else ["", "", ""])
        writer.writerow(cells)
    (out / "retrieval.csv").write_text(buf.getvalue(), encoding="utf-8")
    lines = [f"# Cross-modal retrieval ({report['n']} pairs, split {report['split']}, positives "
             f"{report['settings']['positives']}, 95% bootstrap CI over {report['settings']['n_resamples']} resamples)",
             "", "| encoder | direction | R@1 (%) | R@5 (%) | R@10 (%) | mean rank | median rank |",
             "|---|---|---|---|---|---|---|"]
    for row in _rows(report):
        if row["R@1"] is None:
            lines.append(f"| {row['encoder']} | {row['direction']} | no pairs encoded | | | | |")
            continue
        lines.append(f"| {row['encoder']} | {row['direction']} | {_fmt(row['R@1'])} | {_fmt(row['R@5'])} | "
                     f"{_fmt(row['R@10'])} | {_fmt(row['mean_rank'])} | {_fmt(row['median_rank'])} |")
    first = next(iter(report["encoders"].values()), None)
    if first and first["chance"]:
        ch = first["chance"]
        lines.append(f"| random ranking | either | {ch['R@1']:.1f} | {ch['R@5']:.1f} | {ch['R@10']:.1f} | | |")
    failed = {name: len(r["failures"]) for name, r in report["encoders"].items() if r["failures"]}
    if failed or report["skipped_records"]:
        lines.append("")
        lines.extend(skipped_summary(report["skipped_records"]))
        for name, count in failed.items():
            lines.append(f"{name}: {count} pairs with unreadable images were left out (see retrieval.json).")
    (out / "retrieval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
