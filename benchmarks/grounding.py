"""Measured grounding of word-level attention maps on phantoms, where every finding's region is known.

For each held-out phantom, generate with attention capture (``llavarad.attention.explain``, every
method from the same generation); for each finding present whose naming words (the finding's words
minus its side, location and severity) appear in the generated report, take the mean map of those
words and score:
- pointing game: the map's peak cell lies in the finding's region (the mask max-pooled to the grid
  over the crop the model saw: a cell counts as inside if any of its pixels is);
- attention mass inside the region.
Word-agnostic control: the mean map of all the report's words scored against the same region; a
map that only shows where the image has content (not where *this* finding is) scores as well there.
Baseline: a uniform map, whose mass inside equals the region's area fraction and whose random peak
hits with that same probability. Goals (issue 24): hits >= uniform + 0.3, mass >= 2x uniform.

``--coded``: a demo trained with ``--coded-images`` (the control whose images carry one square per
finding category): images from its ``coded/`` manifest, and the region of a finding is its code
square, taken from ``llavarad.phantom.demo.coded_image`` itself.

    python benchmarks/grounding.py --demo runs/demo [--coded] [--limit 80] [--method layer --method rollout]

Without --demo it runs ``llavarad demo`` into runs/grounding_demo first (about 12 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from llavarad.attention import (
    METHODS,
    downsample_mask,
    explain,
    mass_inside,
    pointing_hit,
)
from llavarad.model.build import load_model

_GENERIC = {"the", "there", "is", "a", "an", "in", "of", "with", "and", "lung", "lungs", "zone", "sided", "side"}


def _code_square(finding: str, size: int) -> np.ndarray:
    """The pixels of ``finding``'s code square in a ``size`` coded image."""
    from llavarad.phantom import DEVICES
    from llavarad.phantom.demo import coded_image

    category = "support_devices" if finding in DEVICES else finding
    return np.asarray(coded_image({category}, size)) != np.asarray(coded_image(set(), size))


def _rows(demo: Path, coded: bool, limit: int) -> tuple[Path, list[dict]]:
    manifest = demo / ("coded" if coded else "phantoms") / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} does not exist: " + ("was this demo run with --coded-images?" if coded
                                                         else "is this a finished `llavarad demo` folder?"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return demo / "phantoms", [r for r in rows if r["split"] == "test" and r.get("phantom_findings")][:limit]


def _score(demo: Path, coded: bool, limit: int, methods: list[str]) -> tuple[dict, int, int, int]:
    bundle = load_model(demo / "stage3", device="cpu")
    phantoms, rows = _rows(demo, coded, limit)
    stats: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    named = total = 0
    for row in rows:
        image_path = Path(row["image"]) if Path(row["image"]).is_absolute() else phantoms / row["image"]
        image = Image.open(image_path).convert("L")
        expl = explain(bundle, image, row.get("indication"), max_new_tokens=96, method=methods[0],
                       extra_methods=tuple(methods[1:]))
        for f in row["phantom_findings"]:
            total += 1
            skip = {str(f.get(k, "")).lower() for k in ("side", "location", "severity")} | _GENERIC
            naming = {w.lower() for w in f["words"]} - skip
            idx = [i for i, w in enumerate(expl.words) if w["word"].lower() in naming]
            if not idx:
                continue
            named += 1
            mask = _code_square(f["finding"], image.size[0]) if coded else np.asarray(Image.open(phantoms / f["mask"]))
            region = downsample_mask(mask, expl.grid, expl.image_box)
            if not region.any():
                continue
            for method in methods:
                maps = expl.word_maps_for(method)
                m, agnostic = maps[idx].mean(axis=0), maps.mean(axis=0)
                for key in (f["finding"], "overall"):
                    s = stats[method][key]
                    s["hit"].append(float(pointing_hit(m, region)))
                    s["mass"].append(mass_inside(m, region))
                    s["area"].append(float(region.mean()))
                    s["agnostic_hit"].append(float(pointing_hit(agnostic, region)))
                    s["agnostic_mass"].append(mass_inside(agnostic, region))
    return stats, len(rows), total, named


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=None, help="a finished `llavarad demo` folder")
    ap.add_argument("--coded", action="store_true", help="the demo was trained on coded images: regions are code squares")
    ap.add_argument("--limit", type=int, default=80, help="held-out phantoms to explain")
    ap.add_argument("--method", action="append", choices=METHODS, help="map methods to compare (default: all but "
                    "layer-head); the first is explain's word_maps")
    ap.add_argument("--label", default=None, help="model name in the RESULT lines (default: the demo folder's name)")
    args = ap.parse_args()
    methods = args.method or [m for m in METHODS if not m.startswith("layer-head")]

    demo = args.demo
    if demo is None:
        from llavarad.phantom.demo import DemoConfig, run_demo

        demo = Path("runs/grounding_demo")
        run_demo(DemoConfig(), demo)
    label = (args.label or demo.resolve().name).replace(" ", "_")
    t0 = time.perf_counter()
    stats, n_rows, total, named = _score(demo, args.coded, args.limit, methods)
    print(f"demo={demo} coded={args.coded} phantoms={n_rows} findings={total} named_in_generated_report={named} "
          f"methods={','.join(methods)} seconds={time.perf_counter() - t0:.0f}")
    if not stats:
        print(f"RESULT grounding_{label}_uniform_baseline nan fraction goal=none  (no finding was named in a report)")
        return
    findings = sorted({k for s in stats.values() for k in s}, key=lambda k: (k == "overall", k))
    print(f"{'finding':<18}{'n':>5}{'uniform':>9}" + "".join(f"{m[:14]:>16}" for m in methods) + "   (hit rate / mass)")
    for key in findings:
        first = stats[methods[0]][key]
        cells = "".join(f"{np.mean(stats[m][key]['hit']):>9.3f}/{np.mean(stats[m][key]['mass']):.3f}" for m in methods)
        print(f"{key:<18}{len(first['hit']):>5}{np.mean(first['area']):>9.3f}{cells}")
    base = float(np.mean(stats[methods[0]]["overall"]["area"]))
    print("word-agnostic control (the mean map of all the report's words, scored against the same region):")
    for m in methods:
        o = stats[m]["overall"]
        print(f"  {m:<22} word: hit {np.mean(o['hit']):.3f} mass {np.mean(o['mass']) / base:.2f}x   "
              f"all words: hit {np.mean(o['agnostic_hit']):.3f} mass {np.mean(o['agnostic_mass']) / base:.2f}x")
    print(f"RESULT grounding_{label}_uniform_baseline {base:.3f} fraction goal=none")
    for m in methods:
        o = stats[m]["overall"]
        print(f"RESULT grounding_{label}_{m}_pointing_hit_rate {np.mean(o['hit']):.3f} fraction goal=>={base + 0.3:.3f}")
        print(f"RESULT grounding_{label}_{m}_mass_vs_uniform {np.mean(o['mass']) / base:.2f} x goal=>=2")
        print(f"RESULT grounding_{label}_{m}_mass_vs_word_agnostic {np.mean(o['mass']) / np.mean(o['agnostic_mass']):.2f}"
              " x goal=>1")


if __name__ == "__main__":
    main()
