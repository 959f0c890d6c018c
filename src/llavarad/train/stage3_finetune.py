"""Stage 3, fine-tuning: LoRA on the language model, projector trained in full, "v1" prompts.

Starts from a stage-2 model folder. Examples are the "v1" conversation with the indication in the
question; the loss covers only the findings and the closing ``</s>``. The vision tower stays
frozen unless ``train_vision_tower`` is set. The paper's run: LoRA r=64, alpha=128, dropout 0.05
on q/k/v/o/gate/up/down, lr 1e-4, 3 epochs, global batch 64. Exports merged weights (default) or
the adapter.

Entry point: :func:`run_stage3` (CLI: ``llavarad train stage3 --config configs/stage3_<preset>.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.config import config_to_dict
from llavarad.train.export import gather_trained_model, write_summary
from llavarad.train.inputs import build_datasets, count_parameters, load_bundle
from llavarad.train.lora import LoraSettings, apply_lora, save_adapter
from llavarad.train.settings import TrainConfig
from llavarad.train.trainer import make_trainer, resolve_resume

logger = logging.getLogger(__name__)

__all__ = ["Stage3Config", "run_stage3"]


@dataclass
class Stage3Config(TrainConfig):
    """Stage-3 run settings; defaults are the paper's fine-tuning hyperparameters."""

    output_dir: Path = Path("runs/stage3")
    learning_rate: float = 1e-4
    epochs: float = 3.0
    global_batch_size: int = 64
    per_device_batch_size: int = 4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    prompt_format: Literal["v1"] = "v1"
    lora: LoraSettings = field(default_factory=LoraSettings)
    export: Literal["merged", "adapter"] = "merged"
    #: also train the whole vision tower (not the paper's recipe, which keeps it frozen; the
    #: adapter export then carries the tower's weights too)
    train_vision_tower: bool = False
    #: peak learning rate of the vision tower when it trains (None: the run's ``learning_rate``);
    #: a pretrained tower usually wants a much lower one than the LoRA matrices
    vision_tower_lr: float | None = None

    def __post_init__(self) -> None:
        problems = self._check_common()
        if self.vision_tower_lr is not None and not self.train_vision_tower:
            problems.append(f"vision_tower_lr={self.vision_tower_lr} has no effect with train_vision_tower=false; "
                            "set train_vision_tower=true or drop vision_tower_lr")
        if self.vision_tower_lr is not None and self.vision_tower_lr <= 0:
            problems.append(f"vision_tower_lr={self.vision_tower_lr} must be > 0 (or null for the run's learning_rate)")
        if self.prompt_format != "v1":
            problems.append(f"prompt_format {self.prompt_format!r}: stage 3 trains the 'v1' format only")
        if problems:
            raise ValueError("; ".join(problems))


def run_stage3(cfg: Stage3Config, *, callbacks: Sequence[Any] = ()) -> Path:
    """LoRA-fine-tune the model folder ``cfg.model``; write the result to ``cfg.output_dir``.

    With ``export=merged`` the output is an ordinary model folder (prompt format "v1"); with
    ``export=adapter`` it is a peft adapter folder (LoRA + projector) that names its base model,
    to merge later with ``llavarad merge-lora``. Logs, summary and ``callbacks`` as in stage 2.
    """
    out = Path(cfg.output_dir)
    bundle = load_bundle(cfg)
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    from transformers import set_seed

    set_seed(cfg.seed)  # the LoRA matrices are initialised randomly: make runs (and resumes) repeatable
    model = apply_lora(bundle.model, cfg.lora, train_vision_tower=cfg.train_vision_tower)
    trainable, total = count_parameters(model)
    logger.info("stage 3: training %d of %d parameters (LoRA r=%d on the LM + projector%s)", trainable, total,
                cfg.lora.r, " + vision tower" if cfg.train_vision_tower else "")
    train_ds, val_ds = build_datasets(cfg, bundle, cfg.prompt_format)
    # the config guarantees vision_tower_lr is only set when the tower trains
    group_lrs = {"vision_tower": cfg.vision_tower_lr} if cfg.vision_tower_lr is not None else None
    trainer = make_trainer(cfg, model, bundle, train_ds, val_ds, stage="stage3", group_lrs=group_lrs,
                           callbacks=callbacks)
    resume = resolve_resume(cfg)
    if resume:
        logger.info("stage 3: resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)

    def rebuild():
        fresh = load_bundle(cfg).model
        return apply_lora(fresh, cfg.lora, train_vision_tower=cfg.train_vision_tower)

    trained = gather_trained_model(trainer, rebuild)
    if trained is None:
        return out
    train_config = {"stage": "stage3", **config_to_dict(cfg)}
    trained.eval()
    if cfg.export == "adapter":
        save_adapter(trained, out, base_model=cfg.model, train_config=train_config)
    else:
        from llavarad.model.build import save_model

        merged = trained.merge_and_unload()
        merged.config.use_cache = True
        bundle.model = merged
        bundle.meta["prompt_format"] = cfg.prompt_format
        save_model(bundle, out, train_config=train_config)
    write_summary(cfg, trainer, out, stage="stage3", extra={
        "train_examples": len(train_ds), "val_examples": len(val_ds) if val_ds is not None else 0,
        "excluded": len(train_ds.excluded), "trainable_params": trainable, "total_params": total,
        "export": cfg.export})
    logger.info("stage 3: %s written to %s", "adapter" if cfg.export == "adapter" else "merged model", out)
    return out
