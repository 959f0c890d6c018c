"""Rendering of synthetic chest radiographs: anatomy layers and finding overlays (numpy + PIL).

Private helper of :mod:`llavarad.phantom`. Everything is drawn in normalised image
coordinates (x to the image right, y down, both in [0, 1]) so that one spec renders the same
picture at any size. Radiological convention: the patient's right is on the image's left, so the
heart sits right of the image centre and "right lung" means the lung on the image's left.

The canvas holds an attenuation-like value (0 = air outside the body, ~0.35 soft tissue, ~0.1
aerated lung, higher for heart, bone, fluid and metal); a fixed, image-independent contrast curve
maps it to 8-bit gray at the end. Findings only add to (or, for pneumothorax, remove from) the
canvas inside their region, so a finding-free rendering of the same spec differs from the full one
only inside the finding masks (plus a blur halo of a pixel or two).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from llavarad.phantom._spec import PhantomSpec

__all__ = ["render"]

from llavarad.phantom._findings import (
    _CARDIO_SCALE,
    _VISIBLE,
    _atelectasis,
    _consolidation,
    _device,
    _edema,
    _effusion,
    _lesion,
    _pneumothorax,
)
from llavarad.phantom._geometry import (
    _as_float,
    _blur,
    _curve,
    _inside,
    _layer,
    _px,
    _Scene,
)


def _heart_field(scene: _Scene, cardiomegaly: str | None) -> np.ndarray:
    """Signed field of the (tilted ellipse) heart, < 0 inside; enlarged towards the patient's left."""
    an = scene.an
    scale = _CARDIO_SCALE.get(cardiomegaly or "", 1.0)
    hw = an.heart_width * scale
    hh = 0.13 * (1.0 + 0.35 * (scale - 1.0))
    cx = scene.mid + 0.045 + 0.55 * (hw - an.heart_width)
    cy = an.dome_left - 0.105 + 0.2 * (hh - 0.13) + an.dy * 0.3
    t = math.radians(an.heart_tilt)
    dx, dy = scene.x - cx, scene.y - cy
    u = (dx * math.cos(t) + dy * math.sin(t)) / hw
    v = (-dx * math.sin(t) + dy * math.cos(t)) / hh
    return np.sqrt(u * u + v * v) - 1.0


def _markings(scene: _Scene, tex_rng: np.random.Generator) -> np.ndarray:
    """Lung markings: vessels branching from the hila, as their own ``(S, S)`` layer (pneumothorax
    erases them)."""
    size = scene.size
    ml, md = _layer(size)
    scale = size / 224
    for side, (lo, hi) in (("right", (100, 260)), ("left", (-80, 80))):
        hx, hy = scene.hilum[side]
        for _ in range(22):
            ang = math.radians(tex_rng.uniform(lo, hi))
            ox, oy = hx + tex_rng.normal(0, 0.015), hy + tex_rng.normal(0, 0.025)
            length = tex_rng.uniform(0.1, 0.28)
            bend = tex_rng.uniform(-0.35, 0.35)
            p2 = (ox + math.cos(ang) * length, oy + math.sin(ang) * length)
            p1 = (ox + math.cos(ang + bend) * length * 0.5, oy + math.sin(ang + bend) * length * 0.5)
            pts = _curve((ox, oy), p1, p2, 6)
            md.line(_px(pts[:4], size), fill=150, width=max(1, round(2.0 * scale)))
            md.line(_px(pts[3:], size), fill=90, width=max(1, round(1.0 * scale)))
            # one side branch from the middle of the vessel
            bx, by = pts[3]
            b_ang = ang + tex_rng.choice([-1, 1]) * tex_rng.uniform(0.3, 0.7)
            bl_ = length * tex_rng.uniform(0.25, 0.45)
            md.line(_px([(bx, by), (bx + math.cos(b_ang) * bl_, by + math.sin(b_ang) * bl_)], size), fill=70,
                    width=max(1, round(1.0 * scale)))
    return _as_float(ml)


def _ribs(scene: _Scene, dome: np.ndarray) -> np.ndarray:
    """Bones: posterior and faint anterior ribs and the clavicles, as a ``(S, S)`` layer."""
    an, size, mid, x1, y = scene.an, scene.size, scene.mid, scene.x1, scene.y
    bl, bd = _layer(size)
    cl, cd = _layer(size)
    rib_w = max(1, round(an.rib_width * size))
    for sgn in (-1.0, 1.0):
        for i in range(10):
            y0 = 0.1 + an.rib_phase + i * an.rib_gap + an.dy
            xs = [mid + sgn * (0.035 + 0.37 * an.thorax_scale * t / 6) for t in range(7)]
            ys = [y0 - 0.035 * math.sin(math.pi * t / 6.6) + 0.1 * (t / 6) ** 2.5 for t in range(7)]
            bd.line(_px(list(zip(xs, ys)), size), fill=255, width=rib_w, joint="curve")
            ya = y0 + 0.035
            ant = _curve((mid + sgn * 0.4 * an.thorax_scale, ya), (mid + sgn * 0.25, ya + 0.02), (mid + sgn * 0.1, ya + 0.1), 4)
            bd.line(_px(ant, size), fill=55, width=rib_w)
        clav = _curve((mid + sgn * 0.04, 0.2 + an.dy), (mid + sgn * 0.17, 0.16 + an.clavicle_tilt), (mid + sgn * 0.36, 0.12 + an.dy), 10)
        cd.line(_px(clav, size), fill=255, width=max(1, round(0.03 * size)), joint="curve")
    ribs = _as_float(bl) * _inside(np.abs(x1 - mid) - 0.45 * an.thorax_scale, 0.02) * (y < dome + 0.04)
    ribs = np.maximum(ribs, 1.6 * _as_float(cl))
    return ribs


def _anatomy(scene: _Scene, cardiomegaly: str | None, tex_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the normal chest; return the canvas and the layers findings need (all ``(S, S)``)."""
    x, y, an, size, px = scene.x, scene.y, scene.an, scene.size, scene.px
    x1, y1 = scene.x1, scene.y1
    mid = scene.mid
    # Body: a rounded torso whose top is cut by sloping shoulders, plus the neck.
    u2 = np.square((x1 - mid) / (0.47 * an.thorax_scale))
    v2 = np.square((y1 - 0.6) / 0.62)
    torso = np.sqrt(np.sqrt(u2 * u2 + v2 * v2)) - 1
    shoulder = 0.06 + 0.16 * np.clip((np.abs(x1 - mid) - 0.1) / 0.38, 0, 1) ** 1.6 - y1
    neck = np.abs(x1 - mid) - 0.11
    body = _inside(torso, 0.02) * np.maximum(_inside(shoulder, 0.02), _inside(neck, 0.015))
    canvas = 0.03 + body * (an.tissue + 0.06 * np.clip(np.abs(x1 - mid) * 2.4 - 0.7, 0, 1))
    dome = scene.dome(x1)
    below = _inside(dome - y, 2.5 * px)
    canvas += below * body * 0.2

    # Mediastinum (narrower on top) and heart.
    half = 0.055 + 0.04 * np.clip((y1 - 0.12) / 0.45, 0, 1)
    medi = _inside(np.abs(x1 - mid - 0.008) - half, 2 * px)
    heart_f = _heart_field(scene, cardiomegaly)
    heart = _inside(heart_f * 0.12, 1.5 * px)
    knob = _inside(np.sqrt((x - mid - 0.055) ** 2 + (y - 0.285 - an.dy) ** 2) - 0.035, 2 * px)
    dense = np.maximum.reduce([medi, heart, knob])

    # Lungs: outline, above the dome, outside heart and mediastinum.
    lungs = {}
    depth = np.zeros_like(x)
    for side in ("right", "left"):
        lf = scene.lung(side).field(x, y)
        lungs[side] = _inside(lf * scene.lung(side).a, 1.5 * px) * (1 - below) * (1 - dense)
        depth += np.clip(-lf * 2.5, 0, 1) * lungs[side]
    lung = lungs["right"] + lungs["left"]
    # Thicker lung (centre) is darker than its rim; apices look whiter (overlying soft tissue).
    air = an.lung_air * (0.72 + 0.28 * depth) * (1.0 - 0.3 * np.clip((0.28 - y1) / 0.18, 0, 1))
    canvas += dense * (1 - below) * an.mediastinum - lung * air

    # Trachea and main bronchi: darker air column.
    tl, td = _layer(size)
    cx, cyc = scene.carina
    w = max(1, round(0.032 * size))
    td.line(_px([(mid, 0.0), (cx, cyc)], size), fill=255, width=w)
    td.line(_px([(cx, cyc), (cx - 0.07, cyc + 0.06)], size), fill=255, width=max(1, round(w * 0.7)))
    td.line(_px([(cx, cyc), (cx + 0.08, cyc + 0.055)], size), fill=255, width=max(1, round(w * 0.7)))
    canvas -= _as_float(tl) * 0.12 * body

    markings = _markings(scene, tex_rng)
    hila = sum(
        np.exp(-(((x1 - hx) / 0.03) ** 2)) * np.exp(-(((y1 - hy) / 0.045) ** 2)) for hx, hy in scene.hilum.values()
    )

    ribs = _ribs(scene, dome)
    spine = _inside(np.abs(x1 - mid) - 0.032, 2 * px)
    canvas += an.bone * (ribs * (1 - 0.5 * dense) + 0.5 * spine) * body + 0.1 * hila * (lung + dense * 0.3)

    if an.breast > 0:
        # Breast shadows: soft-tissue density over the lower lateral chest with a curved lower edge.
        for sgn in (-1.0, 1.0):
            bx, by = mid + sgn * 0.26 * an.thorax_scale, 0.74 + an.dy
            shadow = _inside(np.sqrt(np.square((x1 - bx) / 0.2) + np.square((y1 - by) / 0.13)) - 1, 0.15)
            canvas += an.breast * shadow * body

    if an.gastric_bubble:
        gx = scene.left.cx - 0.02
        gy = an.dome_left + 0.075
        bubble = _inside(np.sqrt(((x - gx) / 0.06) ** 2 + ((y - gy) / 0.035) ** 2) - 1, 0.2)
        canvas -= 0.16 * bubble * below

    return {"canvas": canvas, "lung_right": lungs["right"], "lung_left": lungs["left"], "markings": markings,
            "heart": heart * (1 - below), "dome": dome, "body": body}


# --- findings -------------------------------------------------------------------------------------


def render(spec: PhantomSpec, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render ``spec`` at ``size`` px; ``rng`` supplies only the acquisition noise.

    Returns the ``(size, size)`` uint8 image and ``{finding: (size, size) bool mask}``.
    """
    an = spec.anatomy
    scene = _Scene(spec, size)
    by_name = {f.finding: f for f in spec.findings}
    cardio = by_name.get("cardiomegaly")
    tex_rng = np.random.default_rng(an.texture_seed)
    L = _anatomy(scene, cardio.severity if cardio else None, tex_rng)
    lungs = L["lung_right"] + L["lung_left"]

    def composed() -> np.ndarray:
        return L["canvas"] + an.markings * L["markings"] * lungs

    masks: dict[str, np.ndarray] = {}
    if cardio:
        masks["cardiomegaly"] = L["heart"] > 0.5
    # A finding's mask is its core region plus every pixel it visibly changes (soft edges, tails,
    # erased markings), so a finding-free twin differs only inside the masks (and the blur halo).
    before = composed()
    order = ("pneumothorax", "edema", "consolidation", "atelectasis", "lung_lesion", "pleural_effusion")
    for name in order:
        f = by_name.get(name)
        if f is None:
            continue
        frng = np.random.default_rng(f.seed)
        if name == "pneumothorax":
            core = _pneumothorax(scene, L, f)
        elif name == "edema":
            core = _edema(scene, L, f)
        elif name == "consolidation":
            core = _consolidation(scene, L, f, frng)
        elif name == "atelectasis":
            core = _atelectasis(scene, L, f, frng)
        elif name == "lung_lesion":
            core = _lesion(scene, L, f, frng)
        else:
            core = _effusion(scene, L, f)
        after = composed()
        masks[name] = (core > 0.5) | (np.abs(after - before) > _VISIBLE)
        before = after
    canvas = before
    for f in spec.findings:
        if f.finding in ("endotracheal_tube", "central_line", "chest_tube", "pacemaker"):
            density, core = _device(scene, f, np.random.default_rng(f.seed))
            canvas = canvas + density
            masks[f.finding] = (core > 0.5) | (density > _VISIBLE)
    # Acquisition: blur, a fixed contrast curve, mottle and quantum noise. Noise is drawn in the
    # same order whatever the findings, so a finding-free rendering shares it exactly.
    img = _blur(np.asarray(canvas, dtype=np.float32), an.blur * size / 224)
    img = np.clip((img - an.black) / (an.white - an.black), 0, 1) ** an.gamma
    coarse = rng.normal(0, 1, (12, 12)).astype(np.float32)
    mottle = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    img = img * (1 + an.exposure_tilt * (scene.x - 0.5)) + 0.015 * mottle + rng.normal(0, an.noise, (size, size)).astype(np.float32)
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, masks
