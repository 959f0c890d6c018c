"""LoRA for stage 3 with peft: attach adapters to the language model, merge them, export.

Adapters go on the LM's attention and MLP projections only (a regex that requires
``language_model`` in the module path keeps the vision tower untouched); the projector is trained
in full through ``modules_to_save``. Exports are either a merged, ordinary model folder (default:
loads anywhere without peft) or the adapter folder plus a pointer to its base model, which
:func:`merge_lora` (CLI ``llavarad merge-lora``) turns into a merged folder later.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["ADAPTER_META", "LoraSettings", "apply_lora", "merge_lora", "save_adapter"]

#: Written next to an exported adapter: which base model folder it belongs to, and the run config.
ADAPTER_META = "llavarad_adapter.json"

_LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA hyperparameters (paper: r=64, alpha=128, dropout 0.05 on q/k/v/o/gate/up/down)."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(_LM_PROJECTIONS))

    def __post_init__(self) -> None:
        problems = []
        if self.r <= 0 or self.alpha <= 0:
            problems.append(f"lora.r and lora.alpha must be > 0, got r={self.r}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [m for m in self.target_modules if m not in _LM_PROJECTIONS]
        if bad or not self.target_modules:
            problems.append(f"lora.target_modules {bad or '[]'}: choose from {', '.join(_LM_PROJECTIONS)}")
        if problems:
            raise ValueError("; ".join(problems))

    def target_regex(self) -> str:
        """A peft ``target_modules`` regex matching the chosen projections inside the LM only."""
        return rf".*language_model.*\.({'|'.join(self.target_modules)})$"


def apply_lora(model, settings: LoraSettings, *, train_vision_tower: bool = False):
    """Wrap ``model`` (a ``LlavaForConditionalGeneration``) in a ``PeftModel``.

    Base weights are frozen, LoRA matrices trainable, the projector trained in full via
    ``modules_to_save``; the vision tower gets no adapter. ``train_vision_tower`` also trains the
    whole vision tower (``modules_to_save`` too): not the paper's recipe, which keeps it frozen.
    """
    from peft import LoraConfig, get_peft_model

    full = ["multi_modal_projector"] + (["vision_tower"] if train_vision_tower else [])
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_regex(), modules_to_save=full,
                        bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    n_adapted = sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A"))
    if n_adapted == 0:
        raise RuntimeError(f"LoRA matched no module for {settings.target_modules}; is this a LLaMA-family LM?")
    return peft_model


def save_adapter(peft_model, out_dir: str | Path, *, base_model: str | Path, train_config: dict | None) -> Path:
    """Write the adapter (LoRA + projector weights, safetensors) and its base-model pointer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    meta = {"base_model": str(Path(base_model).resolve()), "train_config": train_config}
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, *, base_model: str | Path | None = None) -> Path:
    """Merge an exported adapter into its base model and write a plain llavarad model folder.

    ``base_model`` defaults to the folder recorded in the adapter's ``llavarad_adapter.json``.
    """
    from peft import PeftModel

    from llavarad.model.build import load_model, save_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: pass a folder written with export=adapter")
    meta_path = adapter_dir / ADAPTER_META
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    base = Path(base_model) if base_model is not None else Path(meta.get("base_model", ""))
    if base_model is None and not meta.get("base_model"):
        raise ValueError(f"{adapter_dir}: no {ADAPTER_META} naming the base model; pass --base DIR")
    bundle = load_model(base, device="cpu", dtype="float32")
    peft_model = PeftModel.from_pretrained(bundle.model, adapter_dir)
    bundle.model = peft_model.merge_and_unload()
    bundle.model.eval()
    bundle.meta["prompt_format"] = "v1"
    save_model(bundle, out_dir, train_config=meta.get("train_config"))
    logger.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return Path(out_dir)
