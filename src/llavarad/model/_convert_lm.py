"""The released language-model side: base Vicuna weights streamed shard by shard, the peft LoRA adapter
merged as ``W + scale * B @ A`` (scale = alpha / r, or alpha / sqrt(r) with rsLoRA), or re-keyed into
an adapter that applies to the converted ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad.model._convert_vision import ConversionError, load_torch_file

logger = logging.getLogger(__name__)

__all__ = ["LoraAdapter", "base_weight_files", "iter_base_weights", "load_lora", "strip_peft_prefix"]

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
#: Module names of the converted Llava model that a kept adapter may target (language model only).
LLAVA_LM_TARGET_REGEX = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


def strip_peft_prefix(key: str) -> str:
    """``base_model.model.model.layers.0...`` -> ``model.layers.0...`` (peft/LLaVA key prefixes)."""
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


@dataclass
class LoraAdapter:
    """A parsed LoRA adapter: per target module (LLaMA naming, e.g. ``model.layers.0.self_attn.q_proj``)
    the ``A`` ``(r, in)`` and ``B`` ``(out, r)`` matrices, and the scaling."""

    config: dict[str, Any]
    a: dict[str, Any] = field(default_factory=dict)
    b: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    def scale(self, module: str) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` for rsLoRA), with ``r`` read from the module's own ``A``."""
        r = int(self.a[module].shape[0])
        return self.alpha / (math.sqrt(r) if self.use_rslora else r)

    def merge_into(self, module: str, weight, block_rows: int = 1024, out_dtype=None):
        """``weight + scale * B @ A`` computed in float32, returned in ``out_dtype`` (default: ``weight``'s
        dtype); ``weight`` is ``(out, in)``. Rounding happens once, at the end, so asking float32 of a
        float16 base keeps the float32 sum. Works through blocks of rows so the float32 temporaries stay
        small (16 MiB for a 4096-wide 7B layer) instead of a full float32 copy of each matrix."""
        import torch

        a = self.a[module].float()
        b = self.b[module].float()
        scale = self.scale(module)
        out = torch.empty(weight.shape, dtype=out_dtype or weight.dtype)
        for start in range(0, weight.shape[0], block_rows):
            stop = min(start + block_rows, weight.shape[0])
            block = weight[start:stop].to(torch.float32, copy=True)
            block.addmm_(b[start:stop], a, alpha=scale)
            out[start:stop] = block
        return out

    def targets_name(self, module: str) -> bool:
        """Whether peft would put a LoRA layer on ``module`` given ``target_modules``."""
        targets = self.config.get("target_modules")
        if isinstance(targets, str):
            return re.fullmatch(targets, module) is not None
        names = list(targets or [])
        return any(module == t or module.endswith("." + t) for t in names)

    def target_names(self) -> list[str]:
        """The leaf names targeted (``q_proj`` ...), for a kept adapter's ``target_modules`` regex."""
        return sorted({m.rsplit(".", 1)[-1] for m in self.a})


def lora_config_problems(config: Any) -> list[str]:
    """What is wrong with a peft ``adapter_config.json`` for a LoRA (r, lora_alpha, dropout, targets); [] if nothing."""
    import math

    if not isinstance(config, dict):
        return [f"expected a JSON object, got {type(config).__name__}"]
    problems = []
    r, alpha = config.get("r"), config.get("lora_alpha")
    if "r" not in config or "lora_alpha" not in config:
        problems.append("r and lora_alpha are required")
    if "r" in config and (isinstance(r, bool) or not isinstance(r, int) or r <= 0):
        problems.append(f"r is {r!r}: must be a positive integer (e.g. 64)")
    if "lora_alpha" in config and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                   or not math.isfinite(alpha) or alpha <= 0):
        problems.append(f"lora_alpha is {alpha!r}: must be a positive number (e.g. 128)")
    dropout = config.get("lora_dropout", 0.0)
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        problems.append(f"lora_dropout is {dropout!r}: must be a number in [0, 1)")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        problems.append(f"target_modules is {targets!r}: must be a regex string or a list of module names")
    return problems


def load_adapter_weights(weights_path: Path) -> dict[str, Any]:
    """The tensors of ``adapter_model.safetensors`` / ``.bin``; a damaged file or non-tensor value is a ConversionError."""
    import torch

    if weights_path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConversionError(f"{weights_path}: unreadable safetensors file, truncated or damaged ({exc}); "
                                  "re-copy it") from exc
    else:
        state = load_torch_file(weights_path)
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{weights_path}: expected a dict of LoRA tensors")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ConversionError(f"{weights_path}: {len(odd)} value(s) are not tensors ({', '.join(map(str, odd[:5]))})")
    return state


def load_lora(config_path: Path, weights_path: Path) -> LoraAdapter:
    """Read and validate ``adapter_config.json`` + ``adapter_model.{bin,safetensors}``."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{config_path}: not readable JSON ({exc})") from exc
    problems = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    for key, ok, why in (("use_dora", False, "DoRA adapters are not supported"),
                         ("fan_in_fan_out", False, "fan_in_fan_out (Conv1D) adapters do not fit LLaMA"),
                         ("bias", "none", "LoRA bias terms are not supported")):
        if config.get(key, ok) not in (ok, None):
            problems.append(f"{key}={config.get(key)!r}: {why}")
    for key in ("alpha_pattern", "layers_to_transform", "modules_to_save"):
        if config.get(key):
            problems.append(f"{key}={config.get(key)!r} is not supported by the converter")
    problems += lora_config_problems(config)
    if problems:
        raise ConversionError(f"{config_path}: " + "; ".join(problems))
    state = load_adapter_weights(weights_path)
    adapter = LoraAdapter(config=config, source=str(weights_path))
    leftovers = []
    for key, tensor in state.items():
        m = _LORA_KEY.match(strip_peft_prefix(key))
        if not m:
            leftovers.append(key)
            continue
        (adapter.a if m["ab"] == "A" else adapter.b)[m["module"]] = tensor
    if leftovers:
        raise ConversionError(f"{weights_path}: {len(leftovers)} keys are not LoRA A/B weights: "
                              f"{', '.join(sorted(leftovers)[:8])}")
    unpaired = sorted(set(adapter.a) ^ set(adapter.b))
    if unpaired:
        raise ConversionError(f"{weights_path}: LoRA modules without both A and B: {', '.join(unpaired[:8])}")
    for module in adapter.a:
        a, b = adapter.a[module], adapter.b[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ConversionError(f"{weights_path}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                                  "are not (r, in) and (out, r)")
        if int(a.shape[0]) != int(config["r"]) and not config.get("rank_pattern"):
            raise ConversionError(f"{weights_path}: {module}: rank {a.shape[0]} differs from r={config['r']} in "
                                  f"{config_path.name}")
        if not adapter.targets_name(module):
            raise ConversionError(f"{weights_path}: {module} has LoRA weights but is not in target_modules "
                                  f"{config.get('target_modules')!r}")
    return adapter


def base_weight_files(base_dir: Path) -> list[Path]:
    """The weight shards of a HF causal-LM folder: safetensors preferred, else ``pytorch_model*.bin``."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(p for p in base_dir.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def iter_base_weights(base_dir: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, tensor)`` of the base model one shard at a time (safetensors lazily, .bin
    memory-mapped), so no second full copy of a 7B model is ever held."""
    files = base_weight_files(base_dir)
    if not files:
        raise ConversionError(f"{base_dir}: no *.safetensors or pytorch_model*.bin weights; pass the folder of "
                              "lmsys/vicuna-7b-v1.5")
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="pt") as fh:
                    for name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                        yield name, fh.get_tensor(name)
            except SafetensorError as exc:
                raise ConversionError(f"{path}: unreadable safetensors file ({exc})") from exc
        else:
            state = load_torch_file(path)
            if not isinstance(state, dict):
                raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
            yield from state.items()
            del state
