"""Stage-1 data: image-report pairs from a manifest, the sampler, the dataset and the collator.

The Trainer (see :mod:`llavarad.train._stage1_engine`) draws batches with :class:`EpochSampler`
and stacks them with :class:`Collator`; both are deterministic in (seed, epoch), which is what makes
a resumed run exact.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llavarad.data.pairs import Pair, load_pairs, read_image, record_text

logger = logging.getLogger(__name__)

__all__ = ["Collator", "EpochSampler", "Pair", "PairDataset", "load_pairs", "read_image", "record_text"]


def _random_resized_crop(img, rng, scale: tuple[float, float]):
    """Crop a random area fraction in ``scale`` (aspect ratio in [3/4, 4/3]) as open_clip's training
    transform does; the processor then resizes it. Deterministic given ``rng``."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.crop((x, y, x + cw, y + ch))
    return img


class PairDataset:
    """Map-style dataset of pairs -> ``{"id", "pixel_values" (3, S, S) or None, "text", "error"}``.

    A sample whose image cannot be read carries ``error`` and no pixels, so the batch goes on
    without it and the failure is recorded. Augmentation is seeded by (seed, epoch, index), so a
    resumed run sees exactly the same crops.
    """

    def __init__(self, pairs: list[Pair], image_processor, *, augment: bool, crop_scale: tuple[float, float],
                 seed: int):
        self.pairs = pairs
        self.image_processor = image_processor
        self.augment = augment
        self.crop_scale = crop_scale
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer's data loader before each epoch (the crops depend on it)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np

        pair = self.pairs[index]
        try:
            img = read_image(pair.image).convert("RGB")
            if self.augment:
                rng = np.random.default_rng((self.seed, self.epoch, index))
                img = _random_resized_crop(img, rng, self.crop_scale)
            pixels = self.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]
            return {"id": pair.id, "pixel_values": pixels, "text": pair.text, "error": None}
        except Exception as exc:  # noqa: BLE001 - any unreadable image is recorded, never fatal
            return {"id": pair.id, "pixel_values": None, "text": pair.text,
                    "error": f"{type(exc).__name__}: {exc}", "image": pair.image}


class EpochSampler:
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``: the data order of every epoch is
    reproducible, which is what lets a resumed run skip exactly the batches already seen.

    The Trainer sets the epoch (:meth:`set_epoch`) from its checkpointed state before each epoch,
    on the loader it resumes with too, so a resumed process draws the same order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import torch

        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class Collator:
    """Stack good samples, tokenize their reports, keep the failures for the record."""

    def __init__(self, tokenizer, context_length: int, image_size: int):
        self.tokenizer, self.context_length, self.image_size = tokenizer, context_length, image_size

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        good = [s for s in samples if s["error"] is None]
        bad = [{"id": s["id"], "image": s.get("image"), "error": s["error"]} for s in samples if s["error"] is not None]
        texts = [s["text"] for s in good]
        if good:
            enc = self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt",
                                 return_token_type_ids=False)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            lengths = mask.sum(1)
            n_truncated = int((lengths > self.context_length).sum())
            if ids.shape[1] > self.context_length:
                # Keep [CLS] ... and end with [SEP] like the tokenizer's own truncation would.
                ids, mask = ids[:, : self.context_length].clone(), mask[:, : self.context_length].clone()
                sep = getattr(self.tokenizer, "sep_token_id", None)
                if sep is not None:
                    long_rows = lengths > self.context_length
                    ids[long_rows, -1] = sep
            pixels = torch.stack([s["pixel_values"] for s in good])
        else:
            ids = torch.zeros(0, 2, dtype=torch.long)
            mask = torch.zeros(0, 2, dtype=torch.long)
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
            n_truncated = 0
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "ids": [s["id"] for s in good],
                "bad": bad, "n_truncated": n_truncated}
