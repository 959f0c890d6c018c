"""Convert the released BiomedCLIP-CXR (open_clip) checkpoint into a full llavarad CLIP folder.

``biomedclipcxr_518_checkpoint.pt`` holds both towers of the paper's stage-1 model:
- ``visual.trunk.*``: the timm DINOv2-style ViT (renamed to ``Dinov2Model`` by _convert_vision);
- ``visual.head.proj.weight``: open_clip's timm head, a bias-free linear map to the shared space,
  applied to the trunk's pooled output (the CLS token after the final norm);
- ``text.transformer.*``: an HF ``BertModel`` (BiomedBERT) state dict;
- ``text.proj.{0,2}.weight``: open_clip's "mlp" text projection (Linear-GELU-Linear, no bias) on
  the CLS token of the last hidden state;
- ``logit_scale``.
The release ships no tokenizer or BERT config, so a local BiomedBERT folder supplies both. The
result is what ``llavarad retrieval --encoder`` and ``load_clip`` read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llavarad.model._convert_vision import VISION_FILE, ConversionError, load_torch_file, split_trunk, timm_trunk_to_dinov2

logger = logging.getLogger(__name__)

__all__ = ["convert_biomedclip", "split_biomedclip"]

_PREFIXES = ("module.", "")
_IGNORED_TEXT = ("pooler.", "embeddings.position_ids")  # the CLS pooler is unused; position_ids is a buffer


def split_biomedclip(checkpoint: Any, source: str) -> dict[str, Any]:
    """Group an open_clip checkpoint's tensors into trunk, head, text tower, text head and scale.

    Every key must land somewhere; leftovers raise :class:`ConversionError` listing them.
    """
    trunk, others = split_trunk(checkpoint, source)
    state = checkpoint.get("state_dict", checkpoint)
    parts: dict[str, Any] = {"trunk": trunk, "text": {}, "text_proj": {}, "image_proj": None, "logit_scale": None,
                             "ignored": []}
    leftovers = []
    for key in others:
        name = next(key[len(p):] for p in _PREFIXES if key.startswith(p))
        value = state[key]
        if name == "visual.head.proj.weight":
            parts["image_proj"] = value
        elif name.startswith("text.transformer."):
            sub = name[len("text.transformer."):]
            if sub.startswith(_IGNORED_TEXT):
                parts["ignored"].append(key)
            else:
                parts["text"][sub] = value
        elif name.startswith("text.proj."):
            parts["text_proj"][name[len("text.proj."):]] = value
        elif name == "logit_scale":
            parts["logit_scale"] = value
        else:
            leftovers.append(key)
    missing = [n for n, v in (("visual.head.proj.weight", parts["image_proj"]), ("logit_scale", parts["logit_scale"]))
               if v is None]
    if not parts["text"]:
        missing.append("text.transformer.*")
    if set(parts["text_proj"]) != {"0.weight", "2.weight"}:
        missing.append(f"text.proj.0.weight and text.proj.2.weight (found {sorted(parts['text_proj'])})")
    if missing or leftovers:
        raise ConversionError(f"{source}: not a BiomedCLIP-CXR checkpoint: missing {missing or 'nothing'}; "
                              f"unconsumed keys {leftovers[:10] or 'none'}")
    return parts


def convert_biomedclip(release_dir: str | Path, text_base: str | Path, out_dir: str | Path, *,
                       num_attention_heads: int | None = 12, context_length: int = 256) -> Path:
    """Write a CLIP folder (image + text tower, heads, logit scale) from the released checkpoint.

    ``text_base`` is a local microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract folder (config and
    tokenizer; its weights are replaced by the release's text tower).
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel, Dinov2Config, Dinov2Model

    from llavarad.model.clip import CxrClip, CxrClipConfig, save_clip
    from llavarad.model.processor import build_image_processor

    release_dir, text_base = Path(release_dir), Path(text_base)
    path = release_dir / VISION_FILE if release_dir.is_dir() else release_dir
    if not path.is_file():
        raise ConversionError(f"{path} not found: pass the folder holding {VISION_FILE} (microsoft/llava-rad)")
    if not (text_base / "config.json").is_file():
        raise ConversionError(f"text base {text_base} has no config.json: pass a local BiomedBERT folder "
                              "(microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) with its tokenizer")
    parts = split_biomedclip(load_torch_file(path), str(path))

    vstate, vcfg = timm_trunk_to_dinov2(parts["trunk"], num_attention_heads=num_attention_heads, source=str(path))
    vision = Dinov2Model(Dinov2Config(**vcfg))
    _load(vision, vstate, f"{path} (image tower)")
    with torch.no_grad():
        vision.embeddings.mask_token.zero_()  # not in the checkpoint and never used at inference

    tcfg = AutoConfig.from_pretrained(text_base)
    if tcfg.model_type != "bert":
        raise ConversionError(f"{text_base}: model_type {tcfg.model_type!r}, expected 'bert' (BiomedBERT)")
    text = BertModel(BertConfig(**tcfg.to_dict()), add_pooling_layer=False)
    _load(text, parts["text"], f"{path} (text tower)")
    tokenizer = AutoTokenizer.from_pretrained(text_base)

    head, p0, p2 = parts["image_proj"], parts["text_proj"]["0.weight"], parts["text_proj"]["2.weight"]
    if head.shape[1] != vision.config.hidden_size or p0.shape[1] != text.config.hidden_size or p2.shape[0] != head.shape[0]:
        raise ConversionError(f"{path}: head shapes image {tuple(head.shape)}, text {tuple(p0.shape)} / "
                              f"{tuple(p2.shape)} do not fit towers of width {vision.config.hidden_size} / "
                              f"{text.config.hidden_size}")
    cfg = CxrClipConfig(image_size=int(vcfg["image_size"]), embed_dim=int(head.shape[0]), context_length=context_length,
                        text_proj="mlp", text_proj_hidden=int(p0.shape[0]),
                        vision_width=int(vision.config.hidden_size), text_width=int(text.config.hidden_size),
                        extra={"init": {"converted_from": str(path), "text_base": str(text_base)}})
    clip = CxrClip(cfg, vision, text, tokenizer, build_image_processor(cfg.image_size))
    with torch.no_grad():
        clip.image_proj.weight.copy_(head)
        clip.text_proj[0].weight.copy_(p0)
        clip.text_proj[2].weight.copy_(p2)
        clip.logit_scale.copy_(torch.as_tensor(parts["logit_scale"]).reshape(()))
    out = save_clip(clip, out_dir, train_config={"converted_from": "microsoft/llava-rad biomedclipcxr_518",
                                                 "ignored_keys": parts["ignored"]})
    logger.info("converted %s (+ %s) -> %s", path, text_base, out)
    (Path(out) / "llavarad_convert.json").write_text(json.dumps(
        {"kind": "biomedclip", "vision_tensors": len(vstate), "text_tensors": len(parts["text"]),
         "ignored_keys": parts["ignored"]}, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def _load(module, state: dict[str, Any], source: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: e.g. a --text-base of another width or vocabulary
        raise ConversionError(f"{source}: tensors do not fit the tower's config ({str(exc).splitlines()[-1].strip()}); "
                              "for the text tower pass microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract "
                              "as --text-base") from exc
    missing = [k for k in result.missing_keys if k != "embeddings.mask_token"]  # Dinov2's unused mask token
    if missing or result.unexpected_keys:
        raise ConversionError(f"{source}: missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}")
