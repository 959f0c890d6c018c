"""Header-reading speed of the DICOM archive import (``llavarad data import dicom``) on 2 cores.

A PACS-like tree of several thousand DICOM files is generated from the real DICOMs in
../shared/data/images (each copy with new UIDs, patient ids, accession numbers and varied view,
body part, modality and SOP class tags, plus the planted oddities of
``llavarad.data.importers._archive_testing``) with a report CSV. Measured in the same run:

* the import's header phase with 1 worker (the baseline) and with 2 workers (the goal: >= 2,000
  files/s on 2 cores), each from an empty state, and the whole import (headers + assembly);
* for reference, a loop that reads each file whole with ``pydicom.dcmread`` (pixels included, no
  walk, no output) in one process, on a sample;
* CPU seconds per file over all processes, and the rate two free cores would sustain at that cost
  (the machines of this project are shared, so the wall-clock rate depends on the load);
* the parent's peak resident memory, to show the import streams.

Files are read from the page cache (just written); a cold PACS export on disk or a network share
is bounded by its storage instead.

    python benchmarks/import_dicom.py [--patients 1200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from llavarad.data.importers._archive_testing import make_archive
from llavarad.data.importers.dicom_archive import (
    DicomImportConfig,
    import_dicom_archive,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
SOURCES = ("siim_pa_jpeg_baseline.dcm", "cr_monochrome1_10bit_nopreamble.dcm")


def naive_rate(root: Path, n: int) -> float:
    """Files/s of reading whole files (pixels included) with pydicom in one process."""
    import pydicom

    paths = sorted(root.rglob("*.dcm"))[:n]
    t0 = time.perf_counter()
    for p in paths:
        ds = pydicom.dcmread(p, force=True)
        _ = ds.get("PixelData")
    return len(paths) / (time.perf_counter() - t0)


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_import(root: Path, reports: Path, out: Path, workers: int) -> dict[str, float]:
    """Wall-clock rates of the header phase and the whole import, and CPU seconds per file (all processes)."""
    cpu0 = _cpu()
    s = import_dicom_archive(root, reports, out, DicomImportConfig(workers=workers, restart=True))
    cpu = _cpu() - cpu0  # the pool's workers have exited: their time is in RUSAGE_CHILDREN
    return {"headers": s.files / s.seconds["headers"], "whole": s.files / sum(s.seconds.values()),
            "cpu_ms": 1000 * cpu / s.files, "images": s.images}


def quarter_tree(root: Path, out: Path) -> Path:
    """A tree of symlinks to the first quarter of the patient folders of ``root``."""
    patients = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("PAT"))
    for folder in patients[: max(1, len(patients) // 4)]:
        for f in folder.rglob("*.dcm"):
            link = out / f.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    return out


def traced_peak(root: Path, reports: Path, out: Path) -> tuple[float, float]:
    """Peak of Python's own allocations (tracemalloc, MiB) during a 1-worker import, and the size of
    what it wrote (MiB): a peak well under the outputs shows that nothing holds them in memory."""
    import tracemalloc

    from llavarad.data.importers.dicom_archive import output_paths

    tracemalloc.start()
    import_dicom_archive(root, reports, out, DicomImportConfig(workers=1, restart=True))
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    paths = output_paths(out)
    written = sum(paths[k].stat().st_size for k in ("state", "manifest", "problems")) / 2**20
    return peak, written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1200, help="patients x 2 studies (about 1.7 images each)")
    ap.add_argument("--keep", type=Path, default=None, help="write the tree here and keep it")
    args = ap.parse_args()
    if not all((SHARED / s).is_file() for s in SOURCES):
        print(f"missing {SHARED}: the benchmark needs ../shared/data beside the checkout", file=sys.stderr)
        return 1
    work = args.keep or Path(tempfile.mkdtemp(prefix="llavarad-import-bench-"))
    try:
        t0 = time.perf_counter()
        plan = make_archive([SHARED / s for s in SOURCES], work / "export", args.patients, seed=0)
        reports = work / "reports.csv"
        with reports.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["accession_number", "report"])
            for st in plan.studies:
                w.writerow([st.accession, "INDICATION: Cough.\nFINDINGS: The lungs are clear.\nIMPRESSION: Normal."])
        size = sum(p.stat().st_size for p in (work / "export").rglob("*") if p.is_file())
        print(f"generated {plan.files:,} files ({size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs visible")
        naive = naive_rate(work / "export", 400)
        one = run_import(work / "export", reports, work / "out1" / "m.jsonl", 1)
        two = run_import(work / "export", reports, work / "out2" / "m.jsonl", 2)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak, outputs = traced_peak(work / "export", reports, work / "out3" / "m.jsonl")
        quarter = quarter_tree(work / "export", work / "quarter")
        peak_q, outputs_q = traced_peak(quarter, reports, work / "out4" / "m.jsonl")
        capacity = 2000 / two["cpu_ms"]  # files/s two free cores could sustain at the measured CPU cost
        print(f"  load average {os.getloadavg()[0]:.1f} (other work on the machine slows the wall-clock rates)")
        print(f"  naive whole-file pydicom read, 1 process    {naive:9,.0f} files/s")
        print(f"  import headers, 1 worker                    {one['headers']:9,.0f} files/s "
              f"({one['headers'] / naive:.1f}x naive)")
        print(f"  import headers, 2 workers                   {two['headers']:9,.0f} files/s "
              f"({two['headers'] / naive:.1f}x naive, {two['headers'] / one['headers']:.2f}x 1 worker)")
        print(f"  whole import (headers + assembly), 2 workers {two['whole']:8,.0f} files/s; "
              f"{two['images']:,} images kept")
        print(f"  CPU per file, all processes, whole import: {two['cpu_ms']:.3f} ms with 2 workers, "
              f"{one['cpu_ms']:.3f} ms with 1; two free cores would sustain {capacity:,.0f} files/s")
        print(f"  parent peak RSS {rss:,.0f} MiB; Python allocations during a 1-worker import peak at {peak:.1f} MiB "
              f"for all files (outputs {outputs:.1f} MiB) and {peak_q:.1f} MiB for a quarter of them (outputs "
              f"{outputs_q:.1f} MiB): memory does not grow with the archive")
        print(f"RESULT import_dicom_headers_per_s {two['headers']:.0f} files/s goal=2000")
        print(f"RESULT import_dicom_parallel_speedup {two['headers'] / one['headers']:.2f} x goal=1.5")
        print(f"RESULT import_dicom_whole_cpu_bound_per_s_2cores {capacity:.0f} files/s goal=2000")
        print(f"RESULT import_dicom_whole_per_s {two['whole']:.0f} files/s goal=none")
        print(f"RESULT import_dicom_memory_growth_4x_files {peak / peak_q:.2f} x goal=<=1.5")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
