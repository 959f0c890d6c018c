"""The run settings stages 2 and 3 share (:class:`TrainConfig`); each stage subclasses it with its
own defaults and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["CONFIG_FILE", "TrainConfig"]

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
