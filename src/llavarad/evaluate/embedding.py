"""Metrics on paired image and text embeddings: ranks of the true match, and the validation
figures stage 1 logs. Below both :mod:`llavarad.retrieval` and :mod:`llavarad.train.stage1_encoder`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["compute_ranks", "embedding_validation_metrics", "positive_groups"]


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def positive_groups(texts: Sequence[str], positives: str) -> np.ndarray:
    """Group id per item: items in one group count as matches of each other."""
    if positives == "pair":
        return np.arange(len(texts))
    keys: dict[str, int] = {}
    return np.array([keys.setdefault(_normalise_text(t), len(keys)) for t in texts], dtype=np.int64)


def compute_ranks(image: np.ndarray, text: np.ndarray, texts: Sequence[str],
                  positives: Literal["same_text", "pair"] = "same_text", block: int = 1024) -> dict[str, np.ndarray]:
    """1-based rank of the first true match of every query, both directions.

    Args:
        image, text: ``(N, E)`` L2-normalised embeddings, row ``i`` of each from pair ``i``.
        texts: the ``N`` report texts (to find identical reports when ``positives="same_text"``).
    Returns:
        ``{"i2t": (N,) int64, "t2i": (N,) int64}``. Ties count against the query.
    """
    if positives not in ("same_text", "pair"):
        raise ValueError(f"positives={positives!r}: use 'same_text' or 'pair'")
    n = image.shape[0]
    if text.shape[0] != n or len(texts) != n:
        raise ValueError(f"{n} image embeddings but {text.shape[0]} text embeddings and {len(texts)} texts")
    groups = positive_groups(texts, positives)
    out = {}
    for direction, (queries, gallery) in {"i2t": (image, text), "t2i": (text, image)}.items():
        ranks = np.empty(n, dtype=np.int64)
        for s in range(0, n, block):
            sim = queries[s:s + block].astype(np.float64) @ gallery.T.astype(np.float64)  # (b, N)
            same = groups[s:s + block, None] == groups[None, :]
            best_pos = np.where(same, sim, -np.inf).max(axis=1)
            ranks[s:s + block] = 1 + ((sim >= best_pos[:, None]) & ~same).sum(axis=1)
        out[direction] = ranks
    return out


def embedding_validation_metrics(image: np.ndarray, text: np.ndarray, scale: float, *,
                                 n_failed: int = 0) -> dict[str, float]:
    """Stage 1's validation figures (see :func:`llavarad.retrieval.validation_metrics`) from embeddings already computed: ``(N, E)`` L2-normalised image
    and text embeddings (row ``i`` of each from pair ``i``) and the model's logit scale. Stage 1
    computes them on every process of a distributed run and calls this on the gathered rows."""
    import torch

    n = int(image.shape[0])
    if text.shape[0] != n:
        raise ValueError(f"{n} image embeddings but {text.shape[0]} text embeddings")
    out = {"val_n": float(n), "val_failed": float(n_failed)}
    if not n:
        return out
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    txt = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
    logits = float(scale) * img @ txt.t()
    labels = torch.arange(n)
    ce = torch.nn.functional.cross_entropy
    out["val_loss"] = float(0.5 * (ce(logits, labels) + ce(logits.t(), labels)))
    # pair-wise positives: the texts only matter for "same_text"
    for direction, r in compute_ranks(image, text, [""] * n, positives="pair").items():
        for k in (1, 5):
            out[f"val_{direction}_R@{k}"] = float((r <= k).mean())
    return out
