"""Named model architectures stored as data (``src/llavarad/presets/*.json``).

A preset fixes the vision tower (a ``Dinov2Config``), the language model (a ``LlamaConfig``), the
projector activation, the input resolution, which vision layer feeds the projector, the default
prompt format and where the tokenizer comes from. ``llava-rad-7b`` is the released model's shape;
``tiny`` and ``phantom`` are small random models for tests and the CPU demo.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from llavarad.errors import LlavaradError

__all__ = ["ImagePool", "ModelPreset", "PresetError", "list_presets", "load_preset"]

#: How a CLIP image tower turns its tokens into one embedding: the CLS token, or the mean or maximum
#: of the patch tokens (one definition for every config that offers the choice).
ImagePool = Literal["cls", "mean", "max"]

_REQUIRED_VISION = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size")
_REQUIRED_TEXT = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class PresetError(LlavaradError, ValueError):
    """A preset that is missing, malformed or inconsistent."""


@dataclass
class ModelPreset:
    """An architecture: vision tower + projector + language model, as plain config dicts."""

    name: str
    image_size: int
    vision: dict[str, Any]
    text: dict[str, Any]
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    prompt_format: Literal["plain", "v1"] = "v1"
    tokenizer: Literal["tiny", "pretrained"] = "tiny"
    max_length: int = 2048
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for key in _REQUIRED_VISION:
            if key not in self.vision:
                problems.append(f"vision.{key} is missing")
        for key in _REQUIRED_TEXT:
            if key not in self.text:
                problems.append(f"text.{key} is missing")
        patch = self.vision.get("patch_size", 14)
        if self.image_size <= 0 or self.image_size % patch:
            problems.append(f"image_size {self.image_size} must be a positive multiple of patch_size {patch}")
        if self.prompt_format not in ("plain", "v1"):
            problems.append(f"prompt_format {self.prompt_format!r} must be 'plain' or 'v1'")
        if self.tokenizer not in ("tiny", "pretrained"):
            problems.append(f"tokenizer {self.tokenizer!r} must be 'tiny' or 'pretrained'")
        if problems:
            raise PresetError(f"preset {self.name!r}: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        """Patches per side (37 for 518 px with 14 px patches)."""
        return self.image_size // int(self.vision.get("patch_size", 14))

    @property
    def num_image_tokens(self) -> int:
        """Image tokens fed to the language model: the patch grid, CLS dropped (1369 for 518/14)."""
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ModelPreset:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = [k for k in ("name", "image_size", "vision", "text") if k not in data]
        if missing:
            raise PresetError(f"{source}: preset is missing {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)


def _preset_dir() -> Path:
    return Path(str(resources.files("llavarad") / "presets"))


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in _preset_dir().glob("*.json"))


def load_preset(name_or_path: str | Path) -> ModelPreset:
    """Load a shipped preset by name, or any preset JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.is_file():
        path = _preset_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise PresetError(
            f"unknown preset {str(name_or_path)!r}: use one of {', '.join(list_presets())} or a path to a preset .json"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PresetError(f"{path}: not valid JSON ({exc})") from exc
    return ModelPreset.from_dict(data, str(path))
