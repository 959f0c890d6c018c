"""What a stage 2/3 run reads: the start model folder (as a bundle) and its train/validation datasets."""

from __future__ import annotations

import json
from pathlib import Path

from llavarad.train.distributed import is_main
from llavarad.train.settings import TrainConfig

__all__ = ["build_datasets", "count_parameters", "load_bundle"]


def load_bundle(cfg: TrainConfig):
    """Load the start model folder on CPU in the configured dtype (the Trainer places it on devices)."""
    import torch

    from llavarad.model.build import load_model

    dtype = cfg.model_dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    bundle = load_model(cfg.model, device="cpu", dtype=dtype, attn_implementation=cfg.attn_implementation)
    bundle.model.config.use_cache = False  # no KV cache while training (and required by checkpointing)
    bundle.model.train()
    return bundle


def build_datasets(cfg: TrainConfig, bundle, prompt_format: str):
    """Train and (optional) validation datasets; writes excluded ids to ``excluded.jsonl``."""
    from llavarad.train.dataset import build_dataset

    common = {"tokenizer": bundle.tokenizer, "image_processor": bundle.image_processor,
              "prompt_format": prompt_format, "num_image_tokens": bundle.num_image_tokens,
              "image_token_id": bundle.image_token_id, "max_length": cfg.max_length,
              "on_too_long": cfg.on_too_long, "on_missing_findings": cfg.on_missing_findings,
              "blank_images": cfg.blank_images, "aspect": str(getattr(bundle, "image_aspect_ratio", "crop"))}
    train = build_dataset(cfg.train_manifest, split=cfg.train_split, max_samples=cfg.max_train_samples, **common)
    val = None
    if cfg.eval_steps > 0:
        val = build_dataset(cfg.val_manifest or cfg.train_manifest, split=cfg.val_split,
                            max_samples=cfg.max_val_samples, **common)
    excluded = list(train.excluded) + (list(val.excluded) if val is not None else [])
    if excluded and is_main():
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "excluded.jsonl").open("w", encoding="utf-8") as fh:
            for ex in excluded:
                fh.write(json.dumps({"id": ex.id, "reason": ex.reason, "detail": ex.detail}) + "\n")
    return train, val


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
