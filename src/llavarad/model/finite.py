"""Refuse to save weights that hold NaN or infinity: a diverged run must not become a model folder.

Every writer of weights (:func:`llavarad.model.build.save_model`, ``convert``, ``merge-lora``, the
stage-3 adapter export) calls :func:`check_finite_weights` first, so a model that would generate ""
with exit code 0 is never written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llavarad.errors import NonFiniteError

__all__ = ["check_finite_weights"]


def check_finite_weights(tensors: Iterable[tuple[str, Any]], what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensors (of ``(name, tensor)``) with NaN or inf.

    Integer and boolean tensors are skipped; a tensor on any device is checked where it lives.
    """
    import torch

    bad: list[str] = []
    for name, tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"refusing to save {what}: {len(bad)} weight tensor(s) hold NaN or infinity ({shown}); "
                             "the training run diverged or the source weights are damaged")
