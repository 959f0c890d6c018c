"""Stage 1 on the Hugging Face ``Trainer``: the contrastive loss, the sampler, the open_clip
schedule, validation through the prepared model and the rows of ``train_log.jsonl``.

The ``Trainer`` owns everything else (optimizer, mixed precision, gradient accumulation and
clipping, checkpoints with RNG state, exact resume, DDP/DeepSpeed/FSDP through accelerate), as for
stages 2 and 3. What stage 1 adds:

* :class:`ContrastiveTrainer` - ``compute_loss`` is the global-batch InfoNCE of
  :func:`llavarad.model.contrastive.contrastive_loss` (negatives gathered from every process *with*
  gradients), the sampler is the seeded :class:`~llavarad.train._stage1_data.EpochSampler`, weight
  decay spares gains, biases, position embeddings and the temperature, the schedule warms up as
  open_clip's does, and ``evaluate`` computes retrieval metrics on the validation pairs;
* :class:`Stage1Callback` - clamps the temperature after each optimizer step, ends an invocation
  at ``stop_after_steps`` with a checkpoint, asks for validation at epoch ends and writes one row
  per logged step (deduplicated, so a resumed run never logs a step twice).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from llavarad.io.manifest import JsonlWriter
from llavarad.train._stage1_data import Pair, PairDataset

logger = logging.getLogger(__name__)

__all__ = ["ContrastiveTrainer", "Stage1Callback", "open_clip_lr", "val_tag", "validate_pairs"]

#: parameters without weight decay besides every 1-D one (gains, biases): BiomedCLIP / open_clip
_NO_DECAY_NAMES = ("logit_scale", "position_embeddings", "cls_token", "mask_token")
#: name parts that wrappers (FSDP, activation checkpointing, torch.compile, DDP) put into parameter names
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def open_clip_lr(warmup: int, total: int, schedule: str, min_ratio: float):
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up that reaches the peak on step ``warmup - 1`` (open_clip counts from 1, the
    transformers schedules from 0 and so spend the first step at lr 0), then cosine decay to
    ``min_ratio`` (or constant).
    """
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def val_tag(epoch: float) -> str:
    """The ``row`` of a validation: ``val:N`` after N whole epochs, ``val:final`` mid-epoch."""
    return f"val:{round(epoch)}" if abs(epoch - round(epoch)) < 1e-9 else "val:final"


def _plain_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix("module.")


def validate_pairs(accelerator, model, pairs: list[Pair], image_processor, collate, batch_size: int,
                   num_workers: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Validation metrics of ``pairs`` through the *prepared* model, on every process.

    Each process embeds every ``world``-th pair; all processes run the same number of forward
    passes (the short ones repeat a pair, dropped again after the gather), because under ZeRO-3
    and FSDP a forward pass gathers the sharded weights from every process, and DDP may sync
    buffers in it. Nothing reads the unwrapped model's weights, so the same code is right for one
    CPU, DDP, ZeRO-2/3 and FSDP. Returns the metrics (on every process) and the unreadable images.
    """
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader, Subset

    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(len(pairs) / world)
    mine = list(range(rank, len(pairs), world)) or [0]
    mine += [mine[0]] * (per_process - len(mine))  # pad: every process makes the same forward passes
    dataset = PairDataset(pairs, image_processor, augment=False, crop_scale=(1.0, 1.0), seed=0)
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate)
    local = _embed(accelerator, model, loader)
    parts = gather_object([local]) if world > 1 else [local]
    return _merge_validation(parts, pairs)


def _embed(accelerator, model, loader) -> tuple[list[str], Any, Any, list[dict[str, Any]], float]:
    """``(ids, image rows, text rows, unreadable, scale)`` of one process's share, in eval mode."""
    import numpy as np

    ids: list[str] = []
    img_rows, txt_rows, bad = [], [], []
    scale = float("nan")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                img, txt, batch_scale = model(batch["pixel_values"].to(accelerator.device),
                                              batch["input_ids"].to(accelerator.device),
                                              batch["attention_mask"].to(accelerator.device))
                ids.extend(batch["ids"])
                img_rows.append(img.float().cpu().numpy())
                txt_rows.append(txt.float().cpu().numpy())
                bad.extend(batch["bad"])
                scale = float(batch_scale.detach().float())
    finally:
        model.train(was_training)
    return (ids, np.concatenate(img_rows) if img_rows else None, np.concatenate(txt_rows) if txt_rows else None,
            bad, scale)


def _merge_validation(parts, pairs: list[Pair]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of the gathered shares, each pair once, in the order of ``pairs``."""
    import numpy as np

    from llavarad.evaluate.embedding import embedding_validation_metrics

    order = {p.id: i for i, p in enumerate(pairs)}
    rows: dict[str, tuple[Any, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    dim, scale = 0, float("nan")
    for part_ids, part_img, part_txt, part_bad, part_scale in parts:
        for j, item_id in enumerate(part_ids):
            rows.setdefault(item_id, (part_img[j], part_txt[j]))
        for row in part_bad:
            failures.setdefault(row["id"], row)
        if part_img is not None:
            dim, scale = int(part_img.shape[1]), part_scale
    kept = sorted(rows, key=order.__getitem__)
    image = np.stack([rows[k][0] for k in kept]) if kept else np.zeros((0, dim), np.float32)
    text = np.stack([rows[k][1] for k in kept]) if kept else np.zeros((0, dim), np.float32)
    metrics = embedding_validation_metrics(image, text, scale, n_failed=len(failures))
    return metrics, sorted(failures.values(), key=lambda r: order[r["id"]])


class ContrastiveTrainer(Trainer):
    """The ``Trainer`` with stage 1's loss, sampler, weight-decay rule, schedule and validation.

    Extra keyword arguments: ``sampler`` (the training sampler), ``warmup_steps`` (None: from
    ``warmup_ratio``), ``warmup_ratio``, ``schedule`` (``cosine``/``constant``), ``min_lr_ratio``,
    ``val_pairs`` and ``image_processor`` (validation), ``bad_samples`` (the JSONL of unreadable
    training images, written on the main process).
    """

    def __init__(self, *args, sampler, warmup_steps: int | None, warmup_ratio: float, schedule: str,
                 min_lr_ratio: float, val_pairs: list[Pair], image_processor, bad_samples: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.warmup = (warmup_steps, warmup_ratio)
        self.schedule, self.min_lr_ratio = schedule, min_lr_ratio
        self.val_pairs, self.image_processor = val_pairs, image_processor
        self.bad_log = JsonlWriter(bad_samples) if self.is_world_process_zero() else None
        self.n_bad = self.n_truncated = self.samples_seen = 0
        self.step_stats: dict[str, Any] = {}
        self.t_start = time.perf_counter()
        self.no_decay = {name for name, p in self.model.named_parameters()
                         if p.ndim < 2 or any(k in name for k in _NO_DECAY_NAMES)}

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler

    def get_decay_parameter_names(self, model) -> list[str]:
        # decided on the unwrapped model's shapes (FSDP flattens them), matched by plain name
        return [n for n, _ in model.named_parameters() if _plain_name(n) not in self.no_decay]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            steps, ratio = self.warmup
            warmup = steps if steps is not None else int(round(ratio * num_training_steps))
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, open_clip_lr(warmup, num_training_steps, self.schedule, self.min_lr_ratio))
            self._created_lr_scheduler = True
            logger.info("stage 1: %d optimizer steps, warm-up %d, %s schedule", num_training_steps, warmup,
                        self.schedule)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Global-batch InfoNCE of this process's pairs; ``inputs`` from the stage-1 collator."""
        from llavarad.model.contrastive import contrastive_loss

        self._record(inputs.pop("bad"), int(inputs.pop("n_truncated")))
        inputs.pop("ids", None)
        img, txt, scale = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        loss, stats = contrastive_loss(img, txt, scale)
        self.samples_seen += int(stats["global_batch"])
        # the scale from the forward, not the weight: right when weights are sharded
        self.step_stats = {"scale": scale.detach(), **stats}
        return (loss, {"image_emb": img, "text_emb": txt}) if return_outputs else loss

    def _record(self, bad: list[dict[str, Any]], n_truncated: int) -> None:
        """Write unreadable training images once each (gathered from every process)."""
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            bad = gather_object(bad)
        self.n_truncated += n_truncated
        if not bad or self.bad_log is None:
            return
        epoch = math.floor(self.state.epoch or 0)
        for row in bad:
            if row["id"] not in self.bad_log.done:
                logger.warning("sample %s: unreadable image, skipped (%s)", row["id"], row["error"])
                self.bad_log.write({**row, "epoch": epoch})
                self.n_bad += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.step_stats:
            scale = float(self.step_stats["scale"].float())
            elapsed = max(time.perf_counter() - self.t_start, 1e-9)
            logs.update({"logit_scale": math.log(scale), "temperature": 1.0 / scale,
                         "acc_i2t": self.step_stats["acc_i2t"], "acc_t2i": self.step_stats["acc_t2i"],
                         "global_batch": int(self.step_stats["global_batch"]),
                         "samples_per_s": round(self.samples_seen / elapsed, 3)})
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval metrics of the validation pairs (every process takes part; see
        :func:`validate_pairs`), logged as one ``val:`` row."""
        metrics, failures = validate_pairs(self.accelerator, self.model_wrapped, self.val_pairs, self.image_processor,
                                           self.data_collator, self.args.per_device_train_batch_size,
                                           self.args.dataloader_num_workers)
        if self.is_world_process_zero():
            for row in failures:
                logger.warning("validation sample %s: unreadable image, left out (%s)", row["id"], row["error"])
            logger.info("validation (%s, step %d): %s", val_tag(self.state.epoch or 0), self.state.global_step,
                        metrics)
        self.log(dict(metrics))
        self.accelerator.wait_for_everyone()
        return metrics

    def close(self) -> None:
        if self.bad_log is not None:
            self.bad_log.close()


class Stage1Callback(TrainerCallback):
    """Temperature clamp, ``stop_after_steps``, validation at epoch ends, ``train_log.jsonl`` rows."""

    def __init__(self, log_path: Path, *, stop_after: int | None, validate: bool, eval_every_epochs: int,
                 logit_scale_max: float):
        self.log_path = Path(log_path)
        self.stop_after, self.validate, self.every = stop_after, validate, eval_every_epochs
        self.max_log_scale = math.log(logit_scale_max)
        self.writer: JsonlWriter | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.writer is None:
            self.writer = JsonlWriter(self.log_path, key="row")

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        from accelerate.utils import extract_model_from_parallel

        with torch.no_grad():
            # A no-op on processes that hold none of this weight (ZeRO-3, FSDP): there only the
            # upper bound holds, through the clamp inside CxrClip.scale().
            extract_model_from_parallel(model).logit_scale.clamp_(0.0, self.max_log_scale)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        if self.stop_after is not None and state.global_step >= self.stop_after:
            control.should_training_stop = control.should_save = control.should_log = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        whole = val_tag(state.epoch or 0) != "val:final"
        at_end = state.global_step >= state.max_steps
        if self.validate and ((whole and round(state.epoch) % self.every == 0) or at_end):
            control.should_evaluate = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None or not logs:
            return
        step, epoch = state.global_step, state.epoch or 0.0
        if "loss" in logs:
            row = {"row": f"train:{step}", "step": step, "epoch": max(0, math.ceil(epoch) - 1),
                   "loss": round(float(logs["loss"]), 6), "lr": logs.get("learning_rate")}
            row.update({k: logs[k] for k in ("logit_scale", "temperature", "acc_i2t", "acc_t2i", "global_batch",
                                             "samples_per_s", "grad_norm") if k in logs})
        elif "val_n" in logs:
            row = {**logs, "row": val_tag(epoch), "step": step, "epoch": math.floor(epoch)}
        else:
            return
        if row["row"] not in self.writer.done:
            self.writer.write(row)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
