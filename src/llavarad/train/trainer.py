"""The Hugging Face ``Trainer`` as stages 2 and 3 configure it.

The engine is the ``Trainer`` (on accelerate), so the same code runs on one CPU and on many GPUs
under ``accelerate launch`` with DDP, DeepSpeed ZeRO-2/3 or FSDP: the distributed setup comes from
the launcher's config, never from code changes here. The global batch size is fixed by the config;
gradient accumulation is derived from it, the per-device batch and the world size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from transformers import Trainer, TrainerCallback

from llavarad.config import config_to_dict
from llavarad.train.callbacks import (
    ConfigSnapshotCallback,
    JsonlLogCallback,
    NonFiniteLossCallback,
)
from llavarad.train.distributed import grad_accumulation, world_size
from llavarad.train.settings import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["GroupLrTrainer", "last_complete_checkpoint", "make_trainer", "quiet", "resolve_resume", "use_bf16"]


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint a kill tore mid-write lacks it
    and is passed over (with a warning) instead of failing the resume.
    """
    root = Path(folder)
    if not root.is_dir():
        return None
    found = sorted((p for p in root.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                   key=lambda p: int(p.name[11:]))
    for path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("%s has no trainer_state.json (torn by an interrupted save); resuming from an older one", path)
    return None


def resolve_resume(cfg) -> str | None:
    """The checkpoint to resume from, or None to start fresh.

    ``cfg`` has ``resume`` (``auto``: the newest complete checkpoint in ``output_dir`` if any;
    ``never``; or a checkpoint path) and ``output_dir``; every stage's config has both.
    """
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        found = last_complete_checkpoint(cfg.output_dir)
        if found:
            logger.info("resuming from %s", found)
        return found
    path = Path(cfg.resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume!r}: no such checkpoint folder; use auto, never or a checkpoint-N path")
    return str(path)


def use_bf16(cfg: TrainConfig) -> bool:
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
                 group_lrs: dict[str, float] | None = None, callbacks: Sequence[TrainerCallback] = ()):
    """A configured ``transformers.Trainer`` with the collator, JSONL logs and config snapshots.

    ``group_lrs`` maps a parameter-name fragment (e.g. ``"vision_tower"``) to that group's peak
    learning rate (the schedule scales every group alike); other parameters use the run's rate.
    With DeepSpeed this needs the optimizer to come from the Trainer (no ``optimizer`` section in
    the DeepSpeed config, as in the shipped ones). ``callbacks``: extra callbacks (the CLI's
    progress bar); the Trainer's own printing of raw log dicts is removed (:func:`quiet`).
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
    bf16 = use_bf16(cfg)
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
        callbacks=[JsonlLogCallback(Path(cfg.output_dir) / "train_log.jsonl"), ConfigSnapshotCallback(config_dict),
                   NonFiniteLossCallback(), *callbacks],
        group_lrs=group_lrs)
    return quiet(trainer)


def quiet(trainer: Trainer) -> Trainer:
    """Remove the callback that prints raw log dicts to stdout (``disable_tqdm`` puts it there):
    the JSONL log keeps every value, the CLI's progress bar shows the headline."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
