"""The cost of the PACS round trip: studies/min through the whole DICOMweb loop vs plain `generate`.

All runs draft the same images with the same model and the same fixed amount of work per image
(`tiny` preset, min_new_tokens = max_new_tokens, batch 1, as the loop drafts one study at a time).
The loop run talks to a real Orthanc (Debian orthanc + orthanc-dicomweb, started here on a loopback
port): per study a QIDO-RS search for an SR of this model, QIDO-RS + WADO-RS metadata to pick the
frontal image, WADO-RS of the instance, the SR built with highdicom and stored with STOW-RS, and one
fsynced state line. Plain generate (`run_generation`, what `generate --manifest` runs) reads the same
DICOM files from disk into a predictions JSONL; a third run does exactly the loop's own work without the
PACS (read_cxr + ReportGenerator.generate per file), and the per-study overhead is measured against it.
The studies are the real DICOMs of ../shared/data, copied under fresh UIDs.

    python benchmarks/pacs_loop.py [--copies 10] [--new-tokens 32] [--rounds 2]

Plain and loop runs are interleaved (order alternating per round) and the best time of each counts,
so a shared machine's changing load does not decide the ratio.

Goal: the round trip adds at most 250 ms per study (a 7B model takes seconds per study on a GPU, so
the loop then runs at > 90 % of plain generation).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc launcher the tests use

from orthanc_server import OrthancServer, orthanc_missing_reason

REAL = ("siim_pa_jpeg_baseline.dcm", "siim_pa_flagged_monochrome1.dcm", "cr_monochrome1_10bit_nopreamble.dcm")


def _studies(data: Path, copies: int, folder: Path) -> list[Path]:
    """The real DICOMs under fresh UIDs, written as Part 10 files (``copies`` x 3 studies)."""
    import pydicom
    from pydicom.uid import generate_uid

    paths = []
    for n in range(copies):
        for name in REAL:
            ds = pydicom.dcmread(data / "images" / name, force=True)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
            path = folder / f"{n:03d}_{name}"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            path.write_bytes(buf.getvalue())
            paths.append(path)
    return paths


def _plain_run(bundle, manifest: Path, out: Path, settings, n: int) -> float:
    from llavarad.generate import run_generation

    start = time.perf_counter()
    summary = run_generation(bundle, manifest, out, settings=settings)
    seconds = time.perf_counter() - start
    assert summary.generated == n, summary.errors
    return seconds


def _api_run(generator, paths: list[Path]) -> float:
    """The loop's own work without the PACS: read_cxr + ReportGenerator.generate per file."""
    from llavarad.io.images import read_cxr

    start = time.perf_counter()
    for path in paths:
        generator.generate(read_cxr(path).image)
    return time.perf_counter() - start


def _loop_run(cfg, generator, info, n: int) -> float:
    from llavarad.pacs import run_loop

    start = time.perf_counter()
    summary = run_loop(cfg, generator, info, once=True)
    seconds = time.perf_counter() - start
    assert summary.stored == n, summary.errors
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=10, help="copies of the 3 real DICOMs (studies = 3 x copies)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each; the best time of each counts")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    reason = orthanc_missing_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")

    import pydicom

    from llavarad.generate import GenerationSettings, ReportGenerator, run_generation
    from llavarad.model.build import init_random, save_model
    from llavarad.pacs import PacsConfig, run_loop
    from llavarad.report_formats import ModelInfo

    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, batch_size=1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = init_random("tiny", seed=0)
        save_model(bundle, tmp / "model")
        paths = _studies(args.data, args.copies, tmp)
        n = len(paths)
        manifest = tmp / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"id": p.stem, "image": str(p)}) + "\n" for p in paths))
        run_generation(bundle, manifest, tmp / "warm.jsonl", settings=settings)  # warm-up (threads, caches)
        info = ModelInfo.from_model_dir(tmp / "model", settings={"max_new_tokens": args.new_tokens}, bundle=bundle)
        generator = ReportGenerator(bundle, settings)
        plain_times, loop_times, api_times = [], [], []
        with OrthancServer(workdir=tmp / "orthanc") as pacs:
            os.environ["LLAVARAD_BENCH_PACS"] = f"{pacs.user}:{pacs.password}"
            for rnd in range(args.rounds):  # interleaved, order alternating: a shared machine's load hits both
                for kind in (("plain", "api", "loop") if rnd % 2 == 0 else ("loop", "api", "plain")):
                    if kind == "api":
                        api_times.append(_api_run(generator, paths))
                    elif kind == "plain":
                        plain_times.append(_plain_run(bundle, manifest, tmp / f"preds{rnd}.jsonl", settings, n))
                    else:
                        pacs.delete_all()
                        pacs.client().store_instances([pydicom.dcmread(p) for p in paths])
                        cfg = PacsConfig(pacs.dicomweb_url, state_path=tmp / f"state{rnd}.jsonl", auth="basic",
                                         auth_env="LLAVARAD_BENCH_PACS")
                        loop_times.append(_loop_run(cfg, generator, info, n))
            start = time.perf_counter()
            again = run_loop(cfg, generator, info, once=True)  # nothing left: the cost of a polling pass
            t_idle = time.perf_counter() - start
            assert again.stored == 0
    t_plain, t_loop, t_api = min(plain_times), min(loop_times), min(api_times)
    plain_rate, loop_rate, api_rate = 60 * n / t_plain, 60 * n / t_loop, 60 * n / t_api
    overhead_ms = 1000 * (t_loop - t_api) / n
    import torch

    print(f"{n} studies, tiny preset, {args.new_tokens} tokens each, {torch.get_num_threads()} torch threads, best of "
          f"{args.rounds} interleaved rounds (generate {', '.join(f'{t:.1f}' for t in plain_times)} s; same work "
          f"through the Python API {', '.join(f'{t:.1f}' for t in api_times)} s; loop "
          f"{', '.join(f'{t:.1f}' for t in loop_times)} s)")
    print(f"generate --manifest: {plain_rate:.1f} studies/min; read_cxr + ReportGenerator: {api_rate:.1f}; PACS loop: "
          f"{loop_rate:.1f}; idle polling pass over {n} finished studies: {t_idle * 1000:.0f} ms")
    print(f"RESULT pacs_loop_studies_per_minute {loop_rate:.1f} studies/min goal=none")
    print(f"RESULT plain_generate_studies_per_minute {plain_rate:.1f} studies/min goal=none")
    print(f"RESULT pacs_loop_vs_plain_generate {loop_rate / plain_rate:.2f} x goal=none")
    print(f"RESULT pacs_loop_vs_same_work_without_pacs {loop_rate / api_rate:.2f} x goal=none")
    print(f"RESULT pacs_round_trip_overhead_per_study {overhead_ms:.0f} ms goal=<=250")
    print(f"RESULT pacs_idle_pass {t_idle * 1000:.0f} ms goal=none")


if __name__ == "__main__":
    main()
