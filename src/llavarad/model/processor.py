"""Image preprocessing and prompt tokenization, exactly as the released LLaVA-Rad model expects.

Images: bicubic resize of the shortest side to the preset's size (518), centre crop, RGB, OpenAI
CLIP mean/std. Text: the release tokenizes a prompt by splitting it at ``<image>``, tokenizing each
chunk on its own (BOS only on the first), and putting the image tokens where the placeholder was.
With a sentencepiece tokenizer the chunk after the image therefore starts with the prefix piece
before ``"\\n"``; feeding a converted model the ids of the whole string tokenized at once would
differ from what it was trained on, so every llavarad path builds ids with :func:`tokenize_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llavarad.errors import LlavaradError
from llavarad.prompts.model import IMAGE_PLACEHOLDER, build_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORE_INDEX",
    "EncodedExample",
    "SequenceTooLongError",
    "build_image_processor",
    "build_processor",
    "pad_to_square",
    "encode_example",
    "pixel_values_for",
    "tokenize_prompt",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE_INDEX = -100

# A Jinja chat template that renders the "v1" format from chat messages, so that generic HF tools
# (``processor.apply_chat_template``) produce the same prompt string as llavarad.
V1_CHAT_TEMPLATE = (
    "{%- set ns = namespace(sys='A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.') -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.sys = m['content'] if m['content'] is string else m['content'][0]['text'] -%}"
    "{%- endfor -%}"
    "{{- ns.sys -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'user' -%}{{- ' USER: ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{- '<image>\\n' -}}{%- else -%}{{- c['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- else -%}{{- ' ASSISTANT: ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}{{- m['content'][0]['text'] -}}{%- endif -%}"
    "{{- '</s>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
)


class SequenceTooLongError(LlavaradError, ValueError):
    """A training example whose prompt + target exceeds the length limit (never truncated silently)."""


def build_image_processor(image_size: int):
    """The CLIP-style image processor of the release, at ``image_size`` (518 for LLaVA-Rad).

    Uses transformers' PIL backend, which needs no torchvision.
    """
    from PIL import Image as _Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=_Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def build_processor(image_processor, tokenizer, patch_size: int):
    """A ``LlavaProcessor`` that loads with ``AutoProcessor.from_pretrained`` in other tools."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_PLACEHOLDER,
        chat_template=V1_CHAT_TEMPLATE,
    )


def pad_to_square(image: Image.Image) -> Image.Image:
    """LLaVA's ``image_aspect_ratio="pad"``: centre the image on a square of the CLIP mean colour."""
    from PIL import Image as _Image

    image = image.convert("RGB")
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    fill = tuple(int(round(c * 255)) for c in CLIP_MEAN)
    canvas = _Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def pixel_values_for(images: list[Image.Image], image_processor, aspect: str = "crop") -> torch.Tensor:
    """Preprocess PIL images to a ``(batch, 3, size, size)`` float32 tensor.

    ``aspect="crop"`` (default): shortest side to size, centre crop. ``aspect="pad"``: pad to a square
    first, as LLaVA models trained with ``image_aspect_ratio="pad"`` expect (recorded by ``convert``).
    """
    if aspect == "pad":
        images = [pad_to_square(img) for img in images]
    elif aspect != "crop":
        raise ValueError(f"image aspect handling {aspect!r} must be 'crop' or 'pad'")
    out = image_processor(images=images, return_tensors="pt")
    return out["pixel_values"]


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
