"""Phantom generation speed and finding visibility.

Measures, on this machine:
  * drawing throughput (images/min, one process) at 224 and 112 px, CPU time and wall time;
  * end-to-end `generate_phantoms` throughput (drawing + PNG images and masks + manifest) at 224 px;
  * the weakest finding contrast: for every finding at its smallest severity, the mean absolute
    gray-level change inside its mask at 112 px (against the same phantom without the finding).
Baseline for the ratio: writing the same number of random 224 px PNGs (pure I/O + encoding).

    python benchmarks/phantom.py [--n 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llavarad.phantom import AnatomySpec, FindingSpec, PhantomConfig, PhantomSpec, build_record, draw_phantom, generate_phantoms

_SMALLEST = [
    ("cardiomegaly", None, None, "mild"), ("pleural_effusion", "right", "basal", "small"),
    ("pneumothorax", "left", "apical", "small"), ("pneumothorax", "right", "lateral", "small"),
    ("consolidation", "left", "upper", "small"), ("edema", "bilateral", "perihilar", "mild"),
    ("atelectasis", "right", "basal", "mild"), ("lung_lesion", "left", "middle", "small"),
    ("endotracheal_tube", None, "trachea", None), ("central_line", "right", None, None),
    ("chest_tube", "left", None, None), ("pacemaker", "left", None, None),
]


def draw_rate(n: int, size: int) -> tuple[float, float]:
    """Images per minute of sampling + drawing (wall, CPU) for ``n`` records at ``size`` px."""
    config = PhantomConfig(n=n, size=size)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        spec, _, _, rng = build_record(config, i)
        draw_phantom(rng, spec, size)
    return n / (time.perf_counter() - wall) * 60, n / (time.process_time() - cpu) * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="images per measurement")
    args = parser.parse_args()
    n = args.n

    draw_rate(5, 224)  # warm caches (grids, blur kernels)
    for size in (224, 112):
        wall, cpu = draw_rate(n, size)
        print(f"draw {size} px: {wall:.0f} images/min wall, {cpu:.0f} images/min per CPU-second budget")
    wall224, cpu224 = draw_rate(n, 224)

    tmp = Path(tempfile.mkdtemp(prefix="phantom_bench_"))
    try:
        t = time.perf_counter()
        summary = generate_phantoms(PhantomConfig(n=n, size=224), tmp / "ph")
        gen_wall = time.perf_counter() - t
        n_masks = sum(1 for _ in (tmp / "ph" / "masks").iterdir())
        workers = min(8, os.cpu_count() or 1)
        t = time.perf_counter()
        par = generate_phantoms(PhantomConfig(n=n, size=224), tmp / "ph_par", workers=workers)
        par_wall = time.perf_counter() - t
        rng = np.random.default_rng(0)
        (tmp / "png").mkdir()
        t = time.perf_counter()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)).save(tmp / "png" / f"{i}.png", compress_level=3)
        png_wall = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gen_rate = summary.written / gen_wall * 60
    print(f"generate_phantoms 224 px: {summary.written} images + {n_masks} masks in {gen_wall:.1f} s = {gen_rate:.0f} images/min")
    print(f"generate_phantoms 224 px with {workers} workers: {par.written / par_wall * 60:.0f} images/min")
    print(f"baseline: writing {n} random 224 px PNGs took {png_wall:.1f} s ({n / png_wall * 60:.0f} images/min)")

    contrasts = {}
    for name, side, loc, sev in _SMALLEST:
        spec = PhantomSpec(AnatomySpec(), [FindingSpec(name, side, loc, sev, seed=1)])
        img, masks = draw_phantom(np.random.default_rng(0), spec, 112)
        base, _ = draw_phantom(np.random.default_rng(0), spec.without_findings(), 112)
        diff = np.abs(img.astype(np.float64) - base)[masks[name]]
        contrasts[f"{name}/{side}/{loc}/{sev}"] = float(diff.mean())
    for key, value in contrasts.items():
        print(f"  contrast at 112 px {key:45s} {value:6.1f} gray levels inside its mask")
    weakest = min(contrasts, key=contrasts.get)
    print(f"weakest finding: {weakest}")

    print(f"RESULT phantom_draw_224px {wall224:.0f} images/min goal=>1000")
    print(f"RESULT phantom_draw_224px_cpu {cpu224:.0f} images/min goal=>2000")
    print(f"RESULT phantom_generate_224px {gen_rate:.0f} images/min goal=>1000")
    print(f"RESULT phantom_generate_224px_{workers}workers {par.written / par_wall * 60:.0f} images/min goal=>2000")
    print(f"RESULT phantom_generate_vs_png_only {gen_wall / png_wall:.1f} x goal=<20")
    print(f"RESULT phantom_weakest_contrast_112px {contrasts[weakest]:.1f} gray_levels goal=>=12")


if __name__ == "__main__":
    main()
