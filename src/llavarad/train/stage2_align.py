"""Stage 2, alignment: train only the projector to map image features into the LM's space.

The vision tower and the language model are frozen; examples are the image alone in the "plain"
format with the findings as the target (no indication, no system prompt), as in the paper. The
paper's run: lr 1e-3, 1 epoch, global batch 256, cosine schedule with 3% warm-up, weight decay 0.

Entry point: :func:`run_stage2` (CLI: ``llavarad train stage2 --config configs/stage2_<preset>.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llavarad.config import config_to_dict
from llavarad.train.export import gather_trained_model, write_summary
from llavarad.train.inputs import build_datasets, count_parameters, load_bundle
from llavarad.train.settings import TrainConfig
from llavarad.train.trainer import make_trainer, resolve_resume

logger = logging.getLogger(__name__)

__all__ = ["Stage2Config", "freeze_for_stage2", "run_stage2"]


@dataclass
class Stage2Config(TrainConfig):
    """Stage-2 run settings; defaults are the paper's alignment hyperparameters."""

    output_dir: Path = Path("runs/stage2")
    learning_rate: float = 1e-3
    epochs: float = 1.0
    global_batch_size: int = 256
    per_device_batch_size: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    prompt_format: Literal["plain"] = "plain"

    def __post_init__(self) -> None:
        problems = self._check_common()
        if self.prompt_format != "plain":
            problems.append(f"prompt_format {self.prompt_format!r}: stage 2 trains the 'plain' format only")
        if problems:
            raise ValueError("; ".join(problems))


def freeze_for_stage2(model) -> None:
    """Freeze everything except ``model.model.multi_modal_projector`` (in place)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)


def run_stage2(cfg: Stage2Config, *, callbacks: Sequence[Any] = ()) -> Path:
    """Train the projector of the model folder ``cfg.model``; write a model folder to ``cfg.output_dir``.

    Resumes from the newest checkpoint in ``output_dir`` (``resume=auto``); the final folder holds
    the weights, tokenizer, processor, ``llavarad.json`` (prompt format "plain", this config), the
    loss/lr log ``train_log.jsonl`` and ``train_summary.json``. ``callbacks``: extra
    ``transformers.TrainerCallback`` objects (the CLI's progress bar).
    """
    out = Path(cfg.output_dir)
    bundle = load_bundle(cfg)
    model = bundle.model
    freeze_for_stage2(model)
    trainable, total = count_parameters(model)
    logger.info("stage 2: training %d of %d parameters (projector only)", trainable, total)
    train_ds, val_ds = build_datasets(cfg, bundle, cfg.prompt_format)
    trainer = make_trainer(cfg, model, bundle, train_ds, val_ds, stage="stage2", callbacks=callbacks)
    resume = resolve_resume(cfg)
    if resume:
        logger.info("stage 2: resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)

    def rebuild():
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration(model.config)

    trained = gather_trained_model(trainer, rebuild)
    if trained is not None:
        trained.eval()
        trained.config.use_cache = True
        bundle.model = trained
        bundle.meta["prompt_format"] = cfg.prompt_format
        from llavarad.model.build import save_model

        save_model(bundle, out, train_config={"stage": "stage2", **config_to_dict(cfg)})
        write_summary(cfg, trainer, out, stage="stage2", extra={
            "train_examples": len(train_ds), "val_examples": len(val_ds) if val_ds is not None else 0,
            "excluded": len(train_ds.excluded), "trainable_params": trainable, "total_params": total})
        logger.info("stage 2: model written to %s", out)
    return out
