"""Render word-level attention maps: PNG overlays and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from llavarad.attention import Explanation

__all__ = ["overlay", "write_explanation"]


def _heat_rgb(values: np.ndarray) -> np.ndarray:
    """A small perceptual-ish colour ramp (black-blue-red-yellow) without matplotlib: (H, W) -> (H, W, 3)."""
    stops = np.array([[0, 0, 0], [40, 40, 200], [220, 40, 40], [255, 230, 60]], dtype=np.float32)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = (x - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def overlay(image: Image.Image, attn_map: np.ndarray, alpha: float = 0.5,
            box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> Image.Image:
    """Blend a ``(grid, grid)`` map, min-max normalised and upsampled bicubically, over the image.

    ``box``: where the grid lies on ``image``, as fractions of its width and height (an
    :class:`~llavarad.attention.Explanation`'s ``image_box``: the centre crop the model saw). The
    heat covers that box only; what the crop cut off is left as it is.
    """
    base = image.convert("RGB")
    m = attn_map.astype(np.float32)
    span = float(m.max() - m.min())
    m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    w, h = base.size
    x0, y0 = round(box[0] * w), round(box[1] * h)
    bw, bh = max(1, round(box[2] * w) - x0), max(1, round(box[3] * h) - y0)
    up = Image.fromarray((m * 255).astype(np.uint8)).resize((bw, bh), Image.Resampling.BICUBIC)
    heat = base.copy()
    heat.paste(Image.fromarray(_heat_rgb(np.asarray(up, dtype=np.float32) / 255.0)), (x0, y0))
    where = Image.new("L", base.size, 0)
    where.paste(round(alpha * 255), (x0, y0, x0 + bw, y0 + bh))
    return Image.composite(heat, base, where)


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_explanation(expl: Explanation, image: Image.Image, out_dir: str | Path, *, size: int = 384) -> Path:
    """Write ``explanation.json``, ``overlays/NNN_word.png`` and a self-contained ``index.html``."""
    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    shown = image.convert("RGB")
    shown.thumbnail((size, size))
    (out / "explanation.json").write_text(json.dumps(expl.to_dict(), indent=1) + "\n", encoding="utf-8")
    uris = []
    for i, w in enumerate(expl.words):
        ov = overlay(shown, expl.word_maps[i], box=expl.image_box)
        safe = "".join(c for c in w["word"] if c.isalnum() or c in "-_")[:40] or "word"
        ov.save(out / "overlays" / f"{i:03d}_{safe}.png")
        uris.append(_data_uri(ov))
    pieces, cursor = [], 0
    for i, w in enumerate(expl.words):
        pieces.append(html.escape(expl.text[cursor:w["start"]]))
        pieces.append(f'<a href="#" data-i="{i}" onclick="show({i});return false;">{html.escape(w["word"])}</a>')
        cursor = w["end"]
    pieces.append(html.escape(expl.text[cursor:]))
    base = expl.method.removesuffix("+tower")
    agg = expl.method + (f", layer {expl.layer}" if base in ("layer", "layer-head") else "") + (
        f", head {expl.head}" if base == "layer-head" else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>llavarad attention</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} a{{color:#036;text-decoration:none;
border-bottom:1px dotted}} a.on{{background:#fd6}} img{{width:{size}px;border:1px solid #999}} .r{{line-height:1.8}}</style>
</head><body><h1>Generated findings, word by word</h1><p>Click a word to see where the model attended
({html.escape(agg)}; maps min-max normalised per word).</p>
<div style="display:flex;gap:2em"><div><img id="view" src="{_data_uri(shown)}" alt="chest X-ray"><p id="cap">image</p></div>
<p class="r">{''.join(pieces)}</p></div>
<script>const maps={json.dumps(uris)};const base=document.getElementById('view').src;
function show(i){{document.querySelectorAll('a').forEach(a=>a.classList.toggle('on',a.dataset.i==i));
document.getElementById('view').src=maps[i];document.getElementById('cap').textContent=document.querySelector('a[data-i="'+i+'"]').textContent;}}
</script></body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out
