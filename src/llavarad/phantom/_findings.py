"""Finding overlays of the phantom renderer: each function adds one finding's density inside its
region of the scene and returns its core mask."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from llavarad.phantom._spec import FindingSpec

from llavarad.phantom._geometry import (
    _as_float,
    _blur,
    _curve,
    _inside,
    _layer,
    _px,
    _Scene,
)

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
