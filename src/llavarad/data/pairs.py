"""Image-report pairs from a manifest: what stage 1 trains on and retrieval evaluates.

Below both :mod:`llavarad.train.stage1_encoder` and :mod:`llavarad.retrieval`, so neither imports
the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavarad.io.manifest import iter_manifest, resolve_image_path

__all__ = ["Pair", "load_pairs", "read_image", "record_text"]


@dataclass
class Pair:
    """One image-report pair of the manifest."""

    id: str
    image: str
    text: str


def record_text(rec) -> str | None:
    """The report text used for contrastive training: findings, falling back to impression."""
    for value in (rec.findings, rec.impression):
        if value is not None and value.strip():
            return value.strip()
    return None


def load_pairs(manifest: str | Path, splits: list[str] | tuple[str, ...] | None) -> tuple[list[Pair], list[dict[str, Any]]]:
    """Pairs of ``manifest`` in ``splits`` (None: all), and the records skipped for lack of text.

    Returns ``(pairs, skipped)`` where ``skipped`` holds ``{"id", "reason"}`` for every record
    without findings or impression; records of other splits are not returned and not "skipped".
    """
    pairs: list[Pair] = []
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rec in iter_manifest(manifest):
        if splits is not None and rec.split not in splits:
            continue
        if rec.id in seen:
            skipped.append({"id": rec.id, "reason": "duplicate id (first occurrence kept)"})
            continue
        seen.add(rec.id)
        text = record_text(rec)
        if text is None:
            skipped.append({"id": rec.id, "reason": "no findings or impression text"})
            continue
        pairs.append(Pair(rec.id, str(resolve_image_path(rec.image, manifest)), text))
    return pairs, skipped


def read_image(path: str):
    """The radiograph at ``path`` as a PIL image (via :func:`llavarad.io.images.read_cxr`)."""
    from llavarad.io.images import read_cxr

    return read_cxr(path).image
