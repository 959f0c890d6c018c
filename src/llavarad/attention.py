"""Word-level attention maps: where on the image the model looked while writing each word.

While generating greedily, the attention from each generated token (the query at the step that
predicted it) to the image tokens is captured per layer and head. Only the image columns are kept
at each step, and the prompt is pre-filled without attention outputs, so nothing of size
``sequence x sequence`` is ever materialised and a 7B model fits in memory. This path alone uses
eager attention (SDPA cannot return weights); the model's own setting is restored afterwards.

Aggregation follows the paper: the mean over the heads of one layer (default: the layer at the
same relative depth as layer 20 of 32, which the paper found most coherent), or the maximum over
layers of the head means, or any single layer/head. A word made of several tokens gets the mean of
its tokens' maps.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llavarad.model.processor import pixel_values_for, tokenize_prompt
from llavarad.prompts.model import build_prompt

if TYPE_CHECKING:
    from PIL import Image

    from llavarad.model.build import ModelBundle

logger = logging.getLogger(__name__)

__all__ = [
    "Aggregate",
    "Explanation",
    "default_layer",
    "downsample_mask",
    "explain",
    "group_words",
    "mass_inside",
    "pointing_hit",
]

Aggregate = Literal["layer-mean", "max-over-layers", "layer-head"]
_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")


def default_layer(num_layers: int) -> int:
    """0-based index of the layer at the relative depth of layer 20 of 32 (index 19 for 32 layers)."""
    return max(0, min(num_layers - 1, int(20 * num_layers / 32 + 0.5) - 1))


@dataclass
class Explanation:
    """Generated text, its words and their maps.

    ``token_layer_maps``: ``(n_tokens, n_layers, n_image_tokens)`` head-mean attention per layer;
    ``token_head_maps``: ``(n_tokens, n_heads, n_image_tokens)`` for ``layer`` (every head);
    ``word_maps``: ``(n_words, grid, grid)`` under the chosen aggregation.
    """

    text: str
    token_ids: list[int]
    words: list[dict[str, Any]]
    word_maps: np.ndarray
    token_layer_maps: np.ndarray
    token_head_maps: np.ndarray
    grid: int
    layer: int
    head: int | None
    aggregate: str
    settings: dict[str, Any] = field(default_factory=dict)

    def map_for(self, word: str) -> np.ndarray | None:
        """Mean map of every occurrence of ``word`` (case-insensitive), or None if absent."""
        idx = [i for i, w in enumerate(self.words) if w["word"].lower() == word.lower()]
        return self.word_maps[idx].mean(axis=0) if idx else None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "grid": self.grid, "layer": self.layer, "head": self.head,
                "aggregate": self.aggregate, "settings": self.settings,
                "words": [{**w, "map": self.word_maps[i].round(6).tolist()} for i, w in enumerate(self.words)]}


def group_words(tokenizer, token_ids: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """Split decoded text into words and map each word to the generated tokens that spell it.

    Token character spans come from decoding growing prefixes, which works for byte-level BPE
    and sentencepiece alike; a word is a run of letters/digits (with inner ``-`` or ``'``).
    """
    spans: list[tuple[int, int]] = []
    prev = ""
    for k in range(len(token_ids)):
        text_k = tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)
        spans.append((len(prev), len(text_k)))
        prev = text_k
    text = prev
    words = []
    for m in _WORD.finditer(text):
        toks = [k for k, (a, b) in enumerate(spans) if a < m.end() and b > m.start()]
        if toks:
            words.append({"word": m.group(0), "start": m.start(), "end": m.end(), "tokens": toks})
    return text, words


def _aggregate(token_layer: np.ndarray, token_head: np.ndarray, aggregate: str, layer: int) -> np.ndarray:
    if aggregate == "layer-mean":
        return token_layer[:, layer]
    if aggregate == "max-over-layers":
        return token_layer.max(axis=1)
    if aggregate == "layer-head":
        return token_head
    raise ValueError(f"aggregate {aggregate!r} must be one of layer-mean, max-over-layers, layer-head")


def explain(bundle: ModelBundle, image: Image.Image, indication: str | None = None, *, max_new_tokens: int = 128,
            layer: int | None = None, head: int | None = None, aggregate: Aggregate = "layer-mean") -> Explanation:
    """Generate greedily for one image and return word-level attention maps over the image grid."""
    import torch

    model = bundle.model
    n_layers = model.config.text_config.num_hidden_layers
    n_heads = model.config.text_config.num_attention_heads
    layer = default_layer(n_layers) if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"head {head} is outside 0..{n_heads - 1}")
    if aggregate == "layer-head" and head is None:
        raise ValueError("aggregate 'layer-head' needs --head")
    fmt = bundle.prompt_format
    ids = tokenize_prompt(bundle.tokenizer, build_prompt(fmt, indication=indication).prompt, bundle.num_image_tokens,
                          bundle.image_token_id)
    image_cols = torch.tensor([i for i, t in enumerate(ids) if t == bundle.image_token_id])
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixel_values = pixel_values_for([image], bundle.image_processor, bundle.image_aspect_ratio).to(device, dtype)
    input_ids = torch.tensor([ids], device=device)
    eos = bundle.tokenizer.eos_token_id

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    layer_maps: list[np.ndarray] = []
    head_maps: list[np.ndarray] = []
    generated: list[int] = []
    try:
        with torch.inference_mode():
            # Pre-fill all but the last prompt token without attention outputs (no L x L weights kept).
            out = model(input_ids=input_ids[:, :-1], pixel_values=pixel_values, use_cache=True)
            cache, cur = out.cache, input_ids[:, -1:]
            for _ in range(max_new_tokens):
                out = model(input_ids=cur, cache=cache, use_cache=True, output_attentions=True)
                cache = out.cache
                # each layer: (1, heads, 1, kv_len) -> keep image columns only -> (heads, n_image)
                per_layer = torch.stack([a[0, :, -1, image_cols.to(a.device)].float() for a in out.attentions])
                layer_maps.append(per_layer.mean(dim=1).cpu().numpy())
                head_maps.append(per_layer[layer].cpu().numpy())
                nxt = int(out.logits[0, -1].argmax())
                if nxt == eos:
                    layer_maps.pop()
                    head_maps.pop()
                    break
                generated.append(nxt)
                cur = torch.tensor([[nxt]], device=device)
    finally:
        model.set_attn_implementation(previous)

    grid = bundle.preset.grid_size
    text, words = group_words(bundle.tokenizer, generated)
    token_layer = np.stack(layer_maps) if layer_maps else np.zeros((0, n_layers, grid * grid), np.float32)
    token_head = np.stack(head_maps) if head_maps else np.zeros((0, n_heads, grid * grid), np.float32)
    per_token = _aggregate(token_layer, token_head, aggregate, layer)
    if aggregate == "layer-head":
        per_token = per_token[:, head]
    word_maps = np.stack([per_token[w["tokens"]].mean(axis=0) for w in words]).reshape(-1, grid, grid) if words \
        else np.zeros((0, grid, grid), np.float32)
    settings = {"max_new_tokens": max_new_tokens, "prompt_format": fmt, "decoding": "greedy",
                "word_aggregation": "mean over the word's tokens", "query": "the step that predicted each token"}
    return Explanation(text.strip(), generated, words, word_maps.astype(np.float32), token_layer.astype(np.float32),
                       token_head.astype(np.float32), grid, layer, head, aggregate, settings)


def downsample_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """Binary image mask -> ``(grid, grid)`` bool: a cell is inside if any of its pixels is (max-pool)."""
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    rows = np.linspace(0, h, grid + 1).astype(int)
    cols = np.linspace(0, w, grid + 1).astype(int)
    out = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        for j in range(grid):
            out[i, j] = mask[rows[i]:max(rows[i + 1], rows[i] + 1), cols[j]:max(cols[j + 1], cols[j] + 1)].any()
    return out


def pointing_hit(attn_map: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game: does the map's peak cell fall inside the region?"""
    return bool(region.reshape(-1)[int(np.argmax(attn_map.reshape(-1)))])


def mass_inside(attn_map: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's attention mass inside the region (0 when the map is all zero)."""
    total = float(attn_map.sum())
    return float(attn_map[region].sum() / total) if total > 0 else 0.0
