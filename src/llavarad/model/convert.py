"""Convert the public LLaVA-Rad release (``microsoft/llava-rad``) + its base LM into one llavarad folder.

The release holds no language-model weights; it needs ``lmsys/vicuna-7b-v1.5``:

- ``biomedclipcxr_518_checkpoint.pt``: open_clip checkpoint; ``module.visual.trunk.*`` (timm ViT) ->
  the ``Dinov2Model`` vision tower (:mod:`llavarad.model._convert_vision`); the text tower is converted by
  :func:`convert_biomedclip` (``convert --clip``).
- ``non_lora_trainables.bin``: the projector ``mm_projector.{0,2}`` -> ``multi_modal_projector.linear_{1,2}``
  (any other key that names a base-LM weight replaces it, as LLaVA's own loader does).
- ``adapter_config.json`` + ``adapter_model.bin``: a peft LoRA, merged into the LM by default
  (``W + alpha/r * B @ A``) or kept as an adapter folder ``lora/`` that applies to the converted model.
- ``config.json``: LLaVA fields, checked (projector type, feature layer, sizes) and recorded.
- ``biomedclip_cxr_518.json`` (optional): the encoder's open_clip config; its ``preprocess_cfg``
  (mean, std, interpolation, resize mode) sets the image processor when present, open_clip's
  defaults otherwise, and what was used is recorded under ``preprocess`` in ``llavarad.json``.

The result is a normal model folder (:func:`llavarad.model.build.save_model`): the ``<image>`` token
is added to Vicuna's tokenizer (embedding rows grow by one, initialised to the mean row), and the
processor and chat template are written. Every key of every file is accounted for: leftovers and
missing keys are errors that list them. Pickles load only with ``torch.load(weights_only=True)``.
The full model is assembled on the meta device and filled with streamed tensors, so only one copy of
the 7B weights is ever materialised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.model._convert_clip import convert_biomedclip
from llavarad.model._convert_lm import (
    LLAVA_LM_TARGET_REGEX,
    LoraAdapter,
    base_weight_files,
    iter_base_weights,
    load_lora,
    strip_peft_prefix,
)
from llavarad.model._convert_vision import VISION_FILE, ConversionError, load_torch_file, split_trunk, timm_trunk_to_dinov2
from llavarad.model.finite import check_finite_weights

logger = logging.getLogger(__name__)

__all__ = ["ConversionError", "ConvertReport", "RELEASE_FILES", "check_release", "convert_biomedclip", "convert_encoder",
           "convert_release"]

DType = Literal["auto", "float32", "float16", "bfloat16"]

PROJECTOR_FILE = "non_lora_trainables.bin"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
RELEASE_CONFIG = "config.json"
#: The encoder's open_clip config in the release (the release's open_clip_encoder.py reads it).
VISION_CONFIG = "biomedclip_cxr_518.json"
RELEASE_FILES = (VISION_FILE, PROJECTOR_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS[1], RELEASE_CONFIG)
LORA_DIR = "lora"
_HINT = "download it with: huggingface-cli download microsoft/llava-rad --local-dir DIR"


@dataclass
class ConvertReport:
    """What a conversion consumed and wrote (also stored under ``init`` in ``llavarad.json``)."""

    out_dir: str
    kind: Literal["model", "encoder"]
    dtype: str
    vision_tensors: int = 0
    ignored_vision_keys: int = 0
    image_size: int = 0
    projector_tensors: int = 0
    lm_overrides: list[str] = field(default_factory=list)
    base_tensors: int = 0
    lora_modules: int = 0
    lora: Literal["merged", "adapter", "none"] = "none"
    lora_scale: float | None = None
    vocab_size: int | None = None
    image_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_dtype(name: str, default):
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name == "auto":
        return default
    if name not in table:
        raise ConversionError(f"dtype {name!r} is not one of auto, {', '.join(table)}")
    return table[name]


def check_release(release_dir: str | Path, base_dir: str | Path | None = None, *, encoder_only: bool = False) -> dict[str, Path]:
    """Locate the release (and base) files; raise one :class:`ConversionError` listing everything missing."""
    release = Path(release_dir)
    problems: list[str] = []
    found: dict[str, Path] = {}
    if not release.is_dir():
        raise ConversionError(f"release folder {release} does not exist; {_HINT}")
    wanted = [VISION_FILE] if encoder_only else [VISION_FILE, PROJECTOR_FILE, ADAPTER_CONFIG, RELEASE_CONFIG]
    for name in wanted:
        path = release / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size == 0:
            problems.append(f"{path} is empty (an interrupted download?)")
        else:
            found[name] = path
    if not encoder_only:
        weights = next((release / n for n in ADAPTER_WEIGHTS if (release / n).is_file()), None)
        if weights is None:
            problems.append(f"{release} has neither {' nor '.join(ADAPTER_WEIGHTS)}")
        else:
            found["adapter_weights"] = weights
        if base_dir is None:
            problems.append("--base is required: the release holds no language-model weights (lmsys/vicuna-7b-v1.5)")
        else:
            base = Path(base_dir)
            if not (base / "config.json").is_file():
                problems.append(f"base folder {base} has no config.json (expected lmsys/vicuna-7b-v1.5)")
            elif not base_weight_files(base):
                problems.append(f"base folder {base} has no *.safetensors or pytorch_model*.bin weights")
            if not any((base / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
                problems.append(f"base folder {base} has no tokenizer files")
            found["base"] = base
    if problems:
        hint = f"; {_HINT}" if any(str(release) in p for p in problems) else ""
        raise ConversionError("cannot convert: " + "; ".join(problems) + hint)
    return found


def _preprocess(release: Path, image_size: int, vision_config: str | Path | None) -> dict[str, Any]:
    """Image preprocessing from the release's open_clip config (``preprocess_cfg``), recorded with its source."""
    from llavarad.model.processor import preprocess_from_open_clip

    path = Path(vision_config) if vision_config is not None else release / VISION_CONFIG
    if vision_config is None and not path.is_file():
        out = preprocess_from_open_clip(None, image_size)
        return {**out, "source": f"open_clip defaults ({path} not found)"}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not a readable open_clip config ({exc}); pass the release's {VISION_CONFIG}") from exc
    cfg = data.get("preprocess_cfg") if isinstance(data, dict) else None
    try:
        out = preprocess_from_open_clip(cfg, image_size, str(path))
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc
    return {**out, "source": f"{path} ({'preprocess_cfg' if cfg is not None else 'no preprocess_cfg: open_clip defaults'})"}


def _vision(path: Path, num_heads: int | None, preset_vision: dict[str, Any] | None = None
            ) -> tuple[dict[str, Any], dict[str, Any], int]:
    checkpoint = load_torch_file(path)
    trunk, ignored = split_trunk(checkpoint, str(path))
    if num_heads is None and preset_vision and "cls_token" in trunk:
        # the head count is not in the weights: it comes from the preset, whose width must agree
        width, preset_width = int(trunk["cls_token"].shape[-1]), int(preset_vision.get("hidden_size", -1))
        if width != preset_width:
            raise ConversionError(f"{path}: the vision trunk is {width} wide but the preset's encoder is "
                                  f"{preset_width}; pass --preset with a matching vision tower (attention heads "
                                  "cannot be read from the weights)")
        num_heads = int(preset_vision["num_attention_heads"])
    logger.info("%s: %d trunk tensors, %d other keys ignored (text tower, CLIP head, ...)", path.name, len(trunk),
                len(ignored))
    state, cfg = timm_trunk_to_dinov2(trunk, num_attention_heads=num_heads, source=str(path))
    return state, cfg, len(ignored)


def convert_encoder(release_dir: str | Path, out_dir: str | Path, *, dtype: DType = "float32",
                    num_attention_heads: int | None = None, preset: str = "llava-rad-7b",
                    vision_config: str | Path | None = None) -> ConvertReport:
    """Export only the released image encoder as a ``Dinov2Model`` folder (+ its image processor).

    The folder is what stage 1 training and ``llavarad init --vision`` take. ``vision_config``: the
    open_clip config (default: ``biomedclip_cxr_518.json`` in the release folder, if there).
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from llavarad.model.presets import load_preset
    from llavarad.model.processor import build_image_processor

    files = check_release(release_dir, encoder_only=True)
    state, cfg, n_ignored = _vision(files[VISION_FILE], num_attention_heads, load_preset(preset).vision)
    torch_dtype = _torch_dtype(dtype, torch.float32)
    model = Dinov2Model(Dinov2Config(**cfg))
    _load_exact(model, state, str(files[VISION_FILE]))
    model.to(torch_dtype).eval()
    check_finite_weights(model.state_dict().items(), f"the encoder to {out_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    preprocess = _preprocess(Path(release_dir), cfg["image_size"], vision_config)
    build_image_processor(cfg["image_size"], preprocess).save_pretrained(out)
    report = ConvertReport(out_dir=str(out), kind="encoder", dtype=str(torch_dtype).removeprefix("torch."),
                           vision_tensors=len(state), ignored_vision_keys=n_ignored, image_size=cfg["image_size"])
    (out / "llavarad_convert.json").write_text(json.dumps({**report.to_dict(), "preprocess": preprocess}, indent=2) + "\n",
                                               encoding="utf-8")
    return report


def _load_exact(module, state: dict[str, Any], source: str, *, assign: bool = False) -> None:
    """``load_state_dict`` that first lists every missing, unexpected and mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: got {tuple(state[k].shape)}, model has {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:8])}"
                        f"{' ...' if len(unexpected) > 8 else ''})")
    if shapes:
        problems.append(f"{len(shapes)} with wrong shape ({'; '.join(shapes[:5])})")
    if problems:
        raise ConversionError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=assign)


def _release_config(path: Path, vision_hidden: int) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not readable JSON ({exc})") from exc
    problems = []
    expect = {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"}
    for key, value in expect.items():
        if key in cfg and cfg[key] != value:
            problems.append(f"{key}={cfg[key]!r} (this converter handles {value!r})")
    if cfg.get("mm_hidden_size") not in (None, vision_hidden):
        problems.append(f"mm_hidden_size={cfg['mm_hidden_size']} but the vision checkpoint has width {vision_hidden}")
    if problems:
        raise ConversionError(f"{path}: " + "; ".join(problems))
    keep = ("mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature", "mm_hidden_size",
            "mm_vision_tower", "image_aspect_ratio", "mm_use_im_start_end", "mm_use_im_patch_token", "hidden_size",
            "vocab_size", "torch_dtype", "_name_or_path")
    return {k: cfg[k] for k in keep if k in cfg}


def _projector(path: Path, lm_names: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Projector tensors (Llava naming) and base-LM overrides (LLaMA naming) from non_lora_trainables."""
    import torch

    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    proj, overrides, leftovers = {}, {}, []
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ConversionError(f"{path}: {len(odd)} value(s) are not tensors ({', '.join(odd[:5])}); is this the "
                              "release's non_lora_trainables.bin?")
    for key, tensor in state.items():
        k = strip_peft_prefix(key)
        if k.startswith("model.mm_projector."):
            rest = k[len("model.mm_projector."):]
            index, _, param = rest.partition(".")
            layer = {"0": "linear_1", "2": "linear_2"}.get(index)
            if layer is None or param not in ("weight", "bias"):
                leftovers.append(key)
            else:
                proj[f"model.multi_modal_projector.{layer}.{param}"] = tensor
        elif k in lm_names:
            overrides[k] = tensor
        else:
            leftovers.append(key)
    if leftovers:
        raise ConversionError(f"{path}: {len(leftovers)} keys are neither projector (mm_projector.0/2) nor base-LM "
                              f"weights: {', '.join(sorted(leftovers)[:8])}")
    missing = [f"mm_projector.{i}.{p}" for i, layer in (("0", "linear_1"), ("2", "linear_2")) for p in ("weight", "bias")
               if f"model.multi_modal_projector.{layer}.{p}" not in proj]
    if missing:
        raise ConversionError(f"{path}: projector keys missing: {', '.join(missing)} "
                              "(expected base_model.model.model.mm_projector.{0,2}.{weight,bias})")
    return proj, overrides


def _lm_key(name: str) -> str | None:
    """LLaMA causal-LM name -> Llava name; None for buffers that are not weights."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return name  # lm_head.weight


def convert_release(release_dir: str | Path, base_dir: str | Path, out_dir: str | Path, *, dtype: DType = "auto",
                    keep_lora: bool = False, preset: str = "llava-rad-7b",
                    vision_config: str | Path | None = None) -> ConvertReport:
    """Convert the release + base LM into a llavarad model folder at ``out_dir``; return what was done.

    ``dtype`` ``auto`` keeps the base model's dtype (float16 for Vicuna). With ``keep_lora`` the LM is
    saved unmerged and the adapter goes to ``out_dir/lora`` (load it with ``peft.PeftModel``).
    ``vision_config``: the encoder's open_clip config (default: ``biomedclip_cxr_518.json`` in the
    release folder, if there); its ``preprocess_cfg`` sets the image processor.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from llavarad.model.build import ModelBundle, make_meta, build_llava_config, save_model
    from llavarad.model.presets import load_preset
    from llavarad.model.processor import build_image_processor
    from llavarad.model.tokenizer import add_image_token

    files = check_release(release_dir, base_dir)
    base = files["base"]
    base_preset = load_preset(preset)
    vision_state, vision_cfg, n_ignored = _vision(files[VISION_FILE], None, base_preset.vision)
    release_cfg = _release_config(files[RELEASE_CONFIG], vision_cfg["hidden_size"])
    adapter = load_lora(files[ADAPTER_CONFIG], files["adapter_weights"])

    text_cfg = _base_text_config(base)
    tokenizer = _release_tokenizer(base)
    old_vocab = int(text_cfg.vocab_size)
    image_token_id = add_image_token(tokenizer)
    new_vocab = max(len(tokenizer), old_vocab)
    torch_dtype = _torch_dtype(dtype, getattr(text_cfg, "dtype", None) or torch.float32)
    torch_dtype = _torch_dtype(torch_dtype, torch.float32) if isinstance(torch_dtype, str) else torch_dtype

    merged_preset = _merged_preset(base_preset, vision_cfg, text_cfg)
    config = build_llava_config(merged_preset, vocab_size=new_vocab, image_token_id=image_token_id,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    text_cfg.vocab_size, text_cfg.pad_token_id = new_vocab, tokenizer.pad_token_id
    config.text_config = text_cfg
    with init_empty_weights():  # parameters on the meta device, real buffers (rotary inv_freq)
        model = LlavaForConditionalGeneration(config)
    expected = model.state_dict()

    lm_names = {"model." + k[len("model.language_model."):] for k in expected
                if k.startswith("model.language_model.")} | {"lm_head.weight"}
    projector, overrides = _projector(files[PROJECTOR_FILE], lm_names)
    state: dict[str, Any] = {"model.vision_tower." + k: v.to(torch_dtype) for k, v in vision_state.items()}
    state.update({k: v.to(torch_dtype) for k, v in projector.items()})
    del vision_state

    applied, n_base = _merge_base_weights(base, expected, overrides, adapter, state, keep_lora=keep_lora,
                                          dtype=torch_dtype, vocab=new_vocab, projector_file=files[PROJECTOR_FILE])
    if "lm_head.weight" not in state and getattr(text_cfg, "tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    _load_exact(model, state, f"{files[VISION_FILE].parent} + {base}", assign=True)
    del state
    model.eval()

    report = ConvertReport(out_dir=str(out_dir), kind="model", dtype=str(torch_dtype).removeprefix("torch."),
                           vision_tensors=sum(1 for k in expected if k.startswith("model.vision_tower.")),
                           ignored_vision_keys=n_ignored, image_size=vision_cfg["image_size"], **_lm_report(
                               projector, applied, n_base, adapter, keep_lora), vocab_size=new_vocab,
                           image_token_id=image_token_id)
    # LLaVA's "pad" pads to a square before resizing; anything else is the shortest-side crop.
    aspect = "pad" if release_cfg.get("image_aspect_ratio") == "pad" else "crop"
    # The release runs inference in float16 (llava/model/builder.py loads with torch_dtype float16, the
    # eval script feeds .half() images), so `--dtype auto` on a GPU loads this folder in float16.
    preprocess = _preprocess(Path(release_dir), merged_preset.image_size, vision_config)
    meta = make_meta(merged_preset, tokenizer, "v1", image_token_id, image_aspect_ratio=aspect,
                      inference_dtype="float16", preprocess=preprocess,
                      init={"kind": "convert", "release": str(Path(release_dir)), "base": str(base),
                            "release_config": release_cfg, "report": report.to_dict()})
    bundle = ModelBundle(model, tokenizer, build_image_processor(merged_preset.image_size, preprocess), merged_preset,
                         meta)
    out = save_model(bundle, out_dir)
    if keep_lora:
        _save_adapter(adapter, out / LORA_DIR, torch_dtype)
    logger.info("converted %s + %s -> %s", release_dir, base, out)
    return report


def _base_text_config(base: Path):
    """The base LM's config; LLaVA-Rad's base must be a LLaMA model."""
    from transformers import AutoConfig

    text_cfg = AutoConfig.from_pretrained(base)
    if text_cfg.model_type != "llama":
        raise ConversionError(f"{base}: model_type {text_cfg.model_type!r}; LLaVA-Rad's base is a LLaMA model "
                              "(lmsys/vicuna-7b-v1.5)")
    return text_cfg


def _release_tokenizer(base: Path):
    """The base LM's tokenizer as the release used it: pad = unk (Vicuna/LLaVA-Rad), left padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _merged_preset(base_preset, vision_cfg: dict[str, Any], text_cfg):
    """The preset of the converted folder: ``base_preset`` with the release's vision tower and the
    base LM's text settings, the v1 prompt format and a pretrained tokenizer."""
    from llavarad.model.presets import ModelPreset

    return ModelPreset.from_dict({
        **base_preset.to_dict(), "image_size": vision_cfg["image_size"],
        "vision": {**base_preset.vision, **{k: v for k, v in vision_cfg.items() if k != "image_size"}},
        "text": {**base_preset.text, **{k: v for k, v in text_cfg.to_dict().items() if k in base_preset.text}},
        "prompt_format": "v1", "tokenizer": "pretrained"})


def _lm_report(projector: dict[str, Any], applied: list[str], n_base: int, adapter, keep_lora: bool) -> dict[str, Any]:
    """The language-model half of :class:`ConvertReport`."""
    return {"projector_tensors": len(projector), "lm_overrides": sorted(applied), "base_tensors": n_base,
            "lora_modules": len(adapter.a), "lora": "adapter" if keep_lora else "merged",
            "lora_scale": adapter.scale(next(iter(adapter.a))) if adapter.a else None}


def _merge_base_weights(base: Path, expected: dict[str, Any], overrides: dict[str, Any], adapter, state: dict[str, Any],
                        *, keep_lora: bool, dtype, vocab: int, projector_file: Path) -> tuple[list[str], int]:
    """Stream the base LM's weights into ``state`` under their Llava names: the projector file's
    overrides replace theirs, LoRA is merged (unless ``keep_lora``) in float32 and stored in
    ``dtype``, the embedding and LM head grow to ``vocab`` rows. Returns (overridden names, count)."""
    pending = set(adapter.a)
    applied: list[str] = []
    n_base = 0
    for name, tensor in iter_base_weights(base):
        key = _lm_key(name)
        if key is None:
            continue
        if key not in expected:
            raise ConversionError(f"{base}: weight {name!r} has no place in a LLaMA model of this config")
        n_base += 1
        if name in overrides:
            tensor = overrides.pop(name)
            applied.append(name)
        module = name.removesuffix(".weight")
        if module in pending and not keep_lora:
            _check_lora_shape(adapter, module, tensor)
            # merged in float32 and stored in the dtype asked for: with --dtype float32 the merged
            # weights are not first rounded to the base's float16
            tensor = adapter.merge_into(module, tensor, out_dtype=dtype)
            pending.discard(module)
        elif module in pending:
            _check_lora_shape(adapter, module, tensor)
            pending.discard(module)
        elif adapter.targets_name(module) and name.endswith(".weight") and tensor.ndim == 2 and ".layers." in name:
            raise ConversionError(f"{adapter.source}: {module} is a LoRA target but has no lora_A/lora_B weights")
        tensor = tensor.to(dtype)
        if key in ("model.language_model.embed_tokens.weight", "lm_head.weight") and tensor.shape[0] < vocab:
            tensor = _grow_rows(tensor, vocab)  # <image> row(s) = the mean row
        state[key] = tensor
    if pending:
        raise ConversionError(f"{adapter.source}: LoRA weights for modules the base model does not have: "
                              f"{', '.join(sorted(pending)[:8])}")
    if overrides:
        raise ConversionError(f"{projector_file}: keys for base weights that were not found: "
                              f"{', '.join(sorted(overrides))}")
    return applied, n_base


def _grow_rows(weight, rows: int):
    """``weight`` ``(n, d)`` -> ``(rows, d)``; the new rows are the float32 mean of the old ones, summed in
    blocks so that no float32 copy of a 32000 x 4096 matrix is made."""
    import torch

    total = torch.zeros(weight.shape[1], dtype=torch.float32)
    for start in range(0, weight.shape[0], 4096):
        total += weight[start:start + 4096].float().sum(dim=0)
    out = weight.new_empty((rows, weight.shape[1]))
    out[: weight.shape[0]] = weight
    out[weight.shape[0]:] = (total / weight.shape[0]).to(weight.dtype)
    return out


def _check_lora_shape(adapter: LoraAdapter, module: str, weight) -> None:
    a, b = adapter.a[module], adapter.b[module]
    if (int(b.shape[0]), int(a.shape[1])) != tuple(weight.shape):
        raise ConversionError(f"{adapter.source}: {module}: LoRA maps {a.shape[1]} -> {b.shape[0]}, base weight "
                              f"is {tuple(weight.shape)}")


def _save_adapter(adapter: LoraAdapter, out: Path, torch_dtype) -> None:
    """Re-key the adapter for the converted model and write it as a peft folder."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    names = "|".join(adapter.target_names())
    cfg = adapter.config
    lora_cfg = LoraConfig(r=int(cfg["r"]), lora_alpha=cfg["lora_alpha"], lora_dropout=float(cfg.get("lora_dropout", 0.0)),
                          target_modules=LLAVA_LM_TARGET_REGEX.format(names=names), bias="none",
                          use_rslora=adapter.use_rslora, rank_pattern=cfg.get("rank_pattern") or {},
                          base_model_name_or_path="..")
    lora_cfg.save_pretrained(str(out))
    tensors = {}
    for module in adapter.a:
        llava_module = "model.language_model." + module[len("model."):] if module.startswith("model.") else module
        tensors[f"base_model.model.{llava_module}.lora_A.weight"] = adapter.a[module].to(torch_dtype).contiguous()
        tensors[f"base_model.model.{llava_module}.lora_B.weight"] = adapter.b[module].to(torch_dtype).contiguous()
    check_finite_weights(tensors.items(), f"the LoRA adapter to {out}")
    save_file(tensors, str(out / "adapter_model.safetensors"))
