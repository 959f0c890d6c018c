"""Sectioning throughput and agreement on the real Open-I reports (../shared/data).

The source-separated sections of the 3,080 Open-I development reports are re-joined with varied
headers and layouts (seed 0), then split again, on one core. Reported: reports/s of
``split_sections`` (best of 5 passes), the same for a naive baseline splitter measured in the same
run (one regex on exact upper-case headers, as a reference point), and per-section exact-match
agreement after whitespace normalisation.

    python benchmarks/sectioning.py
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from llavarad.data._sectioning_eval import read_separated_reports, rejoin_report, section_agreement  # noqa: E402
from llavarad.data.sections import split_sections  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reports" / "openi_dev" / "openi_reports_dev.csv"
_NAIVE = re.compile(r"\b(INDICATION|COMPARISON|FINDINGS|IMPRESSION)\s*:")


def naive_split(text: str) -> dict[str, str]:
    """Baseline: split only at exact upper-case INDICATION/COMPARISON/FINDINGS/IMPRESSION headers."""
    parts = _NAIVE.split(text)
    return {parts[i].lower(): " ".join(parts[i + 1].split()) for i in range(1, len(parts) - 1, 2)}


def rate(fn, texts: list[str], passes: int = 5) -> float:
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for text in texts:
            fn(text)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def main() -> int:
    if not DATA.is_file():
        print(f"missing {DATA}: the benchmark needs ../shared/data beside the checkout", file=sys.stderr)
        return 1
    rows = read_separated_reports(DATA)
    rng = random.Random(0)
    texts = [rejoin_report(r, rng) for r in rows]
    ours = rate(split_sections, texts)
    naive = rate(naive_split, texts)
    agreement = section_agreement(rows, seed=0)
    print(f"{len(texts):,} Open-I reports, re-joined with varied headers (seed 0), one core, best of 5 passes")
    print(f"  split_sections        {ours:10,.0f} reports/s")
    print(f"  naive regex baseline  {naive:10,.0f} reports/s   (ours runs at {ours / naive:.2f}x its speed)")
    print("  exact-match agreement after whitespace normalisation (reports with the section / all reports):")
    for name, r in agreement.items():
        print(f"    {name:<11} {r['present']:.2%} of {int(r['n_present']):,}   {r['all']:.2%} of all")
    naive_hits = sum(" ".join((row["findings"] or "").split()) == naive_split(t).get("findings", "")
                     for row, t in zip(rows, texts))
    print(f"  naive baseline findings agreement: {naive_hits / len(rows):.2%} of all")
    print(f"RESULT sectioning_throughput {ours:.0f} reports/s goal=5000")
    print(f"RESULT sectioning_vs_naive_speed {ours / naive:.2f} x goal=none")
    print(f"RESULT sectioning_findings_agreement {100 * agreement['findings']['present']:.2f} % goal=none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
