"""LoRA for stage 3 with peft: attach adapters to the language model, merge them, export.

Adapters go on the LM's attention and MLP projections only (a regex that requires
``language_model`` in the module path keeps the vision tower untouched); the projector is trained
in full through ``modules_to_save``. Exports are either a merged, ordinary model folder (default:
loads anywhere without peft) or the adapter folder plus a pointer to its base model, which
:func:`merge_lora` (CLI ``llavarad merge-lora``) turns into a merged folder later.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from llavarad.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["ADAPTER_META", "LoraSettings", "apply_lora", "base_fingerprint", "merge_lora", "save_adapter"]

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


def base_fingerprint(model_dir: str | Path) -> str:
    """A cheap content fingerprint of a model folder: its config, and each weight file's size, header
    and 16 sampled 64 KiB blocks. Two different trainings of one architecture differ in it; reading a
    7B folder takes milliseconds (the whole file is never hashed)."""
    folder = Path(model_dir)
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes()[: 1 << 20])
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            for i in range(16):
                fh.seek(size * i // 16)
                digest.update(fh.read(1 << 16))
    return digest.hexdigest()[:32]


def save_adapter(peft_model, out_dir: str | Path, *, base_model: str | Path, train_config: dict | None) -> Path:
    """Write the adapter (LoRA + projector weights, safetensors) and its base model's path and fingerprint."""
    from peft.utils import get_peft_model_state_dict

    from llavarad.model.finite import check_finite_weights

    check_finite_weights(get_peft_model_state_dict(peft_model).items(), f"the LoRA adapter to {out_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    meta = {"base_model": str(Path(base_model).resolve()), "base_fingerprint": base_fingerprint(base_model),
            "train_config": train_config}
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _read_adapter(adapter_dir: Path) -> tuple[dict, dict, dict]:
    """``(adapter_config, adapter weights, llavarad meta)`` of an adapter folder, each checked."""
    from llavarad.io.text import read_text
    from llavarad.model._convert_lm import load_adapter_weights, lora_config_problems

    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir} has no adapter_config.json: pass a folder written with export=adapter")
    config, meta = {}, {}
    for name in ("adapter_config.json", ADAPTER_META):
        if (adapter_dir / name).is_file():
            try:
                value = json.loads(read_text(adapter_dir / name, limit=4 << 20))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise InputError(f"{adapter_dir / name}: not valid JSON ({exc}); re-export the adapter") from exc
            if not isinstance(value, dict):
                raise InputError(f"{adapter_dir / name}: expected a JSON object, got {type(value).__name__}")
            config, meta = (value, meta) if name == "adapter_config.json" else (config, value)
    problems = lora_config_problems(config)
    if problems:
        raise InputError(f"{adapter_dir / 'adapter_config.json'}: " + "; ".join(problems))
    weights = next((adapter_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                    if (adapter_dir / n).is_file()), None)
    if weights is None:
        raise InputError(f"{adapter_dir} has no adapter_model.safetensors (or .bin): the adapter's weights are "
                         "missing; re-export it with export=adapter")
    return config, load_adapter_weights(weights), meta


def _resolve_base(adapter_dir: Path, meta: dict, base_model: str | Path | None) -> Path:
    """The base folder to merge into: ``base_model`` or the recorded one, checked against the recorded fingerprint."""
    recorded = meta.get("base_model")
    if base_model is None and not isinstance(recorded, str):
        raise InputError(f"{adapter_dir}: no {ADAPTER_META} naming the base model; pass --base DIR")
    base = Path(base_model) if base_model is not None else Path(recorded)
    if not base.is_dir():
        raise InputError(f"base model {base} (recorded in {adapter_dir / ADAPTER_META}) does not exist; "
                         "pass --base DIR" if base_model is None else f"--base {base} is not a folder")
    want = meta.get("base_fingerprint")
    if want is None:
        logger.warning("%s records no base fingerprint (an older export); cannot check that %s is the base it "
                       "was trained on", adapter_dir, base)
    elif base_fingerprint(base) != want:
        raise InputError(f"{base} is not the model this adapter was trained on (recorded: {recorded}, fingerprint "
                         f"{want}); merging would give a broken model. Pass the original base with --base")
    return base


def _check_keys(peft_model, weights: dict, adapter_dir: Path) -> None:
    """Every tensor of the adapter file must land in the model, and every adapter slot must be filled."""
    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model))
    given = set(weights)
    unexpected, missing = sorted(given - expected), sorted(expected - given)
    if unexpected or missing:
        parts = [f"{len(unexpected)} key(s) fit no module of the base ({', '.join(unexpected[:4])})"] if unexpected else []
        parts += [f"{len(missing)} adapter weight(s) are missing ({', '.join(missing[:4])})"] if missing else []
        raise InputError(f"{adapter_dir}: the adapter does not match the base model: {'; '.join(parts)}")


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, *, base_model: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """Merge an exported adapter into its base model and write a plain llavarad model folder.

    ``base_model`` defaults to the folder recorded in the adapter's ``llavarad_adapter.json``; a
    base whose fingerprint differs from the recorded one is refused, as is an adapter whose keys
    or shapes do not match the base, a damaged weight file or config, and NaN/inf weights. ``out_dir``
    may not be the adapter or the base (or hold them), nor a non-empty folder unless ``overwrite``.
    """
    from peft import PeftModel

    from llavarad.io.outputs import check_output
    from llavarad.model.build import load_model, save_model

    adapter_dir = Path(adapter_dir)
    _config, weights, meta = _read_adapter(adapter_dir)
    base = _resolve_base(adapter_dir, meta, base_model)
    check_output(out_dir, [adapter_dir, base], kind="dir", overwrite=overwrite)
    bundle = load_model(base, device="cpu", dtype="float32")
    try:
        peft_model = PeftModel.from_pretrained(bundle.model, adapter_dir)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. "size mismatch for ...lora_A..."
        raise InputError(f"{adapter_dir}: the adapter does not fit the base model {base} "
                         f"({str(exc).splitlines()[0][:300]}...)") from exc
    _check_keys(peft_model, weights, adapter_dir)
    bundle.model = peft_model.merge_and_unload()
    bundle.model.eval()
    bundle.meta["prompt_format"] = "v1"
    save_model(bundle, out_dir, train_config=meta.get("train_config"))
    logger.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return Path(out_dir)
