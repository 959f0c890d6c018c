"""Generation on several processes vs one: images/s of ``torchrun --nproc_per_node 2 -m llavarad
generate`` (one thread each) against one process with two threads, on the same manifest, in the same
run, with the outputs compared row by row.

    python benchmarks/generate_scale.py [--n 64] [--tokens 32] [--batch-size 8] [--preset tiny]

Throughput is rows / generation seconds as each run reports them (model loading excluded on both
sides; for the sharded run the slowest rank's seconds). Prints RESULT lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def _write_inputs(tmp: Path, n: int, preset: str) -> tuple[Path, Path]:
    from llavarad.model.build import init_random, save_model

    model = tmp / "model"
    save_model(init_random(preset, seed=0), model)
    images = sorted(p for p in SHARED.iterdir() if p.suffix in (".png", ".dcm"))
    rows = [{"id": f"r{i:04d}", "image": str(images[i % len(images)]), "indication": ["Cough.", None][i % 2]}
            for i in range(n)]
    manifest = tmp / "in.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, manifest


def _run(cmd: list[str], threads: int) -> tuple[float, int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    runs = re.findall(r"(\d+) generated, \d+ already done, \d+ failed of \d+ in ([\d.]+) s", log)
    if proc.returncode != 0 or not runs:
        raise SystemExit(f"run failed (rc {proc.returncode}):\n{log[-3000:]}")
    return max(float(s) for _, s in runs), sum(int(g) for g, _ in runs), log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, manifest = _write_inputs(tmp, args.n, args.preset)
        common = ["generate", "--model", str(model), "--manifest", str(manifest), "--batch-size",
                  str(args.batch_size), "--max-new-tokens", str(args.tokens), "--device", "cpu"]
        one_rates, two_rates = [], []
        for i in range(args.repeats):  # alternate, so a burst of load elsewhere hits both sides alike
            for name in ("one.jsonl", "two.jsonl"):
                (tmp / name).unlink(missing_ok=True)
            one_s, one_n, _ = _run([sys.executable, "-m", "llavarad", *common, "--out", str(tmp / "one.jsonl")], threads=2)
            two_s, two_n, _ = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    "-m", "llavarad", *common, "--out", str(tmp / "two.jsonl")], threads=1)
            one_rates.append(one_n / one_s)
            two_rates.append(two_n / two_s)
            print(f"run {i + 1}: 1 process x 2 threads {one_rates[-1]:.2f} images/s, "
                  f"2 processes x 1 thread {two_rates[-1]:.2f} images/s (slowest rank {two_s:.1f} s)")

        def preds(name: str) -> dict[str, str]:
            return {r["id"]: r["prediction"] for r in map(json.loads, (tmp / name).read_text().splitlines())}

        same = preds("one.jsonl") == preds("two.jsonl")
    one_rate, two_rate = statistics.median(one_rates), statistics.median(two_rates)
    print(f"outputs identical: {same}")
    print(f"RESULT generate_scale_1proc_2threads {one_rate:.2f} images/s goal=baseline")
    print(f"RESULT generate_scale_2proc_1thread {two_rate:.2f} images/s goal=baseline")
    print(f"RESULT generate_scale_ratio {two_rate / one_rate:.2f} x goal=>=1.5")
    print(f"RESULT generate_scale_outputs_identical {int(same)} bool goal=1")


if __name__ == "__main__":
    main()
