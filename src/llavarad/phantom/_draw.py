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

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from llavarad.phantom import FindingSpec, PhantomSpec

__all__ = ["render"]

_CARDIO_SCALE = {"mild": 1.2, "moderate": 1.36, "severe": 1.52}
_PTX_DEPTH = {"small": 0.05, "moderate": 0.095, "large": 0.15}
_EFFUSION_LEVEL = {"small": 0.15, "moderate": 0.23, "large": 0.36}
_CONSOL_RADIUS = {"small": 0.055, "moderate": 0.072, "large": 0.095}
_EDEMA = {"mild": (0.13, 0.1, 0.13), "moderate": (0.17, 0.12, 0.155), "severe": (0.22, 0.145, 0.18)}
_ATEL_WIDTH = {"mild": 0.026, "moderate": 0.036, "severe": 0.05}
_LESION_RADIUS = {"small": 0.026, "moderate": 0.038, "large": 0.06}
#: Canvas change (about 2 gray levels) above which a pixel counts as changed by a finding.
_VISIBLE = 0.006
_ZONE_Y = {"upper": 0.25, "middle": 0.44, "lower": 0.6}


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(X, Y)``, each ``(size, size)`` float32 in [0, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=64)
def _kernel(sigma_q: int) -> np.ndarray:
    """Normalised 1-D Gaussian taps for sigma = ``sigma_q / 20`` pixels (radius 3 sigma)."""
    sigma = sigma_q / 20.0
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a ``(S, S)`` float image (edge pixels replicated)."""
    q = int(round(sigma_px * 20))
    if q < 4:
        return img
    taps = _kernel(q)
    r = len(taps) // 2
    padded = np.pad(img, r, mode="edge")
    n = img.shape[0]
    rows = taps[0] * padded[:, 0:n]
    for k in range(1, len(taps)):
        rows = rows + taps[k] * padded[:, k : k + n]
    out = taps[0] * rows[0:n, :]
    for k in range(1, len(taps)):
        out = out + taps[k] * rows[k : k + n, :]
    return out


def _inside(f: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``f < 0`` with a linear edge ``width`` wide (anti-aliased shapes)."""
    return np.clip(0.5 - f / width, 0.0, 1.0)


def _layer(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (size, size), 0)
    return img, ImageDraw.Draw(img)


def _px(points: list[tuple[float, float]], size: int) -> list[tuple[float, float]]:
    return [(x * size, y * size) for x, y in points]


def _as_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def _curve(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 12) -> list[tuple[float, float]]:
    """Quadratic Bezier from ``p0`` to ``p2`` pulled towards ``p1``."""
    out = []
    for i in range(n + 1):
        t = i / n
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


@dataclass
class _Lung:
    """One lung's outline: a rounded apex on top of near-vertical sides, cut by the dome below."""

    cx: float
    cy: float
    a: float
    b: float
    sign: float  # -1 for the patient's right lung (image left), +1 for the left lung

    def field(self, x: np.ndarray, y: np.ndarray, *, shrink_top: float = 0.0, shrink_lat: float = 0.0) -> np.ndarray:
        """Signed outline function in units of the half-width (< 0 inside), optionally collapsed."""
        a = self.a - shrink_lat
        cx = self.cx - self.sign * shrink_lat  # collapse keeps the medial side fixed
        cy, b = self.cy + shrink_top, self.b - shrink_top
        u = (x - cx) / a
        v = np.minimum((y - cy) / b, 0.0)
        # Below the equator the sides run almost vertically down to the costophrenic angles.
        taper = 1.0 + 0.12 * np.clip((y - cy) / b, 0.0, None)
        return np.sqrt(u * u * taper * taper + v * v) - 1.0

    @property
    def lateral_x(self) -> float:
        return self.cx + self.sign * self.a

    @property
    def medial_x(self) -> float:
        return self.cx - self.sign * self.a


class _Scene:
    """Geometry and canvas of one phantom while it is being drawn."""

    def __init__(self, spec: PhantomSpec, size: int):
        an = spec.anatomy
        self.size = size
        self.px = 1.0 / size
        self.x, self.y = _grid(size)
        # Row/column vectors: separable expressions broadcast from these instead of full grids.
        self.x1, self.y1 = self.x[:1, :], self.y[:, :1]
        self.an = an
        self.mid = 0.5 + an.dx
        sx = an.thorax_scale
        self.right = _Lung(0.315 + an.dx - 0.005 * (sx - 1), 0.47 + an.dy, 0.175 * sx, 0.355 * an.lung_height, -1.0)
        self.left = _Lung(0.685 + an.dx + 0.005 * (sx - 1), 0.47 + an.dy, 0.168 * sx, 0.355 * an.lung_height, 1.0)
        self.carina = (self.mid, 0.375 + an.dy)
        self.hilum = {"right": (self.mid - 0.085, 0.45 + an.dy), "left": (self.mid + 0.09, 0.44 + an.dy)}

    # --- geometry helpers -------------------------------------------------------------------
    def dome(self, x: np.ndarray) -> np.ndarray:
        """y of the diaphragm surface under each x (the right hemidiaphragm sits higher)."""
        an = self.an
        r = an.dome_right + 0.13 * ((x - (self.right.cx + 0.01)) / 0.2) ** 2
        lft = an.dome_left + 0.13 * ((x - (self.left.cx - 0.01)) / 0.2) ** 2
        return np.where(x < self.mid, r, lft)

    def lung(self, side: str) -> _Lung:
        return self.right if side == "right" else self.left

    def sides(self, side: str | None) -> tuple[str, ...]:
        return ("right", "left") if side in (None, "bilateral") else (side,)


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

    # Lung markings: vessels branching from the hila (separate layer; pneumothorax erases them).
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
    markings = _as_float(ml)
    hila = sum(
        np.exp(-(((x1 - hx) / 0.03) ** 2)) * np.exp(-(((y1 - hy) / 0.045) ** 2)) for hx, hy in scene.hilum.values()
    )

    # Bones: posterior and faint anterior ribs, clavicles, spine.
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
def _zone_point(scene: _Scene, lung: np.ndarray, side: str, zone: str, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A point well inside ``lung`` in the given zone (upper/middle/lower) of one side.

    Tries random points in the zone first; if the zone is mostly hidden (e.g. behind an enlarged
    heart) it picks among the lung pixels that remain, widening the margin and then the band, so
    the finding is always drawn on visible lung.
    """
    lu = scene.lung(side)
    size = scene.size
    zone_y = _ZONE_Y[zone] + scene.an.dy

    def inside(px_: float, py_: float, m: float) -> bool:
        for ddx, ddy in ((0, 0), (m, 0), (-m, 0), (0, m), (0, -m)):
            c = min(size - 1, max(0, int((px_ + ddx) * size)))
            r = min(size - 1, max(0, int((py_ + ddy) * size)))
            if lung[r, c] < 0.99:
                return False
        return True

    for _ in range(40):
        px_ = lu.cx + lu.sign * rng.uniform(-0.25, 0.45) * lu.a
        py_ = zone_y + rng.uniform(-0.05, 0.05)
        if inside(px_, py_, margin):
            return px_, py_
    rows, cols = np.nonzero(lung > 0.99)
    ys, xs = (rows + 0.5) / size, (cols + 0.5) / size
    for band, m in ((0.08, margin), (0.08, margin / 2), (0.5, margin / 2), (1.0, 0.0)):
        near = np.nonzero(np.abs(ys - zone_y) <= band)[0]
        for k in rng.permutation(near)[:200]:
            if inside(float(xs[k]), float(ys[k]), m):
                return float(xs[k]), float(ys[k])
    return lu.cx, zone_y


def _pneumothorax(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec) -> np.ndarray:
    side = f.side or "right"
    lung_layer = L[f"lung_{side}"]
    depth = _PTX_DEPTH[f.severity or "small"]
    top, lat = (depth * 1.6, depth * 0.35) if f.location == "apical" else (depth * 0.5, depth)
    lu = scene.lung(side)
    shrunk = lu.field(scene.x, scene.y, shrink_top=top, shrink_lat=lat) * (lu.a - lat)
    window = lung_layer
    if f.location == "apical":
        # Apical: air over the apex and the upper lateral rim only, fading out above mid-lung.
        window = lung_layer * np.clip((lu.cy + 0.02 - scene.y1) / 0.08, 0, 1)
    region = window * np.clip(0.5 + shrunk / (1.5 * scene.px), 0, 1)
    # The visceral pleural line: a thin bright curve at the collapsed lung's edge.
    line = np.clip(1.0 - np.abs(shrunk) / max(1.2 * scene.px, 0.004), 0, 1) * window
    L["markings"] *= 1.0 - region
    L["canvas"] += -0.08 * region + 0.2 * line
    return np.maximum(region, line)


def _effusion(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec) -> np.ndarray:
    mask = np.zeros_like(scene.x)
    level = _EFFUSION_LEVEL[f.severity or "small"]
    for side in scene.sides(f.side):
        lu = scene.lung(side)
        lung_layer = L[f"lung_{side}"]
        x_lat = lu.lateral_x
        y_cp = float(scene.dome(np.array([x_lat - lu.sign * 0.01], dtype=np.float32))[0])
        t = np.clip((scene.x - x_lat) * -lu.sign / (2 * lu.a), 0, 1)
        surface = y_cp - level + 0.085 * t**1.3  # meniscus: fluid climbs higher laterally
        fluid = np.clip((scene.y - surface) / 0.035, 0, 1) * lung_layer
        # Fluid replaces air almost completely: the base turns soft-tissue white.
        L["canvas"] += fluid * (scene.an.lung_air * 0.95 + 0.05 * np.clip((scene.y - surface) / 0.1, 0, 1))
        L["markings"] *= 1.0 - fluid
        mask = np.maximum(mask, fluid)
    return mask


def _consolidation(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec, rng: np.random.Generator) -> np.ndarray:
    side = f.side or "right"
    lung_layer = L[f"lung_{side}"]
    r = _CONSOL_RADIUS[f.severity or "small"]
    cx, cy = _zone_point(scene, lung_layer, side, f.location or "lower", rng, r * 0.6)
    field = np.zeros_like(scene.x)
    for _ in range(int(rng.integers(5, 9))):
        bx, by = cx + rng.normal(0, r * 0.7), cy + rng.normal(0, r * 0.45)
        br = r * rng.uniform(0.35, 0.65)
        field = field + np.exp(-np.square(scene.x1 - bx) / (2 * br * br)) * np.exp(-np.square(scene.y1 - by) / (2 * br * br))
    # Patchy texture: coarse noise modulates density inside the opacity.
    coarse = rng.random((24, 24)).astype(np.float32)
    tex = np.asarray(Image.fromarray(coarse, mode="F").resize((scene.size, scene.size), Image.BICUBIC))
    # Ill-defined, patchy edges: noise shifts the threshold, a wide ramp softens it.
    density = np.clip((field + 0.7 * (tex - 0.5) - 0.3) / 0.4, 0, 1) * lung_layer
    # Air bronchograms: a few dark branching tubes through the opacity.
    img, draw = _layer(scene.size)
    for _ in range(3):
        ang = rng.uniform(0, 2 * math.pi)
        p0 = (cx - math.cos(ang) * r, cy - math.sin(ang) * r)
        p2 = (cx + math.cos(ang) * r, cy + math.sin(ang) * r)
        draw.line(_px(_curve(p0, (cx + rng.normal(0, r * 0.3), cy + rng.normal(0, r * 0.3)), p2, 6), scene.size),
                  fill=255, width=max(1, round(scene.size / 224)))
    bronchi = _as_float(img) * np.clip(density * 2 - 1, 0, 1)
    L["canvas"] += density * (0.22 + 0.06 * tex) - 0.07 * bronchi
    L["markings"] *= 1.0 - density
    region = density
    return region


def _edema(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec) -> np.ndarray:
    amp, sx, sy = _EDEMA[f.severity or "mild"]
    lungs = L["lung_right"] + L["lung_left"]
    haze = np.zeros_like(scene.x)
    for side, (hx, hy) in scene.hilum.items():
        hx += 0.03 * scene.lung(side).sign  # centred just lateral of the hilum, over the lung
        haze = np.maximum(haze, np.exp(-np.square((scene.x1 - hx) / sx) / 2) * np.exp(-np.square((scene.y1 - hy) / sy) / 2))
    # Compact butterfly: no faint tail over the whole lung, so the mask stays perihilar.
    haze = np.sqrt(np.clip((haze - 0.4) / 0.6, 0, 1)) * lungs
    L["canvas"] += amp * haze
    L["markings"] *= 1.0 + 0.3 * haze  # indistinct, prominent vessels
    return haze


def _atelectasis(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec, rng: np.random.Generator) -> np.ndarray:
    width = _ATEL_WIDTH[f.severity or "mild"]
    mask = np.zeros_like(scene.x)
    for side in scene.sides(f.side):
        lu = scene.lung(side)
        lung_layer = L[f"lung_{side}"]
        y_dome = float(scene.dome(np.array([lu.cx], dtype=np.float32))[0])
        y1 = y_dome - rng.uniform(0.05, 0.075)
        # Span the lung actually visible at that height (an enlarged heart hides the medial base).
        for _ in range(12):
            row = lung_layer[min(scene.size - 1, int(y1 * scene.size))]
            cols = np.nonzero(row > 0.9)[0]
            if len(cols) * scene.px >= 0.12:
                break
            y1 -= 0.02
        span = (cols.min(), cols.max()) if len(cols) else (0, 0)
        xa, xb = (span[0] + 0.5) * scene.px, (span[1] + 0.5) * scene.px
        width_x = xb - xa
        x0, x1 = (xa + 0.12 * width_x, xb - 0.08 * width_x) if side == "right" else (xb - 0.12 * width_x, xa + 0.08 * width_x)
        y0 = y1 + rng.uniform(-0.025, 0.02)
        img, draw = _layer(scene.size)
        draw.line(_px(_curve((x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2 + 0.012), (x1, y1), 10), scene.size), fill=255,
                  width=max(1, round(width * scene.size)), joint="curve")
        band = _blur(_as_float(img), 0.9 * scene.size / 224) * lung_layer
        L["canvas"] += 0.27 * band
        L["markings"] *= 1.0 - band
        mask = np.maximum(mask, band)
    return mask


def _lesion(scene: _Scene, L: dict[str, np.ndarray], f: FindingSpec, rng: np.random.Generator) -> np.ndarray:
    side = f.side or "right"
    lung_layer = L[f"lung_{side}"]
    r = _LESION_RADIUS[f.severity or "small"]
    cx, cy = _zone_point(scene, lung_layer, side, f.location or "upper", rng, r * 1.3)
    ang = np.arctan2(scene.y - cy, scene.x - cx)
    lobes = 1.0 + (0.12 if f.severity == "large" else 0.05) * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.05 * np.sin(5 * ang + rng.uniform(0, 6.3))
    dist = np.sqrt((scene.x - cx) ** 2 + (scene.y - cy) ** 2) - r * lobes
    disk = _inside(dist, 1.5 * scene.px) * np.clip(lung_layer * 2, 0, 1)
    L["canvas"] += disk * (0.28 + 0.04 * np.clip(-dist / r, 0, 1))
    return disk


def _device(scene: _Scene, f: FindingSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one support device; return its ``(S, S)`` added density and its (slightly dilated) mask."""
    size, mid, an = scene.size, scene.mid, scene.an
    thin = max(1, round(0.008 * size))
    paths: list[tuple[list[tuple[float, float]], int, float]] = []  # (points, width px, brightness)
    blobs: list[tuple[float, float, float, float]] = []  # generator boxes
    side = f.side or "right"
    sgn = -1.0 if side == "right" else 1.0
    if f.finding == "endotracheal_tube":
        tip = scene.carina[1] - rng.uniform(0.05, 0.08)
        paths.append(([(mid + rng.uniform(-0.01, 0.01), 0.0), (mid, tip)], max(1, round(0.02 * size)), 0.12))
        paths.append(([(mid - 0.004, 0.0), (mid - 0.004, tip)], thin, 0.35))
    elif f.finding == "central_line":
        tip = (mid - 0.03, scene.carina[1] - rng.uniform(-0.02, 0.03))
        top = (mid + sgn * 0.1, 0.0)
        bend = (mid + sgn * 0.06, 0.17 + an.dy)
        pts = [top] + _curve(top, (mid + sgn * 0.09, 0.1), bend, 6)[1:] + _curve(bend, (mid - 0.03 + sgn * 0.02, 0.2 + an.dy), tip, 8)[1:]
        paths.append((pts, thin, 0.32))
    elif f.finding == "chest_tube":
        lu = scene.lung(side)
        entry = (lu.lateral_x + sgn * 0.04, 0.72 + an.dy + rng.uniform(-0.05, 0.03))
        apex = (lu.cx + sgn * rng.uniform(0.0, 0.4) * lu.a, 0.2 + an.dy + rng.uniform(0, 0.05))
        pts = _curve(entry, (lu.lateral_x - sgn * 0.04, 0.45), apex, 14)
        paths.append((pts, max(1, round(0.018 * size)), 0.18))
        paths.append((pts, thin, 0.3))
    elif f.finding == "pacemaker":
        gx, gy = mid + sgn * rng.uniform(0.24, 0.3), 0.14 + an.dy + rng.uniform(0, 0.03)
        blobs.append((gx, gy, 0.05, 0.035))
        ra, rv = (mid - 0.06, 0.6 + an.dy), (mid + 0.07, an.dome_left - 0.05)
        for end, ctrl in ((ra, (mid - 0.03, 0.3)), (rv, (mid - 0.06, 0.55))):
            entry = (mid + sgn * 0.06, 0.22 + an.dy)
            pts = _curve((gx, gy), (gx - sgn * 0.08, gy + 0.06), entry, 8) + _curve(entry, ctrl, end, 10)[1:]
            paths.append((pts, thin, 0.3))
    img, draw = _layer(size)
    mimg, mdraw = _layer(size)
    for pts, width, bright in paths:
        draw.line(_px(pts, size), fill=int(255 * min(1.0, bright / 0.6)), width=width, joint="curve")
        mdraw.line(_px(pts, size), fill=255, width=width + 2, joint="curve")
    for gx, gy, hw, hh in blobs:
        box = _px([(gx - hw, gy - hh), (gx + hw, gy + hh)], size)
        draw.rounded_rectangle([*box[0], *box[1]], radius=max(1, int(0.012 * size)), fill=255)
        mdraw.rounded_rectangle([box[0][0] - 1, box[0][1] - 1, box[1][0] + 1, box[1][1] + 1], radius=max(1, int(0.012 * size)), fill=255)
    return _as_float(img) * 0.6, _as_float(mimg)


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
