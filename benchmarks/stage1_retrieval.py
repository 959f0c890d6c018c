"""Stage 1 learns: a tiny dual encoder trained on phantoms retrieves held-out reports far above chance.

Generates phantom radiographs with reports, trains stage 1 (``tiny`` image tower, tiny BERT) for a
fixed number of steps on CPU, then runs cross-modal retrieval on held-out phantoms with the trained
encoder, an untrained one (same architecture, random weights) and a random ranking. Prints the
table and RESULT lines: Recall@10 in both directions as a multiple of chance (goal >= 2), the
mean rank relative to chance, and training / encoding throughput.

    python benchmarks/stage1_retrieval.py                 # ~2-4 min on 2 cores
    python benchmarks/stage1_retrieval.py --steps 300 --n-train 1200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-held", type=int, default=100)
    parser.add_argument("--size", type=int, default=56, help="image size (a multiple of 14)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from llavarad.config import config_from_dict
    from llavarad.phantom import PhantomConfig, generate_phantoms
    from llavarad.model.clip import init_clip, save_clip
    from llavarad.model.presets import load_preset
    from llavarad.retrieval import run_retrieval
    from llavarad.train.stage1_encoder import Stage1Config, load_pairs, run_stage1

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="stage1_bench_")
        root = Path(tmp.name)
    else:
        root = args.out
    generate_phantoms(PhantomConfig(n=args.n_train, size=args.size, seed=0, write_masks=False), root / "train")
    generate_phantoms(PhantomConfig(n=args.n_held, size=args.size, seed=1, id_prefix="held", write_masks=False),
                      root / "held")
    train_manifest = root / "train" / "manifest.jsonl"
    cfg = config_from_dict(Stage1Config, dict(
        manifest=str(train_manifest), output_dir=str(root / "stage1"), splits=["train", "validate", "test"],
        preset="tiny", image_size=args.size, embed_dim=32, context_length=96, tokenizer_vocab_size=400,
        max_steps=args.steps, per_device_batch_size=args.batch, lr=args.lr, warmup_steps=8, mixed_precision="no",
        augment=False, save_every_steps=10_000, log_every_steps=25, seed=0))
    t0 = time.perf_counter()
    enc = run_stage1(cfg)
    train_s = time.perf_counter() - t0
    summary = json.loads((enc / "summary.json").read_text())
    log = [json.loads(line) for line in (enc / "train_log.jsonl").read_text().splitlines()]
    throughput = [r["samples_per_s"] for r in log if "samples_per_s" in r][-1]

    pairs, _ = load_pairs(train_manifest, None)
    rand = init_clip(image_size=args.size, vision_config=load_preset("tiny").vision, corpus=[p.text for p in pairs],
                     tokenizer_vocab_size=400, embed_dim=32, context_length=96, seed=1)
    save_clip(rand, root / "untrained")
    t0 = time.perf_counter()
    report = run_retrieval(root / "held" / "manifest.jsonl", [enc, root / "untrained"], root / "retrieval", split=None,
                           device="cpu", dtype="float32", n_resamples=500, names=["stage1", "untrained"])
    encode_s = time.perf_counter() - t0

    print((root / "retrieval" / "retrieval.md").read_text())
    print(f"training: {summary['global_step']} steps x {args.batch} pairs in {train_s:.1f} s (incl. start-up); "
          f"loss {log[0]['loss']:.3f} -> {[r for r in log if 'loss' in r][-1]['loss']:.3f}")
    res = report["encoders"]["stage1"]
    n = report["n"]
    chance_rank = (n + 1) / 2
    r10 = {d: res["metrics"][f"{d}_R@10"]["value"] / res["chance"]["R@10"] for d in ("i2t", "t2i")}
    rank = {d: res["metrics"][f"{d}_mean_rank"]["value"] / chance_rank for d in ("i2t", "t2i")}
    print(f"RESULT stage1_phantom_i2t_recall10_vs_chance {r10['i2t']:.2f} x goal=>=2")
    print(f"RESULT stage1_phantom_t2i_recall10_vs_chance {r10['t2i']:.2f} x goal=>=2")
    print(f"RESULT stage1_phantom_i2t_mean_rank_vs_chance {rank['i2t']:.2f} ratio goal=<0.8")
    print(f"RESULT stage1_phantom_t2i_mean_rank_vs_chance {rank['t2i']:.2f} ratio goal=<0.8")
    print(f"RESULT stage1_cpu_train_throughput {throughput:.1f} pairs/s goal=report")
    print(f"RESULT retrieval_cpu_encode_throughput {2 * n / encode_s:.1f} pairs/s goal=report")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
