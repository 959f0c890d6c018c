"""Rule-based labeler: throughput on the Open-I reports (one core) and accuracy against the gold standard.

Run: ``python benchmarks/labeler.py`` (needs ../shared/data/reports/openi_dev beside the checkout).

Throughput: reports per second of ``RuleLabeler.label`` over all 3,080 Open-I dev reports
(findings + impression), best of ``--repeats`` passes, each on a freshly built labeler so that
its word and sentence memos start empty (sentences repeating within the corpus still hit them,
as they would in any real run). The labeler is pure Python, so it uses one core. The baseline
is measured in the same run: the same pipeline with its phrase search done the plain way (one
regular expression per observation/cue class scanned over each sentence), which is what the
word-start index replaces.

Accuracy: micro- and per-class F1 of positive mentions on the 8 mapped findings (and with No
Finding, 9), uncertain counted as negative and as positive, for both ``alternatives`` settings;
the default setting also on the held-out fold of the dev part (``in_held_out_fold``, 618 reports
kept out of rule writing) and on the rest.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from llavarad.evaluate.labelers import get_labeler  # noqa: E402
from llavarad.evaluate.rule_labeler import RuleLabeler  # noqa: E402
from llavarad.evaluate.rule_labeler.validation import (  # noqa: E402
    in_held_out_fold,
    load_openi,
    positive_mention_f1,
)

OPENI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reports" / "openi_dev"


class _PlainIndex:
    """Baseline phrase search: one compiled alternation per label, ``finditer`` over the report."""

    def __init__(self, index: object, table: list[tuple[str, list[str], bool]]):
        self.labels = [label for label, _, _ in table]
        self._patterns = [
            re.compile("(?<![a-z])(?:" + "|".join(f"(?:{f})" for f in frags) + ")" + ("(?![a-z])" if end else ""))
            for _, frags, end in table
        ]

    def find(self, text: str, words: object) -> list[tuple[int, int, int]]:
        out = [(m.start(), m.end(), i) for i, p in enumerate(self._patterns) for m in p.finditer(text)]
        out.sort(key=lambda hit: (hit[0], hit[2]))  # by start, then label order, as the index reports them
        return out


def _plain_labeler() -> RuleLabeler:
    from llavarad.evaluate.rule_labeler import phrases

    lab = RuleLabeler()
    classes = lab.config.cue_classes()
    table = [(obs, list(f), False) for obs, f in phrases.MENTIONS.items()]
    table += [(f"unmention:{obs}", list(f), False) for obs, f in phrases.UNMENTIONS.items()]
    table += [(str(k), pats, True) for k, pats in classes.items()]
    assert [label for label, _, _ in table][: len(lab._observations)] == lab._observations
    lab._index = _PlainIndex(lab._index, table)  # type: ignore[assignment]
    return lab


def _rate(make: Callable[[], RuleLabeler], texts: list[str], repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` reports/s, each pass on a fresh labeler (empty word and sentence memos),
    by the wall clock and by the process's CPU time (less sensitive to other jobs on the cores)."""
    make().label(texts[:50])  # import and first-call costs out of the timing
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        lab = make()
        t0, c0 = time.perf_counter(), time.process_time()
        lab.label(texts)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return len(texts) / best, len(texts) / best_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--openi", type=Path, default=OPENI)
    args = parser.parse_args(argv)
    if not args.openi.is_dir():
        print(f"missing {args.openi}: the Open-I dev reports are needed", file=sys.stderr)
        return 1
    uids, texts, gold = load_openi(args.openi)
    print(f"Open-I dev reports: {len(texts)} (findings + impression), mean {sum(map(len, texts)) / len(texts):.0f} chars")

    fast, fast_cpu = _rate(RuleLabeler, texts, args.repeats)
    plain, plain_cpu = _rate(_plain_labeler, texts, args.repeats)
    warm_lab = RuleLabeler()
    warm_lab.label(texts)
    t0 = time.perf_counter()
    warm_lab.label(texts)
    warm = len(texts) / (time.perf_counter() - t0)
    assert _plain_labeler().label(texts) == RuleLabeler().label(texts), "baseline and index disagree"
    print(f"throughput, one core, fresh labeler per pass: indexed {fast:,.0f} reports/s; plain regex scan "
          f"{plain:,.0f} reports/s ({fast / plain:.2f}x); second pass over the same reports (all sentences "
          f"memoised) {warm:,.0f} reports/s")
    print(f"by CPU time of this process: indexed {fast_cpu:,.0f} reports/s; plain {plain_cpu:,.0f} reports/s "
          f"({fast_cpu / plain_cpu:.2f}x); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    results = {}
    for alternatives in ("positive", "uncertain"):
        labels = get_labeler("rules", alternatives=alternatives).label(texts)
        for upos in (False, True):
            s = positive_mention_f1(labels, gold, uncertain_as_positive=upos)
            results[(alternatives, upos)] = s
            print(f"\nalternatives={alternatives}, uncertain as {'positive' if upos else 'negative'}:")
            print(f"  {'observation':<18} {'P':>6} {'R':>6} {'F1':>6} {'n':>5}")
            for obs, v in s.items():
                print(f"  {obs:<18} {v['precision']:6.3f} {v['recall']:6.3f} {v['f1']:6.3f} {int(v['support']):5d}")
    head = results[("positive", False)]
    default = get_labeler("rules").label(texts)
    folds = {}
    for name, held in (("rest", False), ("held_out", True)):
        idx = [i for i, uid in enumerate(uids) if in_held_out_fold(uid) == held]
        folds[name] = positive_mention_f1([default[i] for i in idx], {o: [v[i] for i in idx] for o, v in gold.items()})
        print(f"\ndefault, {name} fold ({len(idx)} reports): micro-F1 8 {folds[name]['micro_8']['f1']:.3f}, "
              f"9 {folds[name]['micro_9']['f1']:.3f}")
    print(f"RESULT labeler_reports_per_s {fast:.0f} reports/s goal=2000")
    print(f"RESULT labeler_speedup_vs_plain_regex {fast / plain:.2f} x goal=1")
    print(f"RESULT labeler_openi_micro_f1_8 {head['micro_8']['f1']:.3f} F1 goal=0.92")
    print(f"RESULT labeler_openi_micro_f1_9 {head['micro_9']['f1']:.3f} F1 goal=0.90")
    print(f"RESULT labeler_openi_micro_f1_8_held_out_fold {folds['held_out']['micro_8']['f1']:.3f} F1 goal=0.92")
    return 0


if __name__ == "__main__":
    sys.exit(main())
