"""Word-level attention maps: where on the image the model looked while writing each word.

While generating greedily, the attention from each generated token (the query at the step that
predicted it) to the image tokens is captured per layer and head. Only the image columns are kept
at each step, and the prompt is pre-filled keeping only its last row's image columns, so nothing
of size ``sequence x sequence`` is ever kept and a 7B model fits in memory. This path alone uses eager
attention (SDPA cannot return weights); the model's own setting is restored afterwards.

Methods (``method=``), each a ``(n_tokens, n_image_tokens)`` map per generated token:

- ``layer``: mean over the heads of one layer (default layer: the relative depth of layer 20 of
  32, which the paper found most coherent); ``layer-head``: one head of that layer;
- ``mean-layers`` / ``max-layers``: mean / maximum over layers of the head means;
- ``rollout``: attention rollout (Abnar & Zuidema 2020): per layer ``0.5 A + 0.5 I`` (head mean),
  multiplied through the layers; the generated token's row, image columns;
- ``grad-attention``: ``A * ReLU(dy/dA)`` (Chefer et al. 2021), y the logit of the generated
  token, mean over heads and layers, image columns;
- ``<method>+tower``: any of the above carried from the image tokens back to the image patches
  through the image tower: times the tower's attention rollout (``0.5 A + 0.5 I`` per layer, head
  mean) up to the layer whose output the projector reads, CLS column dropped. The tower mixes
  patches, so an image token need not carry only its own patch.

``rollout`` and ``grad-attention`` need one extra teacher-forced forward over the prompt and the
generated tokens (forward hooks on the LM's attention modules; ``grad-attention`` adds one
backward per generated token). Rollout keeps only ``sequence x image tokens`` per step of its
recursion; ``grad-attention`` keeps the graph of that forward (a training step's memory).
A word made of several tokens gets the mean of its tokens' maps.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llavarad.model.processor import (
    center_crop_offset,
    pixel_values_for,
    tokenize_prompt,
)
from llavarad.prompts.model import build_prompt

if TYPE_CHECKING:
    from PIL import Image

    from llavarad.model.build import ModelBundle

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Explanation",
    "Method",
    "default_layer",
    "downsample_mask",
    "explain",
    "group_words",
    "image_box",
    "mass_inside",
    "pointing_hit",
]

_LM_METHODS = ("layer", "layer-head", "mean-layers", "max-layers", "rollout", "grad-attention")
#: Every LM method, and each carried back through the image tower ("+tower": the image-token map times
#: the tower's attention rollout from its feature layer to the patches).
METHODS: tuple[str, ...] = _LM_METHODS + tuple(f"{m}+tower" for m in _LM_METHODS)
Method = str
#: Chosen by measurement (benchmarks/grounding.py; docs/attention.md, "Which method").
DEFAULT_METHOD: str = "layer+tower"
_ALIASES = {"layer-mean": "layer", "max-over-layers": "max-layers"}  # the names before methods were added
_GRAD_BYTES = 1 << 28  # gradients of the attention held at once by grad-attention (then chunked)
_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")


def default_layer(num_layers: int) -> int:
    """0-based index of the layer at the relative depth of layer 20 of 32 (index 19 for 32 layers)."""
    return max(0, min(num_layers - 1, int(20 * num_layers / 32 + 0.5) - 1))


@dataclass
class Explanation:
    """Generated text, its words and their maps.

    ``words``: ``{"word", "start", "end", "tokens"}`` with ``text[start:end] == word``;
    ``token_maps``: ``(n_tokens, n_image_tokens)`` under ``method``;
    ``token_layer_maps``: ``(n_tokens, n_layers, n_image_tokens)`` head-mean attention per layer;
    ``token_head_maps``: ``(n_tokens, n_heads, n_image_tokens)`` for ``layer`` (every head);
    ``word_maps``: ``(n_words, grid, grid)``, row-major: ``[r, c]`` is the processed image's cell
    (r, c); ``image_box``: the part of the original image that grid covers, as fractions
    ``(left, top, right, bottom)`` of its width and height (the centre crop; beyond 0..1 when padded).
    """

    text: str
    token_ids: list[int]
    words: list[dict[str, Any]]
    word_maps: np.ndarray
    token_maps: np.ndarray
    token_layer_maps: np.ndarray
    token_head_maps: np.ndarray
    grid: int
    layer: int
    head: int | None
    method: str
    image_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    settings: dict[str, Any] = field(default_factory=dict)
    method_maps: dict[str, np.ndarray] = field(default_factory=dict)

    def word_maps_for(self, method: str) -> np.ndarray:
        """``(n_words, grid, grid)`` under ``method`` (``self.method`` or one of ``explain``'s ``extra_methods``)."""
        method = _ALIASES.get(method, method)
        if method not in self.method_maps:
            raise KeyError(f"method {method!r} was not computed; pass it to explain(..., extra_methods=...)")
        return _word_maps(self.method_maps[method], self.words, self.grid)

    def map_for(self, word: str) -> np.ndarray | None:
        """Mean map of every occurrence of ``word`` (case-insensitive), or None if absent."""
        idx = [i for i, w in enumerate(self.words) if w["word"].lower() == word.lower()]
        return self.word_maps[idx].mean(axis=0) if idx else None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "grid": self.grid, "layer": self.layer, "head": self.head,
                "method": self.method, "image_box": list(self.image_box), "settings": self.settings,
                "words": [{**w, "map": self.word_maps[i].round(6).tolist()} for i, w in enumerate(self.words)]}


def group_words(tokenizer, token_ids: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """Split decoded text into words and map each word to the generated tokens that spell it.

    Token character spans come from decoding growing prefixes, which works for byte-level BPE
    and sentencepiece alike; a word is a run of letters/digits (with inner ``-`` or ``'``). The
    returned text is stripped (a first token usually decodes with its leading space) and every
    span is relative to it, so ``text[w["start"]:w["end"]] == w["word"]``.
    """
    spans: list[tuple[int, int]] = []
    prev = ""
    for k in range(len(token_ids)):
        text_k = tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)
        spans.append((len(prev), len(text_k)))
        prev = text_k
    lead = len(prev) - len(prev.lstrip())
    text = prev.strip()
    words = []
    for m in _WORD.finditer(text):
        a, b = m.start() + lead, m.end() + lead  # the word's span in the unstripped decoding
        toks = [k for k, (s, e) in enumerate(spans) if s < b and e > a]
        if toks:
            words.append({"word": m.group(0), "start": m.start(), "end": m.end(), "tokens": toks})
    return text, words


def image_box(size: tuple[int, int], image_processor, aspect: str = "crop") -> tuple[float, float, float, float]:
    """The part of a ``(width, height)`` image that the model's square input shows, as fractions.

    ``crop``: the shortest side is resized to the input size (the long side to ``int(size * long /
    short)``, as torchvision and transformers do) and the centre is cropped with
    :func:`llavarad.model.processor.center_crop_offset`; ``pad``: the image sits centred on a
    square of side ``max(w, h)``; a processor without centre crop squashes the whole image.
    """
    w, h = size
    if aspect == "pad":
        side = max(w, h)
        x0, y0 = -((side - w) // 2), -((side - h) // 2)
        return (x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h)
    if aspect != "crop":
        raise ValueError(f"image aspect handling {aspect!r} must be 'crop' or 'pad'")
    if not getattr(image_processor, "do_center_crop", False):
        return (0.0, 0.0, 1.0, 1.0)
    crop_h, crop_w = int(image_processor.crop_size["height"]), int(image_processor.crop_size["width"])
    short = int(image_processor.size["shortest_edge"])
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    top, left = center_crop_offset(new_h, crop_h), center_crop_offset(new_w, crop_w)
    return (left / new_w, top / new_h, (left + crop_w) / new_w, (top + crop_h) / new_h)


def _resolve(bundle: ModelBundle, method: str, layer: int | None, head: int | None) -> tuple[str, int]:
    text_cfg = bundle.model.config.text_config
    n_layers, n_heads = text_cfg.num_hidden_layers, text_cfg.num_attention_heads
    method = _ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"method {method!r} must be one of {', '.join(METHODS)}")
    layer = default_layer(n_layers) if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"head {head} is outside 0..{n_heads - 1}")
    if method.removesuffix("+tower") == "layer-head" and head is None:
        raise ValueError("method 'layer-head' needs --head")
    return method, layer


def _generate_capturing(model, input_ids, pixel_values, image_cols, layer: int, max_new_tokens: int, eos):
    """Greedy decoding that keeps, per step, the image columns of each layer's attention row.

    The prompt is pre-filled in one forward whose hooks keep only its last row's image columns
    (that row predicts the first token; the prompt may end with the image, as in "plain");
    each later step returns its single attention row per layer.
    """
    import torch

    layer_maps: list[np.ndarray] = []
    head_maps: list[np.ndarray] = []
    generated: list[int] = []
    device = input_ids.device
    cols = image_cols.to(device)
    rows: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: rows.append(out[1][0, :, -1, cols].float()))
               for m in _attention_modules(model)]
    try:
        with torch.inference_mode():
            out = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    per_layer = torch.stack(rows)  # (layers, heads, n_image)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            if nxt == eos:
                break
            layer_maps.append(per_layer.mean(dim=1).cpu().numpy())
            head_maps.append(per_layer[layer].cpu().numpy())
            generated.append(nxt)
            if len(generated) == max_new_tokens:
                break
            out = model(input_ids=torch.tensor([[nxt]], device=device), cache=out.cache, use_cache=True,
                        output_attentions=True)
            # each layer: (1, heads, 1, kv_len) -> keep image columns only -> (heads, n_image)
            per_layer = torch.stack([a[0, :, -1, cols].float() for a in out.attentions])
    return generated, layer_maps, head_maps


def _attention_modules(model) -> list[Any]:
    return [blk.self_attn for blk in model.model.language_model.layers]


def _rollout(model, full_ids, pixel_values, image_cols, queries) -> np.ndarray:
    """Rollout rows of ``queries`` over the image columns, from one forward over ``full_ids``.

    The recursion ``R <- (0.5 A_l + 0.5 I) R`` runs bottom-up inside forward hooks on the image
    columns of ``R`` only (``sequence x image tokens``), starting from the identity's image columns.
    """
    import torch

    seq = full_ids.shape[1]
    state = {"R": torch.eye(seq, dtype=torch.float32, device=full_ids.device)[:, image_cols]}

    def hook(_module, _args, output):
        a = output[1][0].float().mean(dim=0)  # (seq, seq) head mean
        state["R"] = 0.5 * (a @ state["R"]) + 0.5 * state["R"]

    handles = [m.register_forward_hook(hook) for m in _attention_modules(model)]
    try:
        with torch.inference_mode():
            model(input_ids=full_ids, pixel_values=pixel_values, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return state["R"][queries].cpu().numpy()


def _grad_attention(model, full_ids, pixel_values, image_cols, queries, targets) -> np.ndarray:
    """``mean over layers and heads of A * ReLU(dy/dA)`` at each query row, image columns; y = the
    logit of the token that query predicted."""
    import torch

    weights: list[torch.Tensor] = []

    def keep(_module, _args, output):
        weights.append(output[1])

    def needs_grad(_module, _args, output):  # a frozen model: let gradients reach the attention
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handles = [m.register_forward_hook(keep) for m in _attention_modules(model)]
    handles.append(model.get_input_embeddings().register_forward_hook(needs_grad))
    try:
        with torch.enable_grad():
            logits = model(input_ids=full_ids, pixel_values=pixel_values, use_cache=False).logits[0]
            seq, heads = full_ids.shape[1], weights[0].shape[1]
            chunk = max(1, _GRAD_BYTES // (4 * heads * seq * seq * len(weights)))
            cols = image_cols.to(logits.device)
            rows = []
            for start in range(0, len(queries), chunk):  # one backward per token, batched (vmap) by chunks
                q = torch.tensor(queries[start:start + chunk], device=logits.device)
                y = logits[q, torch.tensor(targets[start:start + chunk], device=logits.device)]
                grads = torch.autograd.grad(y, weights, torch.eye(len(q), dtype=y.dtype, device=y.device),
                                            retain_graph=True, is_grads_batched=True)
                k = torch.arange(len(q), device=logits.device)
                per_layer = [(a[0][:, q][:, :, cols].transpose(0, 1) * g[:, 0][k, :, q][:, :, cols].clamp(min=0))
                             .float().mean(1) for a, g in zip(weights, grads)]
                rows.append(torch.stack(per_layer).mean(0).detach().cpu().numpy())
            return np.concatenate(rows) if rows else np.zeros((0, len(image_cols)), np.float32)
    finally:
        for h in handles:
            h.remove()


def _tower_rollout(model, pixel_values) -> np.ndarray:
    """``(n_image_tokens, n_patches)``: how much of each image token comes from each patch, by attention
    rollout through the tower's layers up to ``vision_feature_layer`` (CLS row and column dropped)."""
    import torch

    layers = model.model.vision_tower.encoder.layer
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError(f"+tower methods need one vision_feature_layer, not {feature_layer!r}")  # noqa: TRY004
    used = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
    state: dict[str, Any] = {"R": None}

    def hook(_module, _args, output):
        a = output[1][0].float().mean(dim=0)
        eye = torch.eye(a.shape[0], device=a.device)
        state["R"] = (0.5 * a + 0.5 * eye) @ (eye if state["R"] is None else state["R"])

    handles = [blk.attention.register_forward_hook(hook) for blk in layers[:used]]
    try:
        with torch.inference_mode():
            model.model.vision_tower(pixel_values)
    finally:
        for h in handles:
            h.remove()
    n = int(model.config.image_seq_length)
    if state["R"] is None:  # the projector reads the patch embeddings themselves
        return np.eye(n, dtype=np.float32)
    out = state["R"][1:, 1:].cpu().numpy()
    if out.shape[0] != n:
        raise ValueError(f"the tower rollout has {out.shape[0]} patch tokens, the model {n} image tokens")
    return out


def _token_maps(method: str, layer: int, head: int | None, token_layer: np.ndarray, token_head: np.ndarray,
                full_pass) -> np.ndarray:
    if method.endswith("+tower"):
        return _token_maps(method.removesuffix("+tower"), layer, head, token_layer, token_head, full_pass) @ \
            full_pass("tower")
    if method == "layer":
        return token_layer[:, layer]
    if method == "layer-head":
        return token_head[:, head]
    if method == "mean-layers":
        return token_layer.mean(axis=1)
    if method == "max-layers":
        return token_layer.max(axis=1)
    return full_pass(method)


def _word_maps(per_token: np.ndarray, words: list[dict[str, Any]], grid: int) -> np.ndarray:
    if not words:
        return np.zeros((0, grid, grid), np.float32)
    return np.stack([per_token[w["tokens"]].mean(axis=0) for w in words]).reshape(-1, grid, grid).astype(np.float32)


def explain(bundle: ModelBundle, image: Image.Image, indication: str | None = None, *, max_new_tokens: int = 128,
            layer: int | None = None, head: int | None = None, method: str = DEFAULT_METHOD,
            extra_methods: tuple[str, ...] = ()) -> Explanation:
    """Generate greedily for one image and return word-level attention maps over the image grid.

    ``method``: one of :data:`METHODS` (default :data:`DEFAULT_METHOD`) for ``word_maps``;
    ``extra_methods``: more methods computed from the same generation, read with
    :meth:`Explanation.word_maps_for`.
    """
    import torch

    model = bundle.model
    method, layer = _resolve(bundle, method, layer, head)
    names = [method] + [m for m in (_resolve(bundle, e, layer, head)[0] for e in extra_methods) if m != method]
    ids = tokenize_prompt(bundle.tokenizer, build_prompt(bundle.prompt_format, indication=indication).prompt,
                          bundle.num_image_tokens, bundle.image_token_id)
    image_cols = torch.tensor([i for i, t in enumerate(ids) if t == bundle.image_token_id])
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixel_values = pixel_values_for([image], bundle.image_processor, bundle.image_aspect_ratio).to(device, dtype)
    input_ids = torch.tensor([ids], device=device)

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        generated, layer_maps, head_maps = _generate_capturing(model, input_ids, pixel_values, image_cols, layer,
                                                               max_new_tokens, bundle.tokenizer.eos_token_id)
        full_ids = torch.tensor([ids + generated[:-1]], device=device) if generated else input_ids
        queries = [len(ids) - 1 + k for k in range(len(generated))]

        done: dict[str, np.ndarray] = {}  # each extra pass runs once, however many methods use it

        def full_pass(name: str) -> np.ndarray:
            if name not in done:
                if name == "tower":
                    done[name] = _tower_rollout(model, pixel_values)
                elif not generated:
                    done[name] = np.zeros((0, len(image_cols)), np.float32)
                elif name == "rollout":
                    done[name] = _rollout(model, full_ids, pixel_values, image_cols.to(device), queries)
                else:
                    done[name] = _grad_attention(model, full_ids, pixel_values, image_cols.to(device), queries,
                                                 generated)
            return done[name]

        n_layers = model.config.text_config.num_hidden_layers
        n_heads = model.config.text_config.num_attention_heads
        n_img = len(image_cols)
        token_layer = np.stack(layer_maps) if layer_maps else np.zeros((0, n_layers, n_img), np.float32)
        token_head = np.stack(head_maps) if head_maps else np.zeros((0, n_heads, n_img), np.float32)
        maps = {name: _token_maps(name, layer, head, token_layer, token_head, full_pass).astype(np.float32)
                for name in dict.fromkeys(names)}
    finally:
        model.set_attn_implementation(previous)

    grid = bundle.preset.grid_size
    text, words = group_words(bundle.tokenizer, generated)
    settings = {"max_new_tokens": max_new_tokens, "prompt_format": bundle.prompt_format, "decoding": "greedy",
                "word_aggregation": "mean over the word's tokens", "query": "the step that predicted each token"}
    box = image_box(image.size, bundle.image_processor, bundle.image_aspect_ratio)
    return Explanation(text, generated, words, _word_maps(maps[method], words, grid), maps[method],
                       token_layer.astype(np.float32), token_head.astype(np.float32), grid, layer, head, method,
                       box, settings, maps)


def downsample_mask(mask: np.ndarray, grid: int, box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
                    ) -> np.ndarray:
    """Binary image mask -> ``(grid, grid)`` bool over ``box`` (an :class:`Explanation`'s ``image_box``):
    a cell is inside if any of its pixels is (max-pool); cells outside the image are never inside."""
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    cols = np.round(np.linspace(box[0] * w, box[2] * w, grid + 1)).astype(int)
    rows = np.round(np.linspace(box[1] * h, box[3] * h, grid + 1)).astype(int)
    out = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        r0, r1 = max(rows[i], 0), min(max(rows[i + 1], rows[i] + 1), h)
        for j in range(grid):
            c0, c1 = max(cols[j], 0), min(max(cols[j + 1], cols[j] + 1), w)
            out[i, j] = r1 > r0 and c1 > c0 and bool(mask[r0:r1, c0:c1].any())
    return out


def pointing_hit(attn_map: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game: does the map's peak cell fall inside the region?"""
    return bool(region.reshape(-1)[int(np.argmax(attn_map.reshape(-1)))])


def mass_inside(attn_map: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's attention mass inside the region (0 when the map is all zero)."""
    total = float(attn_map.sum())
    return float(attn_map[region].sum() / total) if total > 0 else 0.0
