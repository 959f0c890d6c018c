"""Peak memory of `llavarad convert` against the model's size and against a naive conversion.

A 7B conversion must not hold two copies of the language model. This builds a fake release around a
~134M-parameter fp16 LLaMA (same file names and key layouts as microsoft/llava-rad + Vicuna), then runs,
each in a fresh process and measured by its peak RSS:

- imports only (the floor every run pays),
- ``convert_release`` (meta-device assembly filled with streamed tensors, LoRA merged in place),
- a naive route with stock pieces: ``LlamaForCausalLM.from_pretrained`` + ``peft`` merge, save the
  merged LM, then ``init_from_parts`` (vision + LM + a fresh random Llava) + ``save_model``.

Run: ``python benchmarks/convert_memory.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HIDDEN, LAYERS, HEADS, FF, VOCAB = 768, 12, 12, 2048, 32000

PRELUDE = textwrap.dedent("""
    import json, sys, time
    import torch, transformers, accelerate, peft
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration
    import llavarad.model.convert, llavarad.model.build
    args = json.loads(sys.argv[1])

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB

    import threading
    peak_anon = [0.0]

    def sample():  # anonymous memory cannot be dropped by the kernel (file-backed mmap pages can)
        while True:
            peak_anon[0] = max(peak_anon[0], status("RssAnon"))
            time.sleep(0.005)

    floor, floor_anon = status("VmRSS"), status("RssAnon")
    threading.Thread(target=sample, daemon=True).start()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
""")
EPILOGUE = textwrap.dedent("""
    time.sleep(0.02)
    print(json.dumps({"floor_mb": floor, "peak_rss_mb": status("VmHWM"), "floor_anon_mb": floor_anon,
                      "peak_anon_mb": peak_anon[0], "seconds": time.perf_counter() - t0}))
""")
JOBS = {
    "imports": "",
    "convert": textwrap.dedent("""
        from llavarad.model.convert import convert_release
        convert_release(args["release"], args["base"], args["out"] + "/convert", preset="tiny")
    """),
    "naive": textwrap.dedent("""
        from peft import PeftModel
        from transformers import AutoTokenizer
        from llavarad.model.build import init_from_parts, save_model
        from llavarad.model.convert import convert_encoder
        enc = args["out"] + "/naive_encoder"
        convert_encoder(args["release"], enc, preset="tiny")
        lm = LlamaForCausalLM.from_pretrained(args["base"], dtype=torch.float16)
        lm = PeftModel.from_pretrained(lm, args["release"]).merge_and_unload()
        lm.save_pretrained(args["out"] + "/naive_lm")
        AutoTokenizer.from_pretrained(args["base"]).save_pretrained(args["out"] + "/naive_lm")
        del lm
        bundle = init_from_parts(enc, args["out"] + "/naive_lm", preset="tiny", dtype=torch.float16)
        save_model(bundle, args["out"] + "/naive")
    """),
}


def run_job(name: str, args: dict) -> dict:
    code = PRELUDE + JOBS[name] + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    from llavarad.model._convert_testing import make_fake_release, make_fake_vicuna

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base = make_fake_vicuna(root / "vicuna", hidden=HIDDEN, layers=LAYERS, heads=HEADS, intermediate=FF,
                                vocab_size=VOCAB, dtype=torch.float16, max_shard_size="60MB")
        release = make_fake_release(root / "release", base)
        n_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        print(f"fake base LM: {n_bytes / 2**20:.1f} MiB fp16 in {len(list(base.glob('*.safetensors')))} shards "
              f"(hidden {HIDDEN}, {LAYERS} layers, vocab {VOCAB}); built in {time.perf_counter() - t0:.1f} s")
        args = {"release": str(release), "base": str(base), "out": str(root)}
        results = {name: run_job(name, args) for name in ("imports", "convert", "naive")}
    model_mb = n_bytes / 2**20
    extra = {name: r["peak_rss_mb"] - r["floor_mb"] for name, r in results.items()}
    anon = {name: r["peak_anon_mb"] - r["floor_anon_mb"] for name, r in results.items()}
    for name, r in results.items():
        print(f"{name:8s} peak RSS +{extra[name]:6.1f} MiB ({extra[name] / model_mb:4.2f}x the model), peak anonymous "
              f"+{anon[name]:6.1f} MiB ({anon[name] / model_mb:4.2f}x), {r['seconds']:.1f} s "
              f"[after imports: RSS {r['floor_mb']:.0f} MiB]")
    print(f"RESULT convert_peak_anon_memory_over_model {anon['convert'] / model_mb:.2f} x goal=<=1.5")
    print(f"RESULT convert_peak_rss_over_model {extra['convert'] / model_mb:.2f} x goal=<=2.0")
    print(f"RESULT convert_anon_memory_vs_naive {anon['convert'] / anon['naive']:.2f} ratio goal=<=1.0")


if __name__ == "__main__":
    main()
