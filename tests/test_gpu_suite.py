"""The GPU suite's CPU dry run: every step runs with tiny shapes, prints its RESULT lines and the
JSON summary, so the script works the day a GPU is lent (benchmarks/gpu_suite.sh)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_dry_run_on_cpu(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_suite.json").read_text())
    assert summary["dry_run"] is True
    assert set(summary["steps"]) == {"gpu_train", "fsdp_smoke", "deepspeed_smoke", "demo"}
    assert all(step["rc"] == 0 for step in summary["steps"].values())
    results = summary["results"]
    for name in ("gpu_train_samples_per_s_dryrun", "gpu_generate_b1_images_per_s_dryrun",
                 "gpu_generate_b2_tokens_per_s_dryrun", "demo_gpu_recipe_micro_f1_14"):
        assert isinstance(results[name]["value"], float) and results[name]["value"] >= 0, name
    assert results["fsdp_smoke_model_saved"]["value"] == 1.0
    assert results["deepspeed_smoke_model_saved"]["value"] == 1.0


def test_gpu_suite_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real suite would run")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--out", str(tmp_path / "o")],
                          cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
