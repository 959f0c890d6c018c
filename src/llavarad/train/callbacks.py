"""Trainer callbacks every stage attaches: the JSONL training log and the config snapshot written
into each checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llavarad.train.settings import CONFIG_FILE

__all__ = ["ConfigSnapshotCallback", "JsonlLogCallback"]


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
