"""Process topology of a training run, read from the launcher's environment (``accelerate launch``,
``torchrun``), and the gradient accumulation that keeps the global batch fixed across topologies."""

from __future__ import annotations

import os

__all__ = ["grad_accumulation", "is_main", "world_size"]


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


def is_main() -> bool:
    """True on the process that writes files (global rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0
