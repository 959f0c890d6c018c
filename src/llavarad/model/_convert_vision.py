"""The released image encoder: an open_clip checkpoint's timm ViT trunk -> transformers ``Dinov2Model``.

LLaVA-Rad's encoder (BiomedCLIP-CXR 518) is open_clip's ``TimmModel`` around timm's
``vit_base_patch14_dinov2``; LLaVA-Rad feeds the projector the output of the second-to-last block
(no final norm, CLS dropped). Renamed into ``Dinov2Model`` (fused qkv split into q/k/v, LayerScale
``gamma`` -> ``lambda1``) the same weights give the same block outputs as ``hidden_states``.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from llavarad.errors import LlavaradError

logger = logging.getLogger(__name__)

#: The vision tower file of the release (microsoft/llava-rad); one place for convert and _convert_clip.
VISION_FILE = "biomedclipcxr_518_checkpoint.pt"

__all__ = ["VISION_FILE", "ConversionError", "load_torch_file", "split_trunk", "timm_trunk_to_dinov2"]

#: Prefixes under which open_clip checkpoints keep the vision trunk (DDP adds ``module.``).
TRUNK_PREFIXES = ("module.visual.trunk.", "visual.trunk.")

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
_TOP_MAP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


class ConversionError(LlavaradError, ValueError):
    """Release files that are missing, malformed or do not fit together (the message says which)."""


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (never arbitrary pickles), memory-mapped when possible."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc).lower():
            raise ConversionError(f"{path}: cannot be read by torch.load ({exc})") from exc
        # legacy (non-zip) torch.save format cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        raise ConversionError(f"{path}: refused by torch.load(weights_only=True) ({exc}); only tensors and plain "
                              "containers are allowed in weight files") from exc
    except (OSError, ValueError, EOFError) as exc:  # a truncated zip fails inside the reader (EINVAL)
        raise ConversionError(f"{path}: truncated or damaged weight file ({exc}); re-copy it") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ConversionError(f"{path}: cannot be read by torch.load(weights_only=True) ({exc})") from exc


def split_trunk(checkpoint: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    """The trunk's tensors (prefix removed) and the names of the other (ignored) checkpoint keys."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{source}: expected an open_clip checkpoint (a dict with 'state_dict'), "
                              f"got {type(checkpoint).__name__}")
    trunk: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in state.items():
        prefix = next((p for p in TRUNK_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            ignored.append(key)
        else:
            trunk[key[len(prefix):]] = value
    if not trunk:
        sample = ", ".join(list(state)[:5])
        raise ConversionError(f"{source}: no keys under {' or '.join(TRUNK_PREFIXES)} (found e.g. {sample}); "
                              "is this the biomedclipcxr_518_checkpoint.pt of microsoft/llava-rad?")
    return trunk, ignored


def _need(trunk: dict[str, Any], key: str, source: str):
    if key not in trunk:
        raise ConversionError(f"{source}: trunk key {key!r} is missing; the file is not a timm ViT trunk")
    return trunk[key]


def _rename_block(trunk: dict[str, Any], i: int, hidden: int, has_ls: bool, out: dict[str, Any], used: set[str],
                  source: str) -> None:
    """Block ``i`` of the timm trunk into ``out`` under Dinov2 names (qkv split in row order q, k, v)."""
    import torch

    base = f"encoder.layer.{i}."
    qkv_w = _need(trunk, f"blocks.{i}.attn.qkv.weight", source)
    if tuple(qkv_w.shape) != (3 * hidden, hidden):
        raise ConversionError(f"{source}: blocks.{i}.attn.qkv.weight is {tuple(qkv_w.shape)}, "
                              f"expected {(3 * hidden, hidden)}")
    for name, part in zip(("q_proj", "k_proj", "v_proj"), qkv_w.chunk(3, dim=0), strict=True):
        out[base + f"attention.{name}.weight"] = part.clone()
    used.add(f"blocks.{i}.attn.qkv.weight")
    qkv_b = trunk.get(f"blocks.{i}.attn.qkv.bias")
    if qkv_b is not None:
        for name, part in zip(("q_proj", "k_proj", "v_proj"), qkv_b.chunk(3, dim=0), strict=True):
            out[base + f"attention.{name}.bias"] = part.clone()
        used.add(f"blocks.{i}.attn.qkv.bias")
    for src, dst in _BLOCK_MAP.items():
        key = f"blocks.{i}.{src}"
        if key in trunk:
            out[base + dst] = trunk[key]
            used.add(key)
        elif src.startswith("ls") and not has_ls:
            out[base + dst] = torch.ones(hidden, dtype=qkv_w.dtype)  # no LayerScale == scale of 1
        else:
            raise ConversionError(f"{source}: trunk key {key!r} is missing")


def timm_trunk_to_dinov2(trunk: dict[str, Any], *, num_attention_heads: int | None = None,
                         layer_norm_eps: float = 1e-6, source: str = "vision checkpoint") -> tuple[dict[str, Any], dict[str, Any]]:
    """Rename a timm DINOv2-style ViT state dict into ``Dinov2Model`` keys.

    Returns ``(state_dict, config_kwargs)`` for ``Dinov2Config(**config_kwargs)``. Every trunk key
    must be consumed: unknown keys (e.g. register tokens, a pre-norm) raise :class:`ConversionError`
    listing them. ``qkv.weight`` ``(3*D, D)`` is split in row order q, k, v as timm's attention does.
    ``num_attention_heads`` cannot be read from weights; it defaults to ``hidden / 64`` (ViT-B: 12).
    """
    import torch

    def need(key: str):
        return _need(trunk, key, source)

    cls = need("cls_token")
    pos = need("pos_embed")
    patch_w = need("patch_embed.proj.weight")
    hidden = int(cls.shape[-1])
    if tuple(cls.shape) != (1, 1, hidden) or pos.ndim != 3 or pos.shape[-1] != hidden:
        raise ConversionError(f"{source}: cls_token {tuple(cls.shape)} / pos_embed {tuple(pos.shape)} are not "
                              f"(1, 1, D) / (1, 1 + grid^2, D)")
    patch = int(patch_w.shape[-1])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid * grid + 1 != int(pos.shape[1]):
        raise ConversionError(f"{source}: pos_embed has {pos.shape[1]} positions, expected 1 (CLS) + grid^2; "
                              "register tokens or a non-square grid are not supported")
    layers = sorted({int(m.group(1)) for k in trunk if (m := _BLOCK.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"{source}: transformer blocks {layers[:5]}... are not numbered 0..N-1")
    heads = num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ConversionError(f"{source}: hidden size {hidden} is not divisible by {heads} attention heads")
    fc1 = need("blocks.0.mlp.fc1.weight")

    out: dict[str, Any] = {}
    used: set[str] = set()
    for src, dst in _TOP_MAP.items():
        if src in trunk:
            out[dst] = trunk[src]
            used.add(src)
    for key in ("norm.weight", "norm.bias"):
        if key not in trunk:
            raise ConversionError(f"{source}: trunk key {key!r} (final norm) is missing")
    has_ls = "blocks.0.ls1.gamma" in trunk
    for i in layers:
        _rename_block(trunk, i, hidden, has_ls, out, used, source)
    # Dinov2 has a mask token for masked-image pretraining that timm's trunk lacks; LLaVA never masks.
    # Keeping it (zeros, as HF initialises it) makes the folder load wherever a stock Dinov2 config is
    # built from a preset (``init_from_parts``, stage 1).
    out["embeddings.mask_token"] = torch.zeros(1, hidden, dtype=cls.dtype)
    leftovers = sorted(set(trunk) - used)
    if leftovers:
        raise ConversionError(f"{source}: {len(leftovers)} trunk keys have no Dinov2 counterpart: "
                              f"{', '.join(leftovers[:10])}{' ...' if len(leftovers) > 10 else ''}")
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads,
        "mlp_ratio": int(fc1.shape[0]) / hidden if int(fc1.shape[0]) % hidden else int(fc1.shape[0]) // hidden,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_channels": int(patch_w.shape[1]),
        "qkv_bias": "blocks.0.attn.qkv.bias" in trunk,
        "layerscale_value": 1.0,
        "layer_norm_eps": layer_norm_eps,
        "hidden_act": "gelu",
        "use_swiglu_ffn": False,
        "use_mask_token": True,
        "drop_path_rate": 0.0,
    }
    return out, config
