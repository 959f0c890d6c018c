"""Generation throughput: images/s at batch 1 vs batch 8 on the `tiny` preset, in one run.

Both settings generate exactly the same number of tokens per image (min_new_tokens = max_new_tokens),
so the ratio measures batching alone. Goal: >= 3x on 2 CPU cores.

    python benchmarks/generation.py [--images 32] [--new-tokens 32] [--preset tiny]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from PIL import Image

from llavarad.generate import GenerationSettings, generate_reports
from llavarad.model.build import init_random


def _throughput(bundle, images, inds, batch_size: int, new_tokens: int, repeats: int) -> float:
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    generate_reports(bundle, images[:batch_size], inds[:batch_size], settings)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate_reports(bundle, images, inds, settings)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    bundle = init_random(args.preset, seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((256, 256)) * 255).astype("uint8")) for _ in range(args.images)]
    inds = [None if i % 3 == 0 else "Shortness of breath." for i in range(args.images)]
    print(f"preset={args.preset} images={args.images} new_tokens={args.new_tokens} torch_threads={torch.get_num_threads()}")
    b1 = _throughput(bundle, images, inds, 1, args.new_tokens, args.repeats)
    b8 = _throughput(bundle, images, inds, 8, args.new_tokens, args.repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch 1: {b1:.2f} images/s   batch 8: {b8:.2f} images/s   peak RSS {peak_mb:.0f} MiB")
    print(f"RESULT generation_batch1 {b1:.2f} images/s goal=none")
    print(f"RESULT generation_batch8 {b8:.2f} images/s goal=none")
    print(f"RESULT generation_batch8_speedup {b8 / b1:.2f} x goal=>=3")
    print(f"RESULT generation_peak_rss {peak_mb:.0f} MiB goal=none")


if __name__ == "__main__":
    main()
