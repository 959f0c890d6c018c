"""Stage 1: CLIP-style pretraining of the image encoder on image-report pairs (BiomedCLIP-CXR).

One entry point, :func:`run_stage1`, driven by a :class:`Stage1Config` (YAML under ``configs/``).
The engine is the Hugging Face ``Trainer``, as for stages 2 and 3 (the contrastive loss, sampler and
validation are in :mod:`llavarad.train._stage1_engine`), so the same code trains on one CPU, on one
GPU and on many GPUs with DDP, DeepSpeed or FSDP (pick with ``accelerate launch --config_file ...``).
Negatives come from the whole global batch (:func:`llavarad.model.contrastive.contrastive_loss`).

Output folder (``output_dir``)::

    image_encoder/  text_encoder/  heads.safetensors  clip_config.json    the CLIP folder
    checkpoint-<N>/             Trainer checkpoints: model, optimizer, scheduler, RNG, trainer state
    run_tokenizer/              the WordPiece tokenizer of a run whose text tower is random
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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.config import config_to_dict, save_config
from llavarad.errors import LlavaradError
from llavarad.io.manifest import SPLITS, JsonlWriter
from llavarad.model.presets import ImagePool
from llavarad.train._stage1_data import (
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
_TOKENIZER_DIR = "run_tokenizer"


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


def _mixed_precision(choice: str) -> str:
    import torch

    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not torch.cuda.is_available():
        raise Stage1Error("mixed_precision=fp16 needs a CUDA GPU: use mixed_precision=no (or bf16) on CPU")
    return choice


def _training_arguments(cfg: Stage1Config, precision: str):
    """The run's ``TrainingArguments`` (creating them sets up the process group under a launcher)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(cfg.output_dir), per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_eps, optim="adamw_torch",
        max_grad_norm=cfg.max_grad_norm or 0.0, bf16=precision == "bf16", fp16=precision == "fp16",
        logging_steps=cfg.log_every_steps, logging_first_step=True, eval_strategy="no", save_strategy="steps",
        save_steps=cfg.save_every_steps, save_total_limit=cfg.keep_checkpoints, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers, dataloader_pin_memory=torch.cuda.is_available(),
        # the contrastive loss needs full global batches; the pairs left over differ per epoch
        dataloader_drop_last=True,
        remove_unused_columns=False, ddp_find_unused_parameters=False, report_to="none", disable_tqdm=True,
        # without a GPU say so up front: the launcher's process group (and so the world size that
        # DeepSpeed's `auto` batch sizes are filled from) is then set up for CPU processes
        use_cpu=not torch.cuda.is_available())


def _load_data(cfg: Stage1Config, out: Path, main: bool, global_batch: int) -> tuple[list[Pair], int, list[Pair]]:
    """Training pairs, the number of records without text (listed in ``skipped_records.jsonl``)
    and the validation pairs."""
    pairs, skipped = load_pairs(cfg.manifest, cfg.splits)
    if skipped and main:
        logger.warning("%d of %d records in %s have no findings or impression (or a duplicate id) and are left out; "
                       "see %s", len(skipped), len(skipped) + len(pairs), cfg.manifest, out / "skipped_records.jsonl")
        with JsonlWriter(out / "skipped_records.jsonl", resume=False) as w:
            for row in skipped:
                w.write(row)
    if len(pairs) < global_batch:
        raise Stage1Error(f"{cfg.manifest}: {len(pairs)} usable pairs in splits {cfg.splits}, fewer than one global "
                          f"batch ({global_batch} = per_device_batch_size x processes); lower "
                          "per_device_batch_size or add data")
    val_pairs: list[Pair] = []
    if cfg.val_manifest:
        val_pairs, val_skipped = load_pairs(cfg.val_manifest, cfg.val_splits)
        if val_skipped and main:
            logger.warning("%d validation records have no text and are left out", len(val_skipped))
    return pairs, len(skipped), val_pairs


def _run_tokenizer(cfg: Stage1Config, corpus: list[str], args):
    """The tokenizer of a run whose text tower is random: built once (by the first process of each
    node), saved under ``run_tokenizer/`` and loaded from there by every process and every resumed
    run, so the ids under the checkpointed embeddings never change."""
    from transformers import AutoTokenizer

    from llavarad.model.clip import build_wordpiece_tokenizer

    tok_dir = Path(cfg.output_dir) / _TOKENIZER_DIR
    with args.main_process_first(desc="stage-1 tokenizer"):
        if not (tok_dir / "tokenizer.json").is_file():
            build_wordpiece_tokenizer(corpus, cfg.tokenizer_vocab_size, cfg.context_length).save_pretrained(tok_dir)
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


def _make_trainer(cfg: Stage1Config, args, model, pairs: list[Pair], val_pairs: list[Pair], callbacks):
    from llavarad.train._stage1_engine import ContrastiveTrainer, Stage1Callback

    out = Path(cfg.output_dir)
    dataset = PairDataset(pairs, model.image_processor, augment=cfg.augment, crop_scale=tuple(cfg.crop_scale),
                          seed=cfg.seed)
    flow = Stage1Callback(out / _LOG_FILE, stop_after=cfg.stop_after_steps, validate=bool(val_pairs),
                          eval_every_epochs=cfg.eval_every_epochs, logit_scale_max=cfg.logit_scale_max)
    from llavarad.train.callbacks import NonFiniteLossCallback
    from llavarad.train.trainer import quiet

    return quiet(ContrastiveTrainer(
        model=model, args=args, train_dataset=dataset,
        data_collator=Collator(model.tokenizer, cfg.context_length, model.config.image_size),
        callbacks=[flow, NonFiniteLossCallback(), *callbacks], sampler=EpochSampler(len(pairs), cfg.seed), warmup_steps=cfg.warmup_steps,
        warmup_ratio=cfg.warmup_ratio, schedule=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio, val_pairs=val_pairs,
        image_processor=model.image_processor, bad_samples=out / "bad_samples.jsonl"))


def run_stage1(cfg: Stage1Config, *, callbacks: Sequence[Any] = ()) -> Path:
    """Train the dual encoder and write the CLIP folder at ``cfg.output_dir``; return that path.

    Resumes from the newest complete checkpoint when ``cfg.resume == "auto"``. ``callbacks``:
    extra ``transformers.TrainerCallback`` objects (the CLI's progress bar).
    """
    import torch

    from llavarad.model.clip import save_clip
    from llavarad.train.export import trained_weights
    from llavarad.train.trainer import last_complete_checkpoint, resolve_resume

    out = Path(cfg.output_dir)
    precision = _mixed_precision(cfg.mixed_precision)
    existing = last_complete_checkpoint(out)
    if existing and cfg.resume == "never":
        raise Stage1Error(f"{out} already holds checkpoints ({Path(existing).name}); use resume=auto to continue "
                          "that run or choose a new output_dir")
    if existing and cfg.resume == "auto" and _already_exported(out, existing):
        logger.info("stage 1: %s already holds the finished run (%s); nothing to do", out, Path(existing).name)
        return out
    args = _training_arguments(cfg, precision)
    main, global_batch = args.process_index == 0, cfg.per_device_batch_size * args.world_size
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "stage1_config.yaml")
    pairs, n_skipped, val_pairs = _load_data(cfg, out, main, global_batch)
    torch.manual_seed(cfg.seed)
    corpus = [p.text for p in pairs]
    model = _build_model(cfg, corpus, _run_tokenizer(cfg, corpus, args) if cfg.text_init is None else None)
    if main:
        logger.info("stage 1: %d pairs; image tower %s (%.1fM params), text tower %s (%.1fM params); global batch "
                    "%d, %d pairs per epoch outside full global batches", len(pairs),
                    model.config.extra["init"]["vision"], sum(p.numel() for p in model.vision.parameters()) / 1e6,
                    model.config.extra["init"]["text"], sum(p.numel() for p in model.text.parameters()) / 1e6,
                    global_batch, len(pairs) % global_batch)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainer = _make_trainer(cfg, args, model, pairs, val_pairs, callbacks)
    t_start, resume = time.perf_counter(), resolve_resume(cfg)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        trainer.close()
    clip, full_state = trained_weights(trainer)  # every process: gathers sharded weights (ZeRO-3, FSDP)
    if main:
        clip.eval()
        save_clip(clip, out, train_config=config_to_dict(cfg), state_dict=full_state)
        _write_summary(cfg, trainer, out, {
            "resumed_from": Path(resume).name if resume else None, "pairs": len(pairs), "skipped_records": n_skipped, "global_batch": global_batch,
            "pairs_outside_full_batches_per_epoch": len(pairs) % global_batch, "mixed_precision": precision,
            "seconds_this_run": round(time.perf_counter() - t_start, 2)})
    trainer.accelerator.wait_for_everyone()
    return out


def _already_exported(out: Path, checkpoint: str) -> bool:
    """True when ``checkpoint`` ended the run and the CLIP folder was written from it (the Trainer
    would otherwise take one more step when resumed from its final checkpoint)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    step = state.get("global_step", -1)
    return (step >= state.get("max_steps", step + 1) and summary.get("finished") is True
            and summary.get("global_step") == step and (out / "heads.safetensors").is_file())


def _write_summary(cfg: Stage1Config, trainer, out: Path, extra: dict[str, Any]) -> None:
    state = trainer.state
    finished = state.global_step >= state.max_steps
    summary = {"finished": finished, "global_step": state.global_step, "total_steps": state.max_steps,
               "epochs_done": math.floor(state.epoch or 0), "bad_samples_this_run": trainer.n_bad,
               "truncated_texts_this_run": trainer.n_truncated, "processes": trainer.accelerator.num_processes,
               **extra}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if trainer.n_truncated:
        logger.warning("%d report texts were longer than context_length=%d tokens and were truncated",
                       trainer.n_truncated, cfg.context_length)
    if not finished:
        logger.info("stopped at step %d of %d (stop_after_steps); rerun the same command to continue",
                    state.global_step, state.max_steps)
