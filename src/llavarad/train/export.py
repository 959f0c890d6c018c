"""What a training run writes at the end: the trained weights gathered in full on rank 0 (under
ZeRO-3 and FSDP too, through the accelerator's state-dict gathering) and ``train_summary.json``."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llavarad.train.distributed import is_main
from llavarad.train.settings import TrainConfig

__all__ = ["gather_trained_model", "plain_model_init", "trained_weights", "write_summary"]


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
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def trained_weights(trainer) -> tuple[Any, dict[str, Any] | None]:
    """``(unwrapped model, full state dict or None)``; every process must call it.

    Under DeepSpeed ZeRO-3 or FSDP the parameters are sharded and the accelerator gathers a full
    state dict (a collective; complete on rank 0). Otherwise the state dict is None: the unwrapped
    model already holds every weight.
    """
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    sharded = any(p.numel() == 0 for p in model.parameters()) or bool(getattr(trainer, "is_fsdp_enabled", False))
    return model, (trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None)


def gather_trained_model(trainer, rebuild):
    """The trained model with full weights on rank 0 (None on other ranks).

    When the weights are sharded (:func:`trained_weights`), ``rebuild()`` makes an unsharded CPU
    copy of the same architecture on rank 0 (outside ZeRO-3's partitioned init, see
    :func:`plain_model_init`) to load the gathered state dict into.
    """
    model, state = trained_weights(trainer)
    if not trainer.is_world_process_zero():
        return None
    if state is None:
        return model
    with plain_model_init(trainer):
        fresh = rebuild()
    fresh.load_state_dict(state, strict=True)
    return fresh


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
    if is_main():
        (Path(out_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
