"""Build, save and load LLaVA-Rad models as plain ``LlavaForConditionalGeneration`` folders.

A model folder is self-describing: HF Llava files (``config.json``, safetensors weights,
``processor_config.json``/image processor, tokenizer, chat template) plus ``llavarad.json`` with
the preset, prompt format, image token, training config and library versions. It loads with
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` in any tool;
:func:`load_model` never guesses anything from the folder's name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.errors import LlavaradError, SettingError
from llavarad.model.presets import ModelPreset, load_preset
from llavarad.model.processor import build_image_processor, build_processor, chat_template_for
from llavarad.model.tokenizer import add_image_token, build_tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "INFERENCE_DTYPE",
    "META_FILE",
    "ModelBundle",
    "ModelFolderError",
    "build_llava_config",
    "init_from_parts",
    "init_random",
    "load_model",
    "make_meta",
    "resolve_device_dtype",
    "save_model",
    "versions",
]

META_FILE = "llavarad.json"
FORMAT_VERSION = 1
#: Key of ``llavarad.json`` naming the dtype ``--dtype auto`` uses on a GPU ("float16" for a
#: converted release, as the release runs; absent for models trained here, which get bf16).
INFERENCE_DTYPE = "inference_dtype"


class ModelFolderError(LlavaradError, ValueError):
    """A model folder that is missing files or inconsistent."""


@dataclass
class ModelBundle:
    """A model with everything needed to feed it: tokenizer, image processor and metadata.

    ``meta`` is the content of ``llavarad.json``: ``preset`` (dict), ``prompt_format``,
    ``image_token``, ``image_token_id``, ``num_image_tokens``, ``train_config``, ``versions``.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    preset: ModelPreset
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def num_image_tokens(self) -> int:
        return self.preset.num_image_tokens

    @property
    def image_aspect_ratio(self) -> str:
        """'crop' (shortest side + centre crop) or 'pad' (pad to square first), as the model was trained."""
        return str(self.meta.get("image_aspect_ratio", "crop"))

    @property
    def prompt_format(self) -> str:
        return str(self.meta.get("prompt_format", self.preset.prompt_format))


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import platform

    import torch
    import transformers

    import llavarad

    return {"llavarad": llavarad.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def resolve_device_dtype(device: str = "auto", dtype: str = "auto", preferred: str | None = None):
    """Resolve ``device``/``dtype`` strings once; reject combinations that do not work.

    ``auto`` picks CUDA when present and fp32 on CPU. On a GPU it takes ``preferred`` (a folder's
    recorded ``inference_dtype``: "float16" for a converted release, which runs in fp16) when given,
    else bf16 where the GPU supports it (models trained here), else fp16.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SettingError(f"device {device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    choices = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}
    if preferred is not None and preferred not in ("float16", "bfloat16", "float32"):
        raise SettingError(f"recorded inference dtype {preferred!r} is not one of float16, bfloat16, float32")
    if dtype == "auto":
        if not device.startswith("cuda"):
            torch_dtype = torch.float32
        elif preferred == "float16" or (preferred is None and not torch.cuda.is_bf16_supported()):
            torch_dtype = torch.float16
        elif preferred == "float32":
            torch_dtype = torch.float32
        else:
            torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dtype in choices:
        torch_dtype = choices[dtype]
    else:
        raise SettingError(f"dtype {dtype!r} is not one of auto, {', '.join(choices)}")
    if device == "cpu" and torch_dtype == torch.float16:
        raise SettingError("float16 on CPU is slow and unsupported by some kernels: use float32 or bfloat16 on CPU")
    return torch.device(device), torch_dtype


def build_llava_config(preset: ModelPreset, *, vocab_size: int, image_token_id: int, pad_token_id: int | None,
                       bos_token_id: int | None, eos_token_id: int | None, text_overrides: dict | None = None):
    """The ``LlavaConfig`` of a preset with a Dinov2 vision tower and a LLaMA language model."""
    from transformers import Dinov2Config, LlamaConfig, LlavaConfig

    vision_kwargs = dict(preset.vision)
    vision_kwargs["image_size"] = preset.image_size
    vision = Dinov2Config(**vision_kwargs)
    text_kwargs = dict(preset.text)
    text_kwargs.update(text_overrides or {})
    text_kwargs.update(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                       eos_token_id=eos_token_id)
    text = LlamaConfig(**text_kwargs)
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=preset.num_image_tokens,
        projector_hidden_act=preset.projector_hidden_act,
        vision_feature_select_strategy="default",
        vision_feature_layer=preset.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_kwargs.get("tie_word_embeddings", False)),
    )


def make_meta(preset: ModelPreset, tokenizer, prompt_format: str, image_token_id: int, **extra: Any) -> dict[str, Any]:
    """The content of ``llavarad.json``; ``extra`` keys (e.g. ``init``, ``image_aspect_ratio``) are added."""
    meta = {
        "format_version": FORMAT_VERSION,
        "preset": preset.to_dict(),
        "prompt_format": prompt_format,
        "image_token": "<image>",
        "image_token_id": image_token_id,
        "num_image_tokens": preset.num_image_tokens,
        "image_aspect_ratio": "crop",
        "pad_token_id": tokenizer.pad_token_id,
        "train_config": None,
        "versions": versions(),
    }
    meta.update(extra)
    return meta


def init_random(preset: ModelPreset | str, *, seed: int = 0, tokenizer=None, prompt_format: str | None = None) -> ModelBundle:
    """A randomly initialised model of a preset (for tests, plumbing checks and from-scratch runs).

    ``tokenizer`` defaults to a small byte-level BPE built by :func:`build_tokenizer`; presets that
    need a real pretrained tokenizer (``tokenizer: pretrained``) must be given one.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    preset = load_preset(preset) if isinstance(preset, str) else preset
    if tokenizer is None:
        if preset.tokenizer == "pretrained":
            # Random weights of the full shape still need *a* tokenizer; use the built one and say so.
            logger.warning("preset %s expects a pretrained tokenizer; using the built-in tiny tokenizer", preset.name)
        tokenizer = build_tokenizer()
    image_token_id = add_image_token(tokenizer)
    vocab_size = len(tokenizer)
    if preset.tokenizer == "pretrained" and "vocab_size" in preset.text:
        vocab_size = max(vocab_size, int(preset.text["vocab_size"]) + 1)
    config = build_llava_config(preset, vocab_size=vocab_size, image_token_id=image_token_id,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    image_processor = build_image_processor(preset.image_size)
    fmt = prompt_format or preset.prompt_format
    return ModelBundle(model, tokenizer, image_processor, preset,
                       make_meta(preset, tokenizer, fmt, image_token_id, init={"kind": "random", "seed": seed}))


def init_from_parts(vision_dir: str | Path, lm_dir: str | Path, *, preset: ModelPreset | str = "llava-rad-7b",
                    seed: int = 0, prompt_format: str = "plain", dtype=None) -> ModelBundle:
    """Assemble an untrained LLaVA-Rad as stage 2 starts: a Dinov2 encoder folder + a LLaMA-family
    language model folder (with its tokenizer) + a randomly initialised projector.

    The preset supplies image size and vision feature layer; the vision and text architectures come
    from the folders themselves. The ``<image>`` token is added to the tokenizer and the embedding
    matrix grows to match.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Dinov2Model, LlavaForConditionalGeneration

    preset = load_preset(preset) if isinstance(preset, str) else preset
    vision_dir, lm_dir = Path(vision_dir), Path(lm_dir)
    for label, folder in (("vision encoder", vision_dir), ("language model", lm_dir)):
        if not (folder / "config.json").is_file():
            raise ModelFolderError(f"{label} folder {folder} has no config.json: pass a Hugging Face model folder")
    vcfg = AutoConfig.from_pretrained(vision_dir)
    if vcfg.model_type != "dinov2":
        raise ModelFolderError(f"{vision_dir}: model_type {vcfg.model_type!r}, expected 'dinov2' (a Dinov2 checkpoint)")
    if getattr(vcfg, "image_size", preset.image_size) != preset.image_size:
        logger.info("vision encoder trained at %s px; position embeddings are interpolated to %s px",
                    vcfg.image_size, preset.image_size)
    vision = Dinov2Model.from_pretrained(vision_dir, dtype=dtype)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token  # Vicuna/LLaVA-Rad: pad = unk
    tokenizer.padding_side = "left"
    image_token_id = add_image_token(tokenizer)
    lm.resize_token_embeddings(len(tokenizer))

    vision_dict = {k: v for k, v in vcfg.to_dict().items() if k in preset.vision or k in ("hidden_size", "mlp_ratio")}
    merged_preset = ModelPreset.from_dict({**preset.to_dict(), "vision": {**preset.vision, **vision_dict},
                                           "text": {**preset.text, **{k: v for k, v in lm.config.to_dict().items()
                                                                      if k in preset.text}}})
    config = build_llava_config(merged_preset, vocab_size=len(tokenizer), image_token_id=image_token_id,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    config.text_config = lm.config
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    if dtype is not None:
        model.to(dtype)
    model.eval()
    image_processor = build_image_processor(preset.image_size)
    meta = make_meta(merged_preset, tokenizer, prompt_format, image_token_id,
                      init={"kind": "parts", "vision": str(vision_dir), "language_model": str(lm_dir), "seed": seed})
    return ModelBundle(model, tokenizer, image_processor, merged_preset, meta)


def save_model(bundle: ModelBundle, out_dir: str | Path, *, train_config: dict | None = None) -> Path:
    """Write a self-describing model folder (safetensors weights, processor, tokenizer, meta)."""
    from llavarad.model.finite import check_finite_weights

    check_finite_weights(bundle.model.state_dict().items(), f"the model to {out_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(out, safe_serialization=True)
    processor = build_processor(bundle.image_processor, bundle.tokenizer, int(bundle.preset.vision.get("patch_size", 14)))
    processor.save_pretrained(out)
    meta = dict(bundle.meta)
    meta["versions"] = versions()
    meta["chat_template"] = chat_template_for(bundle.tokenizer)[1]  # which rendering gives the per-chunk ids
    if train_config is not None:
        meta["train_config"] = train_config
        # weights trained here (even when started from a converted release) were trained in this
        # project's dtype, so `--dtype auto` gives them bf16 rather than the release's float16
        meta.pop(INFERENCE_DTYPE, None)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_model(model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
               attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None) -> ModelBundle:
    """Load a llavarad model folder onto ``device`` in ``dtype`` (see :func:`resolve_device_dtype`)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir} does not exist: create one with `llavarad init` or `llavarad convert`")
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise ModelFolderError(
            f"{model_dir} has no {META_FILE}: it is not a llavarad model folder. Convert released weights with "
            f"`llavarad convert` or assemble one with `llavarad init`."
        )
    for name in ("config.json", "tokenizer_config.json"):
        if not (model_dir / name).is_file():
            raise ModelFolderError(f"{model_dir} is missing {name}; the folder is incomplete (re-save or re-convert it)")
    if not list(model_dir.glob("*.safetensors")):
        raise ModelFolderError(f"{model_dir} has no *.safetensors weights")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    preset = ModelPreset.from_dict(meta["preset"], str(meta_path))
    torch_device, torch_dtype = resolve_device_dtype(device, dtype, meta.get(INFERENCE_DTYPE))
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, **kwargs)
    model.to(torch_device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    # the preprocessing `convert` read from the release's open_clip config, else open_clip's defaults
    image_processor = build_image_processor(preset.image_size, meta.get("preprocess"))
    if int(model.config.image_token_id) != int(meta.get("image_token_id", model.config.image_token_id)):
        raise ModelFolderError(f"{model_dir}: image token id in config.json and {META_FILE} disagree; re-save the folder")
    return ModelBundle(model, tokenizer, image_processor, preset, meta)
