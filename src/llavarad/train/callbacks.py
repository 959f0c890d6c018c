"""Trainer callbacks every stage attaches: the JSONL training log, the config snapshot written
into each checkpoint, and the stop on a non-finite loss."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llavarad.errors import NonFiniteError
from llavarad.train.settings import CONFIG_FILE

__all__ = ["ConfigSnapshotCallback", "JsonlLogCallback", "NonFiniteLossCallback"]


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


class NonFiniteLossCallback(TrainerCallback):
    """Stop the run with :class:`~llavarad.errors.NonFiniteError` when a logged loss or gradient norm is NaN/inf.

    The Trainer's ``logging_nan_inf_filter`` hides a NaN training loss behind the running mean, but
    the gradient norm it logs is the step's own, so a diverged run is caught at the next log either way.
    Going on would only save NaN weights (which :func:`llavarad.model.build.save_model` refuses anyway).
    """

    KEYS = ("loss", "grad_norm", "eval_loss", "train_loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.KEYS:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteError(
                    f"training diverged: {key} is {value} at step {state.global_step}; lower learning_rate, "
                    f"check the data, or resume from an earlier checkpoint in {args.output_dir}")
