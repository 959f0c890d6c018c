"""Image preprocessing and prompt tokenization, exactly as the released LLaVA-Rad model expects.

Images: bicubic resize of the shortest side to the preset's size (518), centre crop, RGB, OpenAI
CLIP mean/std (or what the release's open_clip ``preprocess_cfg`` says, recorded by ``convert``).
The centre crop is torchvision's (what open_clip runs): its offset is ``round(diff / 2)`` with
Python's round, half to even, where transformers' crop floors; :func:`pixel_values_for` crops the
release's way, so about a quarter of non-square images (side difference 3 mod 4) are not shifted
by a pixel. Text: the release tokenizes a prompt by splitting it at ``<image>``, tokenizing each
chunk on its own (BOS only on the first), and putting the image tokens where the placeholder was.
With a sentencepiece tokenizer the chunk after the image therefore starts with the prefix piece
before ``"\\n"``; feeding a converted model the ids of the whole string tokenized at once would
differ from what it was trained on, so every llavarad path builds ids with :func:`tokenize_prompt`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llavarad.errors import LlavaradError
from llavarad.prompts.model import IMAGE_PLACEHOLDER, build_prompt

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORE_INDEX",
    "PREPROCESS_DEFAULTS",
    "EncodedExample",
    "SequenceTooLongError",
    "build_image_processor",
    "build_processor",
    "center_crop_offset",
    "chat_template_for",
    "pad_to_square",
    "preprocess_from_open_clip",
    "encode_example",
    "pixel_values_for",
    "tokenize_prompt",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE_INDEX = -100
#: open_clip's ``PreprocessCfg`` defaults (src/open_clip/transform.py), what the release's encoder
#: uses when its config carries no ``preprocess_cfg``.
PREPROCESS_DEFAULTS: dict[str, Any] = {"mode": "RGB", "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
_RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}
_RESIZE_MODES = ("shortest", "squash")

# A Jinja chat template that renders the "v1" format from chat messages, so that generic HF tools
# (``processor.apply_chat_template``) produce the same prompt as llavarad. ``{sep}`` follows the
# image: "\n" in the prompt string; :func:`chat_template_for` picks what makes whole-string
# tokenization give the release's per-chunk ids.
_V1_TEMPLATE = (
    "{{%- set ns = namespace(sys='A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.') -%}}"
    "{{%- for m in messages if m['role'] == 'system' -%}}"
    "{{%- set ns.sys = m['content'] if m['content'] is string else m['content'][0]['text'] -%}}"
    "{{%- endfor -%}}"
    "{{{{- ns.sys -}}}}"
    "{{%- for m in messages if m['role'] != 'system' -%}}"
    "{{%- if m['role'] == 'user' -%}}{{{{- ' USER: ' -}}}}"
    "{{%- if m['content'] is string -%}}{{{{- m['content'] -}}}}{{%- else -%}}"
    "{{%- for c in m['content'] -%}}"
    "{{%- if c['type'] == 'image' -%}}{{{{- '<image>{sep}' -}}}}{{%- else -%}}{{{{- c['text'] -}}}}{{%- endif -%}}"
    "{{%- endfor -%}}{{%- endif -%}}"
    "{{%- else -%}}{{{{- ' ASSISTANT: ' -}}}}"
    "{{%- if m['content'] is string -%}}{{{{- m['content'] -}}}}{{%- else -%}}{{{{- m['content'][0]['text'] -}}}}{{%- endif -%}}"
    "{{{{- '</s>' -}}}}"
    "{{%- endif -%}}{{%- endfor -%}}"
    "{{%- if add_generation_prompt -%}}{{{{- ' ASSISTANT:' -}}}}{{%- endif -%}}"
)
_SEPARATORS = {"\n": "\\n", " \n": " \\n"}  # the separator as written inside the Jinja string literal
V1_CHAT_TEMPLATE = _V1_TEMPLATE.format(sep=_SEPARATORS["\n"])


def chat_template_for(tokenizer) -> tuple[str, dict[str, Any]]:
    """The v1 chat template for ``tokenizer``, rendered so that tokenizing its output whole gives the release's ids.

    The release tokenizes the text before and after ``<image>`` apart (:func:`tokenize_prompt`);
    with a LLaMA sentencepiece tokenizer the chunk after the image then starts with a lone "▁"
    piece before the newline, which a tool that tokenizes the whole rendered string (plain
    ``AutoProcessor`` + ``apply_chat_template``) does not produce. Rendering a space after
    ``<image>`` makes it produce exactly that piece. Each candidate ("\n", then " \n") is tried on a
    sample prompt against the per-chunk rule and the first that matches is used.

    Returns:
        ``(template, record)``; ``record`` says which separator was chosen and whether it matched
        (recorded in ``llavarad.json``).
    """
    import tempfile

    from transformers import AutoTokenizer

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id is None or image_id == tokenizer.unk_token_id:
        return V1_CHAT_TEMPLATE, {"image_separator": "\n", "matches_per_chunk_ids": None}
    # Judge the tokenizer as every loader of the saved folder gets it: written out and read back
    # (a sentencepiece model converted in memory can split whole strings differently).
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        reloaded = AutoTokenizer.from_pretrained(tmp)
    prompt = build_prompt("v1", indication="Cough.").prompt
    reference = tokenize_prompt(reloaded, prompt, 2, int(image_id))
    for sep in _SEPARATORS:
        text = prompt.replace(IMAGE_PLACEHOLDER + "\n", IMAGE_PLACEHOLDER * 2 + sep)
        if list(reloaded(text)["input_ids"]) == reference:
            return _V1_TEMPLATE.format(sep=_SEPARATORS[sep]), {"image_separator": sep, "matches_per_chunk_ids": True}
    logger.warning("no rendering of the chat template gives the per-chunk token ids with this tokenizer; tools "
                   "that tokenize the rendered prompt whole will not get llavarad's ids")
    return V1_CHAT_TEMPLATE, {"image_separator": "\n", "matches_per_chunk_ids": False}


class SequenceTooLongError(LlavaradError, ValueError):
    """A training example whose prompt + target exceeds the length limit (never truncated silently)."""


def preprocess_from_open_clip(cfg: Mapping[str, Any] | None, image_size: int, source: str = "vision config") -> dict[str, Any]:
    """The preprocessing an open_clip ``preprocess_cfg`` describes, checked, with open_clip's defaults filled in.

    Args:
        cfg: the ``preprocess_cfg`` dict (mean, std, interpolation, resize_mode, size, mode,
            fill_color), or None for open_clip's defaults.
        image_size: the encoder's input size, which ``size`` must agree with when given.

    Returns:
        ``{"mean", "std", "interpolation", "resize_mode", "fill_color", "mode", "size"}``.

    Raises:
        ValueError: one message listing every value llavarad cannot reproduce.
    """
    out = {**PREPROCESS_DEFAULTS, "size": image_size}
    problems = []
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ValueError(f"{source}: preprocess_cfg is {type(cfg).__name__}, expected an object")
    for key, value in (cfg or {}).items():
        if key not in out:
            problems.append(f"unknown key {key!r}")
        else:
            out[key] = value
    for key in ("mean", "std"):
        v = out[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            problems.append(f"{key}={v!r}: expected three numbers")
        elif key == "std" and min(v) <= 0:
            problems.append(f"std={v!r}: must be positive")
        else:
            out[key] = [float(x) for x in v]
    if out["interpolation"] not in _RESAMPLE:
        problems.append(f"interpolation={out['interpolation']!r}: use one of {', '.join(_RESAMPLE)}")
    if out["resize_mode"] not in _RESIZE_MODES:
        problems.append(f"resize_mode={out['resize_mode']!r}: llavarad reproduces {', '.join(_RESIZE_MODES)}")
    if out["mode"] != "RGB":
        problems.append(f"mode={out['mode']!r}: only RGB")
    size = out["size"]
    sizes = [size, size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else None
    if sizes is None or len(sizes) != 2 or any(int(x) != image_size for x in sizes):
        problems.append(f"size={size!r} differs from the encoder's {image_size} px")
    out["size"] = image_size
    if problems:
        raise ValueError(f"{source}: preprocess_cfg: " + "; ".join(problems))
    return out


def build_image_processor(image_size: int, preprocess: Mapping[str, Any] | None = None):
    """The CLIP-style image processor of the release, at ``image_size`` (518 for LLaVA-Rad).

    ``preprocess`` is the output of :func:`preprocess_from_open_clip` (recorded by ``convert`` in
    ``llavarad.json``); None means open_clip's defaults. Uses transformers' PIL backend, which
    needs no torchvision.
    """
    from PIL import Image as _Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    p = preprocess_from_open_clip(None, image_size) if preprocess is None else preprocess
    squash = p["resize_mode"] == "squash"
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size} if squash else {"shortest_edge": image_size},
        resample=getattr(_Image.Resampling, _RESAMPLE[p["interpolation"]]),
        do_center_crop=not squash,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(p["mean"]),
        image_std=list(p["std"]),
        do_convert_rgb=True,
    )


def build_processor(image_processor, tokenizer, patch_size: int):
    """A ``LlavaProcessor`` that loads with ``AutoProcessor.from_pretrained`` in other tools.

    Its chat template comes from :func:`chat_template_for`, so rendering a conversation and
    tokenizing it whole gives the ids llavarad (and the release) feed the model.
    """
    from transformers import LlavaProcessor

    template, _ = chat_template_for(tokenizer)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_PLACEHOLDER,
        chat_template=template,
    )


def center_crop_offset(length: int, crop: int) -> int:
    """Start of a centred crop of ``crop`` pixels from ``length``, as torchvision's ``center_crop``.

    torchvision (transforms/functional.py, ``center_crop``) takes ``int(round((length - crop) / 2.0))``;
    Python rounds halves to even, so a difference of 3 starts at 2 (transformers' floor gives 1).
    """
    if crop > length:
        raise ValueError(f"cannot crop {crop} pixels from {length}")
    return int(round((length - crop) / 2.0))


def pad_to_square(image: Image.Image, mean: tuple[float, ...] | list[float] = CLIP_MEAN) -> Image.Image:
    """LLaVA's ``image_aspect_ratio="pad"``: centre the image on a square of the mean colour."""
    from PIL import Image as _Image

    image = image.convert("RGB")
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    fill = tuple(int(round(c * 255)) for c in mean)
    canvas = _Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def pixel_values_for(images: list[Image.Image], image_processor, aspect: str = "crop") -> torch.Tensor:
    """Preprocess PIL images to a ``(batch, 3, size, size)`` float32 tensor.

    ``aspect="crop"`` (default): shortest side to size, centre crop with torchvision's offset
    (:func:`center_crop_offset`). ``aspect="pad"``: pad to a square of the mean colour first, as
    LLaVA models trained with ``image_aspect_ratio="pad"`` expect (recorded by ``convert``).
    """
    import torch

    if aspect == "pad":
        images = [pad_to_square(img, getattr(image_processor, "image_mean", None) or CLIP_MEAN) for img in images]
    elif aspect != "crop":
        raise ValueError(f"image aspect handling {aspect!r} must be 'crop' or 'pad'")
    if not getattr(image_processor, "do_center_crop", False):
        return image_processor(images=images, return_tensors="pt")["pixel_values"]
    # Resize and normalise with the processor, crop with torchvision's rounding (the two commute).
    height, width = int(image_processor.crop_size["height"]), int(image_processor.crop_size["width"])
    rows = []
    for img in images:
        full = image_processor(images=[img], do_center_crop=False, return_tensors="pt")["pixel_values"][0]
        top, left = center_crop_offset(full.shape[-2], height), center_crop_offset(full.shape[-1], width)
        rows.append(full[:, top:top + height, left:left + width])
    return torch.stack(rows)


def tokenize_prompt(tokenizer, prompt: str, num_image_tokens: int, image_token_id: int) -> list[int]:
    """Token ids of ``prompt`` by the release's rule, with the placeholder expanded.

    Splits at ``<image>``, tokenizes each chunk separately without special tokens, prepends BOS
    once, and inserts ``num_image_tokens`` copies of ``image_token_id`` per placeholder.
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    ids: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(int(tokenizer.bos_token_id))
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.extend([image_token_id] * num_image_tokens)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


@dataclass
class EncodedExample:
    """One tokenized example. ``labels`` is ``IGNORE_INDEX`` wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_example(
    tokenizer,
    fmt: str,
    *,
    indication: str | None,
    findings: str | None,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int | None = None,
    example_id: str | None = None,
) -> EncodedExample:
    """Tokenize a prompt (+ target when ``findings`` is given) for training or inference.

    Loss is taken only on the target: the findings (and ``</s>`` for "v1"). For "plain" the target
    is ``findings + "\\n"`` with no EOS, as in the release. An example longer than ``max_length``
    raises :class:`SequenceTooLongError` naming it, instead of being truncated or masked silently.
    """
    parts = build_prompt(fmt, indication=indication, findings=findings)
    prompt_ids = tokenize_prompt(tokenizer, parts.prompt, num_image_tokens, image_token_id)
    target_ids: list[int] = []
    if findings is not None:
        if parts.target:
            target_ids = list(tokenizer(parts.target, add_special_tokens=False)["input_ids"])
        if parts.eos:
            target_ids.append(int(tokenizer.eos_token_id))
    input_ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    if max_length is not None and len(input_ids) > max_length:
        name = f"example {example_id!r}" if example_id else "example"
        raise SequenceTooLongError(
            f"{name}: {len(input_ids)} tokens ({len(prompt_ids)} prompt incl. {num_image_tokens} image, "
            f"{len(target_ids)} target) exceed max_length={max_length}; raise max_length or shorten the text"
        )
    return EncodedExample(input_ids=input_ids, labels=labels)
