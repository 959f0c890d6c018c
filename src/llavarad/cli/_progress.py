"""One progress style for every long step of the CLI: a rich bar with the step, done/total,
elapsed time, ETA and a status (the current loss while training), drawn on stderr.

:func:`progress_bar` is the bar; :class:`TrainerProgress` drives it from a Hugging Face
``Trainer`` (all three training stages), on the main process only; :func:`log_to_file` copies
every log record of a run into a file in its run folder (the bar shows the headline, the file
keeps everything).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["TrainerProgress", "log_to_file", "progress_bar"]


def progress_bar(*, disable: bool = False, transient: bool = False):
    """A ``rich.progress.Progress`` with the project's columns; tasks take a ``status`` field.

    Also turns off the tqdm bars of transformers and huggingface_hub (e.g. "Writing model
    shards"), so the terminal shows this one style.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(stderr=True), disable=disable, transient=transient)


class TrainerProgress(TrainerCallback):
    """Advance a :func:`progress_bar` task per optimizer step and show the last logged loss.

    One object can follow several runs in turn (the demo's three stages): each ``train()`` adds
    its own task, named ``label`` or the run folder's name, starting at the resumed step.
    """

    def __init__(self, bar=None, label: str | None = None):
        self.bar = bar
        self.label = label
        self.task = None
        self._own = bar is None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.bar is None:
            self.bar = progress_bar()
        if self._own:
            self.bar.start()
        name = self.label or Path(args.output_dir).name
        self.task = self.bar.add_task(name, total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if self.task is None or not logs:
            return
        parts = [f"{key} {logs[key]:.4g}" for key in ("loss", "eval_loss", "val_loss") if key in logs]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if parts:
            self.bar.update(self.task, status="  ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        if self.task is None:
            return
        self.bar.update(self.task, completed=state.global_step)
        self.task = None
        if self._own:
            self.bar.stop()
            self.bar = None


@contextmanager
def log_to_file(path: str | Path, level: int = logging.INFO) -> Iterator[Path]:
    """Copy log records into ``path`` for the block (appending, so a resumed run continues the
    same file); only on the main process (``RANK`` 0).

    The file gets llavarad's records from ``level`` up and the warnings of transformers and
    accelerate; the terminal keeps the threshold ``-v`` chose.
    """
    path = Path(path)
    if int(os.environ.get("RANK", "0")) != 0:
        yield path
        return
    from llavarad.cli._errors import SafeFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("llavarad")
    # the terminal's handlers keep the root threshold while llavarad's own level is lowered
    terminal = [(h, h.level) for h in root.handlers]
    for h, old in terminal:
        h.setLevel(max(old, root.getEffectiveLevel()))
    old_level = ours.level
    ours.setLevel(min(ours.getEffectiveLevel(), level))
    others = [logging.getLogger(name) for name in ("transformers", "accelerate")]
    for lg in [ours, *others]:
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg in [ours, *others]:
            lg.removeHandler(handler)
        ours.setLevel(old_level)
        for h, old in terminal:
            h.setLevel(old)
        handler.close()
