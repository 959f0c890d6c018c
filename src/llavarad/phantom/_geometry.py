"""Drawing primitives of the phantom renderer: the normalised coordinate grid, blur, layers,
curves, and the scene (lung shapes and body outline) that anatomy and findings are drawn in.

Everything is in normalised image coordinates (x to the image right, y down, both in [0, 1]).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from llavarad.phantom._spec import PhantomSpec


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
