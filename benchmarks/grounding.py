"""Measured grounding of word-level attention maps on phantoms, where every finding's region is known.

For each held-out phantom, generate with attention capture (``llavarad.attention.explain``); for each
finding present in the phantom whose naming words (the finding's words minus its side, location and
severity) appear in the generated report, take the mean map of those words and score:
- pointing game: the map's peak cell lies in the finding's region (mask max-pooled to the grid:
  a cell counts as inside if any of its pixels is);
- attention mass inside the region.
Baseline: a uniform map, whose mass inside equals the region's area fraction and whose random peak
hits with that same probability.

    python benchmarks/grounding.py [--demo runs/demo] [--limit 80] [--aggregate layer-mean]

Without --demo it runs ``llavarad demo`` into runs/grounding_demo first (about 12 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from llavarad.attention import downsample_mask, explain, mass_inside, pointing_hit
from llavarad.model.build import load_model

_GENERIC = {"the", "there", "is", "a", "an", "in", "of", "with", "and", "lung", "lungs", "zone", "sided", "side"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=None, help="a finished `llavarad demo` folder")
    ap.add_argument("--limit", type=int, default=80, help="held-out phantoms to explain")
    ap.add_argument("--aggregate", default="layer-mean", choices=["layer-mean", "max-over-layers"])
    args = ap.parse_args()

    demo = args.demo
    if demo is None:
        from llavarad.phantom.demo import DemoConfig, run_demo

        demo = Path("runs/grounding_demo")
        run_demo(DemoConfig(), demo)
    bundle = load_model(demo / "stage3", device="cpu")
    phantoms = demo / "phantoms"
    rows = [json.loads(l) for l in (phantoms / "manifest.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["split"] == "test" and r.get("phantom_findings")][: args.limit]

    stats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    named = total = 0
    for row in rows:
        image = Image.open(phantoms / row["image"]).convert("L")
        expl = explain(bundle, image, row.get("indication"), max_new_tokens=96, aggregate=args.aggregate)
        generated = {w["word"].lower() for w in expl.words}
        for f in row["phantom_findings"]:
            total += 1
            skip = {str(f.get(k, "")).lower() for k in ("side", "location", "severity")} | _GENERIC
            naming = [w.lower() for w in f["words"] if w.lower() not in skip and w.lower() in generated]
            if not naming:
                continue
            named += 1
            maps = [expl.map_for(w) for w in naming]
            m = np.mean([x for x in maps if x is not None], axis=0)
            region = downsample_mask(np.asarray(Image.open(phantoms / f["mask"])), expl.grid)
            if not region.any():
                continue
            area = float(region.mean())
            for key in (f["finding"], "overall"):
                stats[key]["hit"].append(float(pointing_hit(m, region)))
                stats[key]["mass"].append(mass_inside(m, region))
                stats[key]["area"].append(area)

    print(f"demo={demo} phantoms={len(rows)} findings={total} named_in_generated_report={named} aggregate={args.aggregate}")
    print(f"{'finding':<16}{'n':>5}{'hit rate':>10}{'mass in':>10}{'uniform':>10}")
    for key in sorted(stats, key=lambda k: (k == "overall", k)):
        s = stats[key]
        print(f"{key:<16}{len(s['hit']):>5}{np.mean(s['hit']):>10.3f}{np.mean(s['mass']):>10.3f}{np.mean(s['area']):>10.3f}")
    o = stats["overall"]
    if o["hit"]:
        base = float(np.mean(o["area"]))
        print(f"RESULT grounding_pointing_hit_rate {np.mean(o['hit']):.3f} fraction goal=>{base:.3f}")
        print(f"RESULT grounding_mass_inside {np.mean(o['mass']):.3f} fraction goal=>{base:.3f}")
        print(f"RESULT grounding_uniform_baseline {base:.3f} fraction goal=none")
        print(f"RESULT grounding_mass_vs_uniform {np.mean(o['mass']) / base:.2f} x goal=>1")
    else:
        print("RESULT grounding_pointing_hit_rate nan fraction goal=none  (no finding was named in a generated report)")


if __name__ == "__main__":
    main()
