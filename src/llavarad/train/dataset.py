"""Training datasets for stages 2 and 3: manifest records -> token ids, loss masks and pixels.

Every record is tokenized once when the dataset is built, so that length problems surface before
training starts and name the record: an example longer than ``max_length`` raises
:class:`~llavarad.model.processor.SequenceTooLongError` (``on_too_long="error"``, the default) or
is excluded and counted (``on_too_long="skip"``). Records without findings (nothing to learn) are
excluded and counted, or raise with ``on_missing_findings="error"``. Excluded ids are listed in
:attr:`CxrTrainDataset.excluded`, so no sample is ever dropped silently. Images are read lazily in
``__getitem__``; an unreadable image raises an error naming the record and the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.errors import LlavaradError
from llavarad.io.manifest import ManifestRecord, read_manifest, resolve_image_path
from llavarad.model.processor import SequenceTooLongError, encode_example

logger = logging.getLogger(__name__)

__all__ = ["CxrTrainDataset", "ExcludedExample", "ImageReadError", "build_dataset", "open_image"]


class ImageReadError(LlavaradError, ValueError):
    """A training image that cannot be read; the message names the record and the file."""


@dataclass(frozen=True)
class ExcludedExample:
    """A record left out of training on purpose, and why (written to ``excluded.jsonl``)."""

    id: str
    reason: Literal["too_long", "missing_findings"]
    detail: str


def open_image(path: str | Path):
    """Read a CXR (PNG/JPEG/DICOM) as a PIL image via :func:`llavarad.io.images.read_cxr`.

    Falls back to Pillow when the reader module is not installed in this checkout.
    """
    try:
        from llavarad.io.images import read_cxr
    except ImportError:  # the image reader lands separately; Pillow covers PNG/JPEG meanwhile
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    return read_cxr(path).image


@dataclass
class CxrTrainDataset:
    """A map-style dataset of tokenized image-report examples (a ``torch.utils.data.Dataset``).

    Item ``i`` is a dict: ``input_ids`` (L,) long, ``labels`` (L,) long with ``-100`` outside the
    target, ``pixel_values`` (3, S, S) float32, ``id`` (str; dropped by the collator).
    """

    records: list[ManifestRecord]
    encoded: list[Any]
    image_processor: Any
    manifest_path: Path
    blank_images: bool = False
    excluded: list[ExcludedExample] = field(default_factory=list)
    aspect: str = "crop"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from llavarad.model.processor import pixel_values_for

        rec, enc = self.records[index], self.encoded[index]
        if self.blank_images:
            from PIL import Image

            size = int(self.image_processor.crop_size["height"])
            image = Image.new("RGB", (size, size), (128, 128, 128))
        else:
            path = resolve_image_path(rec.image, self.manifest_path)
            try:
                image = open_image(path)
            except Exception as exc:  # any reader failure becomes one clear, attributable error
                raise ImageReadError(f"record {rec.id!r}: cannot read image {path}: {exc}") from exc
        pixels = pixel_values_for([image], self.image_processor, aspect=self.aspect)[0]
        return {
            "id": rec.id,
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "pixel_values": pixels,
        }


def build_dataset(
    manifest_path: str | Path,
    *,
    split: str | None,
    tokenizer,
    image_processor,
    prompt_format: str,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
    on_too_long: Literal["error", "skip"] = "error",
    on_missing_findings: Literal["error", "skip"] = "skip",
    max_samples: int | None = None,
    blank_images: bool = False,
    aspect: Literal["crop", "pad"] = "crop",
) -> CxrTrainDataset:
    """Read ``manifest_path`` (records of ``split``; all when None) and tokenize every example.

    Raises :class:`SequenceTooLongError` naming the first too-long record when ``on_too_long`` is
    "error", and ``ValueError`` when the split is empty or (``on_missing_findings="error"``) a
    record has no findings. ``aspect`` is the model folder's image handling ("crop" or "pad"), so
    training sees images exactly as generation will.
    """
    manifest_path = Path(manifest_path)
    records = [r for r in read_manifest(manifest_path) if split is None or r.split == split]
    if max_samples is not None:
        records = records[:max_samples]
    kept: list[ManifestRecord] = []
    encoded: list[Any] = []
    excluded: list[ExcludedExample] = []
    for rec in records:
        findings = (rec.findings or "").strip()
        if not findings:
            if on_missing_findings == "error":
                raise ValueError(f"{manifest_path}: record {rec.id!r} has no findings to train on; "
                                 "fill them in or set on_missing_findings=skip")
            excluded.append(ExcludedExample(rec.id, "missing_findings", "empty findings"))
            continue
        try:
            enc = encode_example(tokenizer, prompt_format, indication=rec.indication, findings=findings,
                                 num_image_tokens=num_image_tokens, image_token_id=image_token_id,
                                 max_length=max_length, example_id=rec.id)
        except SequenceTooLongError as exc:
            if on_too_long == "error":
                raise SequenceTooLongError(f"{manifest_path}: {exc} (or set on_too_long=skip to exclude and count "
                                           "such examples)") from exc
            excluded.append(ExcludedExample(rec.id, "too_long", str(exc)))
            continue
        kept.append(rec)
        encoded.append(enc)
    if excluded:
        counts: dict[str, int] = {}
        for ex in excluded:
            counts[ex.reason] = counts.get(ex.reason, 0) + 1
        logger.warning("%s split=%s: excluded %d of %d records (%s); ids in excluded.jsonl", manifest_path, split,
                       len(excluded), len(records), ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if not kept:
        raise ValueError(f"{manifest_path}: no trainable records in split {split!r} ({len(records)} read, "
                         f"{len(excluded)} excluded); check the split name and the findings column")
    return CxrTrainDataset(kept, encoded, image_processor, manifest_path, blank_images, excluded, aspect)
