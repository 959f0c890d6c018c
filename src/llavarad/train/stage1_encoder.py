"""Stage 1: CLIP-style pretraining of the image encoder on image-report pairs (BiomedCLIP-CXR).

One entry point, :func:`run_stage1`, driven by a :class:`Stage1Config` (YAML under ``configs/``).
The loop runs on accelerate, so the same code trains on one CPU, on one GPU and on many GPUs with
DDP, DeepSpeed or FSDP (pick with ``accelerate launch --config_file ...``). Negatives come from the
whole global batch (:func:`llavarad.model.clip.contrastive_loss`).

Output folder (``output_dir``)::

    image_encoder/  text_encoder/  heads.safetensors  clip_config.json    the CLIP folder
    checkpoints/step_<N>/       accelerate states: model, optimizer, scheduler, RNG, progress
    train_log.jsonl             loss, lr, temperature, ... per logged step (and validation rows)
    bad_samples.jsonl           images that could not be read (recorded, skipped, counted)
    skipped_records.jsonl       manifest records without findings/impression text
    stage1_config.yaml          the config of the run; summary.json at the end

``image_encoder/`` is a plain Dinov2 Hugging Face folder: the input of ``llavarad init`` (stage 2).
Killing the job loses at most ``save_every_steps`` steps; rerunning the same command resumes
exactly (same data order, same RNG, same optimizer and scheduler state).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.config import config_to_dict, save_config
from llavarad.errors import LlavaradError
from llavarad.io.manifest import SPLITS, JsonlWriter
from llavarad.model.presets import ImagePool
from llavarad.train._stage1_data import (  # noqa: F401 - re-exported
    Collator,
    EpochSampler,
    Pair,
    PairDataset,
    load_pairs,
    read_image,
    record_text,
)

logger = logging.getLogger(__name__)

__all__ = ["Stage1Config", "Stage1Error", "load_pairs", "read_image", "record_text", "run_stage1"]

_LOG_FILE = "train_log.jsonl"
_CKPT_DIR = "checkpoints"
_DONE_MARK = "COMPLETE"


class Stage1Error(LlavaradError, RuntimeError):
    """A stage-1 run that cannot start or continue; the message says what to change."""


@dataclass
class Stage1Config:
    """Settings of a stage-1 run. Paths may be relative to the working directory.

    Model: the image tower comes from ``vision_init`` (a Dinov2 folder) or, when null, is random with
    the ``preset``'s vision architecture; the text tower from ``text_init`` (a BERT folder with its
    tokenizer, BiomedBERT for real runs) or, when null, a random tiny BERT (``text_config``) with a
    WordPiece tokenizer trained on the manifest's text. ``image_size`` defaults to the preset's.

    Optimisation follows the BiomedCLIP/open_clip recipe: AdamW (0.9, 0.98, eps 1e-6), weight decay
    0.2 except on gains, biases, position embeddings and the temperature; linear warm-up then
    cosine decay. ``stop_after_steps`` ends this invocation early with a checkpoint (for
    time-sliced clusters); the next run resumes.
    """

    manifest: str
    output_dir: str
    val_manifest: str | None = None
    splits: list[str] = field(default_factory=lambda: ["train"])
    val_splits: list[str] = field(default_factory=lambda: ["validate", "test", "train"])
    preset: str = "tiny"
    image_size: int | None = None
    vision_init: str | None = None
    text_init: str | None = None
    text_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_vocab_size: int = 2000
    embed_dim: int = 512
    context_length: int = 256
    text_proj: Literal["mlp", "linear"] = "mlp"
    image_pool: ImagePool = "cls"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    epochs: int = 1
    max_steps: int | None = None
    stop_after_steps: int | None = None
    per_device_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    num_workers: int = 0
    seed: int = 0
    save_every_steps: int = 500
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    eval_every_epochs: int = 1
    resume: Literal["auto", "never"] = "auto"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not str(self.manifest).strip():
            problems.append("manifest: give the training manifest (JSONL)")
        if not str(self.output_dir).strip():
            problems.append("output_dir: give a folder for the CLIP folder and checkpoints")
        for name in ("splits", "val_splits"):
            bad = [s for s in getattr(self, name) if s not in SPLITS]
            if bad or not getattr(self, name):
                problems.append(f"{name}: {getattr(self, name)!r} must be a non-empty list of {', '.join(SPLITS)}")
        if self.vision_init is None:
            from llavarad.model.presets import PresetError, load_preset

            try:
                load_preset(self.preset)
            except PresetError as exc:
                problems.append(f"preset: {exc}")
        for name in ("epochs", "per_device_batch_size", "gradient_accumulation_steps", "embed_dim",
                     "save_every_steps", "keep_checkpoints", "log_every_steps", "eval_every_epochs",
                     "tokenizer_vocab_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: {getattr(self, name)} must be at least 1")
        for name in ("max_steps", "stop_after_steps", "warmup_steps", "image_size"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "warmup_steps" else 1):
                problems.append(f"{name}: {value} must be positive (or null)")
        if self.num_workers < 0:
            problems.append(f"num_workers: {self.num_workers} must be >= 0")
        if self.lr <= 0:
            problems.append(f"lr: {self.lr} must be positive (BiomedCLIP: 5e-4)")
        if self.weight_decay < 0:
            problems.append(f"weight_decay: {self.weight_decay} must be >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")
        if not (0.0 < self.adam_beta1 < 1.0 and 0.0 < self.adam_beta2 < 1.0 and self.adam_eps > 0):
            problems.append(f"adam betas ({self.adam_beta1}, {self.adam_beta2}) must be in (0, 1) and adam_eps > 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            problems.append(f"max_grad_norm: {self.max_grad_norm} must be positive (or null for no clipping)")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            problems.append(f"crop_scale: {self.crop_scale} must be [low, high] with 0 < low <= high <= 1, e.g. [0.9, 1.0]")
        if self.context_length < 8:
            problems.append(f"context_length: {self.context_length} must be at least 8 (BiomedCLIP: 256)")
        if self.logit_scale_max <= 1.0:
            problems.append(f"logit_scale_max: {self.logit_scale_max} must exceed 1 (CLIP: 100)")
        if problems:
            raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

class TrainProgress:
    """Where the run is: saved inside every checkpoint (accelerate ``register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches_in_epoch = 0
        self.global_step = 0
        self.samples_seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "global_step": self.global_step,
                "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def _lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on gains, biases, position embeddings, CLS token, temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("logit_scale", "position_embeddings", "cls_token", "mask_token"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _mixed_precision(choice: str) -> str:
    import torch

    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not torch.cuda.is_available():
        raise Stage1Error("mixed_precision=fp16 needs a CUDA GPU: use mixed_precision=no (or bf16) on CPU")
    return choice


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint torn by a kill has no COMPLETE mark)."""
    root = out / _CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / _DONE_MARK).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    path = out / _CKPT_DIR / f"step_{step}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / _DONE_MARK).write_text(json.dumps({"step": step, "time": time.time()}) + "\n", encoding="utf-8")
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _validate(accelerator, model, pairs: list[Pair], image_processor, collate, batch_size: int,
              num_workers: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Validation metrics of ``pairs`` through the *prepared* model, on every process.

    Each process embeds every ``world``-th pair; all processes run the same number of forward
    passes (the short ones repeat a pair, dropped again after the gather), because under ZeRO-3
    and FSDP a forward pass gathers the sharded weights from every process, and DDP may sync
    buffers in it. Nothing reads the unwrapped model's weights, so the same code is right for one
    CPU, DDP, ZeRO-2/3 and FSDP. Returns the metrics (on every process) and the unreadable images.
    """
    import numpy as np
    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader, Subset

    from llavarad.evaluate.embedding import embedding_validation_metrics

    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(len(pairs) / world)
    mine = list(range(rank, len(pairs), world)) or [0]
    mine += [mine[0]] * (per_process - len(mine))  # pad: every process makes the same forward passes
    dataset = PairDataset(pairs, image_processor, augment=False, crop_scale=(1.0, 1.0), seed=0)
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate)
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
    local = [(ids, np.concatenate(img_rows) if img_rows else None, np.concatenate(txt_rows) if txt_rows else None,
              bad)]
    parts = gather_object(local) if world > 1 else local
    order = {p.id: i for i, p in enumerate(pairs)}
    rows: dict[str, tuple[Any, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    for part_ids, part_img, part_txt, part_bad in parts:
        for j, item_id in enumerate(part_ids):
            rows.setdefault(item_id, (part_img[j], part_txt[j]))
        for row in part_bad:
            failures.setdefault(row["id"], row)
    kept = sorted(rows, key=order.__getitem__)
    dim = int(img_rows[0].shape[1]) if img_rows else 0
    image = np.stack([rows[k][0] for k in kept]) if kept else np.zeros((0, dim), np.float32)
    text = np.stack([rows[k][1] for k in kept]) if kept else np.zeros((0, dim), np.float32)
    metrics = embedding_validation_metrics(image, text, scale, n_failed=len(failures))
    return metrics, sorted(failures.values(), key=lambda r: order[r["id"]])


def _run_tokenizer(cfg: Stage1Config, corpus: list[str], accelerator):
    """The tokenizer of a run whose text tower is random: trained once on the main process, saved
    under ``checkpoints/tokenizer`` and loaded from there by every process and every resumed run
    (WordPiece training does not fix the ids of equally frequent pieces, so retraining could
    renumber the vocabulary under the checkpointed embeddings)."""
    from transformers import AutoTokenizer

    from llavarad.model.clip import build_wordpiece_tokenizer

    tok_dir = Path(cfg.output_dir) / _CKPT_DIR / "tokenizer"
    if accelerator.is_main_process and not (tok_dir / "tokenizer.json").is_file():
        build_wordpiece_tokenizer(corpus, cfg.tokenizer_vocab_size, cfg.context_length).save_pretrained(tok_dir)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(tok_dir)


def _build_model(cfg: Stage1Config, corpus: list[str], tokenizer=None):
    from llavarad.model.clip import init_clip
    from llavarad.model.presets import load_preset

    vision_config = None
    image_size = cfg.image_size
    if cfg.vision_init is None or image_size is None:
        preset = load_preset(cfg.preset)
        vision_config = preset.vision
        image_size = image_size or preset.image_size
    return init_clip(image_size=image_size, vision_init=cfg.vision_init, vision_config=vision_config,
                     text_init=cfg.text_init, text_config=cfg.text_config or None, tokenizer=tokenizer, corpus=corpus,
                     tokenizer_vocab_size=cfg.tokenizer_vocab_size, embed_dim=cfg.embed_dim,
                     context_length=cfg.context_length, text_proj=cfg.text_proj,
                     image_pool=cfg.image_pool, logit_scale_init=cfg.logit_scale_init,
                     logit_scale_max=cfg.logit_scale_max, seed=cfg.seed)


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def run_stage1(cfg: Stage1Config, *, progress: Any = None) -> Path:
    """Train the dual encoder and write the CLIP folder at ``cfg.output_dir``; return that path.

    Resumes from the newest complete checkpoint when ``cfg.resume == "auto"``. ``progress`` is an
    optional callable ``progress(step, total_steps, stats)`` called after each optimizer step on
    the main process (the CLI draws a progress bar with it).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from torch.utils.data import DataLoader

    from llavarad.model.clip import contrastive_loss, save_clip

    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    main = accelerator.is_main_process
    existing = _checkpoints(out)
    if existing and cfg.resume == "never":
        raise Stage1Error(f"{out} already holds checkpoints ({existing[-1].name}); use resume=auto to continue "
                          "that run or choose a new output_dir")
    set_seed(cfg.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "stage1_config.yaml")

    pairs, skipped = load_pairs(cfg.manifest, cfg.splits)
    if skipped and main:
        logger.warning("%d of %d records in %s have no findings or impression (or a duplicate id) and are left out; "
                       "see %s", len(skipped), len(skipped) + len(pairs), cfg.manifest, out / "skipped_records.jsonl")
        if main:
            with JsonlWriter(out / "skipped_records.jsonl", resume=False) as w:
                for row in skipped:
                    w.write(row)
    global_batch = cfg.per_device_batch_size * accelerator.num_processes
    if len(pairs) < global_batch:
        raise Stage1Error(f"{cfg.manifest}: {len(pairs)} usable pairs in splits {cfg.splits}, fewer than one global batch "
                          f"({global_batch} = per_device_batch_size x {accelerator.num_processes} processes); "
                          "lower per_device_batch_size or add data")
    val_pairs: list[Pair] = []
    if cfg.val_manifest:
        val_pairs, val_skipped = load_pairs(cfg.val_manifest, cfg.val_splits)
        if val_skipped and main:
            logger.warning("%d validation records have no text and are left out", len(val_skipped))

    torch.manual_seed(cfg.seed)
    corpus = [p.text for p in pairs]
    tokenizer = _run_tokenizer(cfg, corpus, accelerator) if cfg.text_init is None else None
    model = _build_model(cfg, corpus, tokenizer)
    if main:
        logger.info("stage 1: %d pairs; image tower %s (%.1fM params), text tower %s (%.1fM params)", len(pairs),
                    model.config.extra["init"]["vision"], sum(p.numel() for p in model.vision.parameters()) / 1e6,
                    model.config.extra["init"]["text"], sum(p.numel() for p in model.text.parameters()) / 1e6)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    tokenizer, image_processor = model.tokenizer, model.image_processor

    dataset = PairDataset(pairs, image_processor, augment=cfg.augment, crop_scale=tuple(cfg.crop_scale), seed=cfg.seed)
    sampler = EpochSampler(len(pairs), cfg.seed)
    # drop_last: the contrastive loss needs full global batches; the pairs left over differ per epoch
    # (the order is reshuffled), and their number is logged below.
    collate = Collator(tokenizer, cfg.context_length, model.config.image_size)
    loader = DataLoader(dataset, batch_size=cfg.per_device_batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, collate_fn=collate)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total_steps))
    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step
    # it once per process), and checkpointed with the rest.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                                                  _lr_lambda(warmup, total_steps, cfg.lr_schedule, cfg.min_lr_ratio))
    state = TrainProgress()
    accelerator.register_for_checkpointing(scheduler, state)
    if existing and cfg.resume == "auto":
        accelerator.load_state(str(existing[-1]))
        if main:
            logger.info("resumed from %s (step %d, epoch %d, batch %d)", existing[-1], state.global_step,
                        state.epoch, state.batches_in_epoch)
    dropped = len(pairs) - batches_per_epoch * global_batch
    if main:
        logger.info("%d optimizer steps (%d per epoch, %d epochs), global batch %d, warm-up %d; %d pairs per epoch "
                    "fall outside full global batches", total_steps, steps_per_epoch, epochs, global_batch, warmup,
                    dropped)

    log = JsonlWriter(out / _LOG_FILE, key="row") if main else None
    bad_log = JsonlWriter(out / "bad_samples.jsonl") if main else None
    unwrapped = accelerator.unwrap_model(model)
    max_log_scale = math.log(cfg.logit_scale_max)
    n_bad = n_truncated = 0
    stop_at = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    t_start, samples_at_start = time.perf_counter(), state.samples_seen
    last_val_step = -1

    def validate(tag: str) -> None:
        # every process takes part (see _validate); only the main one writes the row
        nonlocal last_val_step
        metrics, failures = _validate(accelerator, model, val_pairs, image_processor, collate,
                                      cfg.per_device_batch_size, cfg.num_workers)
        if main:
            for row in failures:
                logger.warning("validation sample %s: unreadable image, left out (%s)", row["id"], row["error"])
            logger.info("validation (%s, step %d): %s", tag, state.global_step, metrics)
            row = {"row": tag, "step": state.global_step, "epoch": state.epoch, **metrics}
            if tag not in log.done:
                log.write(row)
        last_val_step = state.global_step
        accelerator.wait_for_everyone()

    try:
        while state.global_step < stop_at:
            epoch = state.epoch
            sampler.epoch = epoch
            dataset.epoch = epoch
            epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
            model.train()
            for batch in epoch_loader:
                bad = batch["bad"]
                if accelerator.num_processes > 1:
                    bad = gather_object(bad)
                if bad and main:
                    for row in bad:
                        if row["id"] not in bad_log.done:
                            logger.warning("sample %s: unreadable image, skipped (%s)", row["id"], row["error"])
                            bad_log.write({**row, "epoch": epoch})
                            n_bad += 1
                n_truncated += batch["n_truncated"]
                with accelerator.accumulate(model):
                    img, txt, scale = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
                    loss, stats = contrastive_loss(img, txt, scale)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                state.samples_seen += int(stats["global_batch"])
                if not accelerator.sync_gradients:
                    continue
                step_lr = scheduler.get_last_lr()[0]  # the lr this step was taken with
                scheduler.step()
                with torch.no_grad():
                    # A no-op on processes that do not hold this weight (ZeRO-3, FSDP): there only
                    # the upper bound holds, through the clamp inside CxrClip.scale().
                    unwrapped.logit_scale.clamp_(0.0, max_log_scale)
                state.global_step += 1
                step = state.global_step
                row = None
                if step % cfg.log_every_steps == 0 or step == stop_at or step == 1:
                    mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
                    elapsed = time.perf_counter() - t_start
                    row = {"row": f"train:{step}", "step": step, "epoch": epoch, "loss": round(mean_loss, 6),
                           # from the forward's output, not the weight: right when weights are sharded
                           "lr": step_lr, "logit_scale": math.log(float(scale.detach().float())),
                           "temperature": 1.0 / float(scale.detach().float()), "acc_i2t": stats["acc_i2t"],
                           "acc_t2i": stats["acc_t2i"], "global_batch": int(stats["global_batch"]),
                           "samples_per_s": round((state.samples_seen - samples_at_start) / max(elapsed, 1e-9), 3)}
                    if cfg.max_grad_norm is not None and grad_norm is not None:  # DeepSpeed may give None
                        row["grad_norm"] = float(grad_norm)
                    if main and row["row"] not in log.done:
                        log.write(row)
                if progress is not None and main:
                    progress(step, total_steps, row)
                if step % cfg.save_every_steps == 0 and step < stop_at:
                    _save_checkpoint(accelerator, out, step, cfg.keep_checkpoints)
                if step >= stop_at:
                    break
            if state.batches_in_epoch >= batches_per_epoch:  # the epoch ran to its end
                state.epoch += 1
                state.batches_in_epoch = 0
                if val_pairs and (state.epoch % cfg.eval_every_epochs == 0 or state.global_step >= total_steps):
                    validate(f"val:{state.epoch}")
            if state.global_step >= stop_at:
                break
        if val_pairs and state.global_step >= total_steps and last_val_step != state.global_step:
            validate("val:final")  # training ended mid-epoch
        _save_checkpoint(accelerator, out, state.global_step, cfg.keep_checkpoints)
    finally:
        if log is not None:
            log.close()
        if bad_log is not None:
            bad_log.close()

    finished = state.global_step >= total_steps
    # Every process calls this: under ZeRO-3 and FSDP it gathers the sharded weights to the main one.
    full_state = accelerator.get_state_dict(model)
    if main:
        unwrapped.eval()
        save_clip(unwrapped, out, train_config=config_to_dict(cfg), state_dict=full_state)
        summary = {"finished": finished, "global_step": state.global_step, "total_steps": total_steps,
                   "epochs_done": state.epoch, "pairs": len(pairs), "skipped_records": len(skipped),
                   "bad_samples_this_run": n_bad, "truncated_texts_this_run": n_truncated,
                   "pairs_outside_full_batches_per_epoch": dropped, "global_batch": global_batch,
                   "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                   "seconds_this_run": round(time.perf_counter() - t_start, 2)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if n_truncated:
            logger.warning("%d report texts were longer than context_length=%d tokens and were truncated",
                           n_truncated, cfg.context_length)
        if not finished:
            logger.info("stopped at step %d of %d (stop_after_steps); rerun the same command to continue",
                        state.global_step, total_steps)
    accelerator.wait_for_everyone()
    return out
