"""Batch collation for LLaVA training: right padding, exact loss masks, stacked pixels.

The collator never truncates and never masks a sample away: it checks that every example carries
the expected number of image tokens and that labels line up with input ids, and raises an error
naming the example otherwise (the release masked whole samples on mismatches and only printed a
warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llavarad.errors import LlavaradError
from llavarad.model.processor import IGNORE_INDEX

__all__ = ["CollateError", "LlavaCollator"]


class CollateError(LlavaradError, ValueError):
    """An example that cannot be batched correctly; the message names it."""


@dataclass
class LlavaCollator:
    """Collate dataset items into a model batch.

    Input items: ``input_ids`` (L_i,), ``labels`` (L_i,), ``pixel_values`` (3, S, S), optional ``id``.
    Output: ``input_ids`` (B, L) padded with ``pad_token_id``, ``labels`` (B, L) padded with -100,
    ``attention_mask`` (B, L) 1 on real tokens, ``pixel_values`` (B, 3, S, S). ``L`` is the longest
    example, rounded up to ``pad_to_multiple_of`` when set.
    """

    pad_token_id: int
    image_token_id: int
    num_image_tokens: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not items:
            raise CollateError("empty batch")
        lengths = []
        for i, item in enumerate(items):
            name = item.get("id", f"batch item {i}")
            ids, labels = item["input_ids"], item["labels"]
            if ids.ndim != 1 or labels.shape != ids.shape:
                raise CollateError(f"example {name!r}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} "
                                   "must be 1-D and the same length")
            n_img = int((ids == self.image_token_id).sum())
            if n_img != self.num_image_tokens:
                raise CollateError(f"example {name!r}: {n_img} image tokens, expected {self.num_image_tokens}; "
                                   "it was tokenized for another preset")
            if bool(((labels != IGNORE_INDEX) & (ids == self.image_token_id)).any()):
                raise CollateError(f"example {name!r}: loss on an image position; labels are mis-masked")
            if not bool((labels != IGNORE_INDEX).any()):
                raise CollateError(f"example {name!r}: no target tokens; nothing to learn from it")
            lengths.append(int(ids.shape[0]))
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        batch = len(items)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (item, n) in enumerate(zip(items, lengths)):
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
        pixel_values = torch.stack([item["pixel_values"] for item in items])
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                "pixel_values": pixel_values}
