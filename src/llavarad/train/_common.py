"""What stages 2 and 3 share: the run settings, Trainer arguments, logging and resuming.

The engine is the Hugging Face ``Trainer`` (on accelerate), so the same code runs on one CPU and on
many GPUs under ``accelerate launch`` with DDP, DeepSpeed ZeRO-2/3 or FSDP: the distributed setup
comes from the launcher's config, never from code changes here. The global batch size is fixed
by the config; gradient accumulation is derived from it, the per-device batch and the world size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import Trainer, TrainerCallback

from llavarad.config import config_to_dict

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "CONFIG_FILE", "JsonlLogCallback", "ConfigSnapshotCallback", "build_datasets",
           "count_parameters", "gather_trained_model", "grad_accumulation", "load_bundle", "make_trainer",
           "plain_model_init", "resolve_resume", "world_size", "write_summary"]

#: Name of the training config file written into every checkpoint and the final model folder.
CONFIG_FILE = "llavarad_train_config.json"


@dataclass
class TrainConfig:
    """Settings shared by stage 2 and stage 3 (each stage sets its own defaults).

    ``global_batch_size`` = ``per_device_batch_size`` x gradient accumulation x world size; the
    accumulation is computed and logged. ``resume``: ``auto`` continues from the newest checkpoint
    in ``output_dir`` if any, ``never`` starts over, anything else is a checkpoint path.
    """

    model: Path = Path("runs/init")
    train_manifest: Path = Path("data/manifest.jsonl")
    output_dir: Path = Path("runs/stage")
    train_split: str = "train"
    val_manifest: Path | None = None
    val_split: str = "validate"
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1
    global_batch_size: int = 64
    per_device_batch_size: int = 4
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 2048
    on_too_long: Literal["error", "skip"] = "error"
    on_missing_findings: Literal["error", "skip"] = "skip"
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    model_dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    logging_steps: int = 10
    eval_steps: int = 0
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 42
    resume: str = "auto"
    num_workers: int = 2
    deepspeed: Path | None = None
    blank_images: bool = False

    def _check_common(self) -> list[str]:
        problems = []
        positive = {"learning_rate": self.learning_rate, "epochs": self.epochs,
                    "global_batch_size": self.global_batch_size, "per_device_batch_size": self.per_device_batch_size,
                    "max_length": self.max_length, "logging_steps": self.logging_steps}
        problems += [f"{k} must be > 0, got {v}" for k, v in positive.items() if v <= 0]
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.eval_steps < 0 or self.save_steps < 0 or self.num_workers < 0:
            problems.append("eval_steps, save_steps and num_workers must be >= 0 (0 turns eval/saving off)")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            problems.append(f"deepspeed: {self.deepspeed} does not exist (e.g. configs/accelerate/ds_zero2.json)")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be -1 (use epochs) or > 0, got {self.max_steps}")
        for name in ("max_train_samples", "max_val_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be > 0 or null, got {value}")
        return problems


def world_size() -> int:
    """Number of training processes, as set by ``accelerate launch`` / ``torchrun`` (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def grad_accumulation(global_batch: int, per_device: int, n_processes: int) -> int:
    """Gradient accumulation steps that make ``per_device x steps x n_processes == global_batch``."""
    per_step = per_device * n_processes
    if global_batch % per_step:
        raise ValueError(
            f"global_batch_size={global_batch} is not a multiple of per_device_batch_size={per_device} x "
            f"world_size={n_processes} = {per_step}: change per_device_batch_size or global_batch_size")
    return global_batch // per_step


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from, or None to start fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        if Path(cfg.output_dir).is_dir():
            return get_last_checkpoint(str(cfg.output_dir))
        return None
    path = Path(cfg.resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume!r}: no such checkpoint folder; use auto, never or a checkpoint-N path")
    return str(path)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log (loss, lr, grad norm, eval loss) to ``train_log.jsonl`` on rank 0."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.t0, 3), **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


class ConfigSnapshotCallback(TrainerCallback):
    """Write the run config into every checkpoint folder, so a checkpoint explains itself."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")


def build_datasets(cfg: TrainConfig, bundle, prompt_format: str):
    """Train and (optional) validation datasets; writes excluded ids to ``excluded.jsonl``."""
    from llavarad.train.dataset import build_dataset

    common = dict(tokenizer=bundle.tokenizer, image_processor=bundle.image_processor, prompt_format=prompt_format,
                  num_image_tokens=bundle.num_image_tokens, image_token_id=bundle.image_token_id,
                  max_length=cfg.max_length, on_too_long=cfg.on_too_long,
                  on_missing_findings=cfg.on_missing_findings, blank_images=cfg.blank_images,
                  aspect=str(getattr(bundle, "image_aspect_ratio", "crop")))
    train = build_dataset(cfg.train_manifest, split=cfg.train_split, max_samples=cfg.max_train_samples, **common)
    val = None
    if cfg.eval_steps > 0:
        val = build_dataset(cfg.val_manifest or cfg.train_manifest, split=cfg.val_split,
                            max_samples=cfg.max_val_samples, **common)
    excluded = list(train.excluded) + (list(val.excluded) if val is not None else [])
    if excluded and _is_main():
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "excluded.jsonl").open("w", encoding="utf-8") as fh:
            for ex in excluded:
                fh.write(json.dumps({"id": ex.id, "reason": ex.reason, "detail": ex.detail}) + "\n")
    return train, val


def _use_bf16(cfg: TrainConfig) -> bool:
    import torch

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision=bf16 but this GPU has no bf16 support: use precision=fp32")
        return True
    if cfg.precision == "fp32":
        return False
    return bool(cuda and torch.cuda.is_bf16_supported())


class GroupLrTrainer(Trainer):
    """A ``Trainer`` whose optimizer gives parameters whose name contains a key of ``group_lrs`` that
    key's peak learning rate (weight-decay exemptions as in the stock ``Trainer``)."""

    def __init__(self, *args, group_lrs: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_lrs = dict(group_lrs or {})

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not self.group_lrs:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list] = {}
        for name, p in opt_model.named_parameters():
            if not p.requires_grad:
                continue
            lr = next((v for key, v in self.group_lrs.items() if key in name), self.args.learning_rate)
            groups.setdefault((lr, self.args.weight_decay if name in decay else 0.0), []).append(p)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls([{"params": ps, "lr": lr, "weight_decay": wd}
                                        for (lr, wd), ps in groups.items()], **optimizer_kwargs)
        return self.optimizer


def make_trainer(cfg: TrainConfig, model, bundle, train_ds, val_ds, *, stage: str,
                 group_lrs: dict[str, float] | None = None):
    """A configured ``transformers.Trainer`` with the collator, JSONL logs and config snapshots.

    ``group_lrs`` maps a parameter-name fragment (e.g. ``"vision_tower"``) to that group's peak
    learning rate (the schedule scales every group alike); other parameters use the run's rate.
    With DeepSpeed this needs the optimizer to come from the Trainer (no ``optimizer`` section in
    the DeepSpeed config, as in the shipped ones).
    """
    from transformers import TrainingArguments

    from llavarad.train.collator import LlavaCollator

    n_proc = world_size()
    accum = grad_accumulation(cfg.global_batch_size, cfg.per_device_batch_size, n_proc)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / (cfg.per_device_batch_size * n_proc * accum)))
    logger.info("%s: %d train examples; global batch %d = %d per device x %d accumulation x %d processes; "
                "%d optimizer steps per epoch", stage, len(train_ds), cfg.global_batch_size,
                cfg.per_device_batch_size, accum, n_proc, steps_per_epoch)
    if cfg.global_batch_size > len(train_ds):
        logger.warning("%s: global batch %d exceeds the %d training examples; every step sees the whole set",
                       stage, cfg.global_batch_size, len(train_ds))
    bf16 = _use_bf16(cfg)
    args = TrainingArguments(
        output_dir=str(cfg.output_dir),
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if val_ds is not None else "no",
        eval_steps=cfg.eval_steps if val_ds is not None else None,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        dataloader_num_workers=cfg.num_workers,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        optim="adamw_torch",
        deepspeed=str(cfg.deepspeed) if cfg.deepspeed else None,
    )
    collator = LlavaCollator(pad_token_id=int(bundle.tokenizer.pad_token_id), image_token_id=bundle.image_token_id,
                             num_image_tokens=bundle.num_image_tokens)
    config_dict = {"stage": stage, **config_to_dict(cfg)}
    trainer = GroupLrTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
        callbacks=[JsonlLogCallback(Path(cfg.output_dir) / "train_log.jsonl"), ConfigSnapshotCallback(config_dict)],
        group_lrs=group_lrs)
    return trainer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def write_summary(cfg: TrainConfig, trainer, out_dir: Path, *, stage: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``train_summary.json`` (final losses, steps, time, counts) into ``out_dir`` and return it."""
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    summary = {
        "stage": stage,
        "global_steps": trainer.state.global_step,
        "first_loss": train_losses[0] if train_losses else None,
        "final_loss": train_losses[-1] if train_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "train_runtime_s": next((h.get("train_runtime") for h in reversed(history) if "train_runtime" in h), None),
        **extra,
    }
    if _is_main():
        (Path(out_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


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


@contextmanager
def plain_model_init(trainer):
    """Within this block ``from_pretrained`` builds an ordinary, unpartitioned model on this process.

    Once a ZeRO-3 run is configured, transformers builds every model inside ``deepspeed.zero.Init``
    (partitioned across all processes, with collectives). The rebuild of the trained model for the
    export runs on rank 0 alone and must be a plain full copy, so the run's ZeRO-3 setting is lifted
    for the block and put back afterwards from the accelerate DeepSpeed plugin that made it.
    """
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        yield
        return
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def gather_trained_model(trainer, rebuild):
    """The trained model with full weights on rank 0 (None on other ranks).

    Under DeepSpeed ZeRO-3 or FSDP the parameters are sharded; the accelerator gathers a full state
    dict (every process takes part) and ``rebuild()`` makes an unsharded CPU copy of the same
    architecture on rank 0 (outside ZeRO-3's partitioned init, see :func:`plain_model_init`) to load
    it into.
    """
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    sharded = any(p.numel() == 0 for p in model.parameters()) or bool(getattr(trainer, "is_fsdp_enabled", False))
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if not trainer.is_world_process_zero():
        return None
    if not sharded:
        return model
    with plain_model_init(trainer):
        fresh = rebuild()
    fresh.load_state_dict(state, strict=True)
    return fresh
