"""Draw the contact sheet of docs/phantom.md: one phantom per finding, with its mask outlined.

Each tile pair shows the image a model sees (left) and the same image with the finding's mask
outlined in red (right). All tiles share one patient's anatomy so the findings are easy to compare.

    python benchmarks/phantom_examples.py [--out docs/phantom_examples.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llavarad.phantom import FindingSpec, PhantomConfig, PhantomSpec, build_record, draw_phantom

CASES = [
    ("normal", []),
    ("cardiomegaly (moderate)", [FindingSpec("cardiomegaly", None, None, "moderate", 1)]),
    ("L pleural effusion (moderate)", [FindingSpec("pleural_effusion", "left", "basal", "moderate", 1)]),
    ("R apical pneumothorax (moderate)", [FindingSpec("pneumothorax", "right", "apical", "moderate", 1)]),
    ("R lower consolidation (moderate)", [FindingSpec("consolidation", "right", "lower", "moderate", 4)]),
    ("edema (moderate)", [FindingSpec("edema", "bilateral", "perihilar", "moderate", 1)]),
    ("bibasilar atelectasis (moderate)", [FindingSpec("atelectasis", "bilateral", "basal", "moderate", 1)]),
    ("L upper mass (large)", [FindingSpec("lung_lesion", "left", "upper", "large", 2)]),
    ("ETT + R IJ line", [FindingSpec("endotracheal_tube", None, "trachea", None, 1), FindingSpec("central_line", "right", None, None, 2)]),
    ("L pacemaker", [FindingSpec("pacemaker", "left", None, None, 1)]),
    ("R chest tube", [FindingSpec("chest_tube", "right", None, None, 1)]),
    ("L lateral pneumothorax (large)", [FindingSpec("pneumothorax", "left", "lateral", "large", 1)]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "phantom_examples.png")
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    size = args.size
    anatomy = build_record(PhantomConfig(n=20, seed=0), 3)[0].anatomy
    tiles = []
    mask_pixels = []
    for title, findings in CASES:
        img, masks = draw_phantom(np.random.default_rng(0), PhantomSpec(anatomy, findings), size)
        gray = np.stack([img] * 3, -1)
        outlined = gray.copy()
        for mask in masks.values():
            interior = np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
            outlined[mask & ~interior] = (255, 60, 60)
            mask_pixels.append(int(mask.sum()))
        tile = Image.new("RGB", (2 * size, size + 16))
        tile.paste(Image.fromarray(np.hstack([gray, outlined])), (0, 16))
        ImageDraw.Draw(tile).text((4, 2), title, fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    sheet = Image.fromarray(np.vstack([np.hstack(tiles[i : i + 3]) for i in range(0, len(tiles), 3)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]}, {kb:.0f} KB); smallest mask {min(mask_pixels)} px")
    print(f"RESULT phantom_examples_png {kb:.0f} KB goal=<300")


if __name__ == "__main__":
    main()
