"""Wall time of the full `evaluate` stage on 2,000 report pairs (goal: < 60 s on 2 CPU cores).

Pairs come from the real Open-I reports in ../shared/data: the findings of report i as the
reference and those of report i+7 as the "prediction", so labels, n-grams and prior mentions are
realistic. Runs the whole stage as `llavarad evaluate` does (rule-based labeler, lexical metrics,
F1, prior mentions, 500 paired bootstrap resamples, every output file incl. the plot; RadGraph
off since its weights are not available offline), from an empty output folder.

Baseline, measured in the same run: the straightforward bootstrap that re-scores every resample
with sacrebleu (BLEU-4) and scikit-learn (micro F1-14), timed on 20 resamples and scaled to 500.

    python benchmarks/evaluate.py [--pairs 2000] [--bootstrap 500]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reports" / "openi_dev" / "openi_reports_dev.csv"


def _labeler():
    try:
        from llavarad.evaluate.labelers import get_labeler

        return get_labeler("rules")
    except ImportError:
        from llavarad.evaluate.rule_labeler import RuleLabeler  # before labelers.get_labeler existed

        return RuleLabeler()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=500)
    args = ap.parse_args()

    import sacrebleu
    from sklearn.metrics import f1_score

    from llavarad.evaluate.bootstrap import bootstrap_indices
    from llavarad.evaluate.chexbert_f1 import binarize, chexbert_f1
    from llavarad.evaluate.lexical import lexical_metrics
    from llavarad.evaluate.priors import detect_prior_mentions
    from llavarad.evaluate.run import EvaluateConfig, evaluate

    if not DATA.is_file():
        print(f"missing {DATA}: the Open-I reports of ../shared/data are needed", file=sys.stderr)
        return 1
    with DATA.open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r["findings"].strip()]
    n = args.pairs
    refs = [texts[i % len(texts)] for i in range(n)]
    hyps = [texts[(i + 7) % len(texts)] for i in range(n)]
    labeler = _labeler()

    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / "preds.jsonl"
        with preds.open("w", encoding="utf-8") as fh:
            for i, (r, h) in enumerate(zip(refs, hyps)):
                fh.write(json.dumps({"id": f"p{i}", "reference": r, "prediction": h, "error": None,
                                     "model": "openi-shifted-pairs"}) + "\n")
        t0 = time.perf_counter()
        result = evaluate(preds, Path(tmp) / "eval", EvaluateConfig(bootstrap=args.bootstrap, radgraph="off"),
                          labeler=labeler)
        total = time.perf_counter() - t0

    # stage breakdown (separate calls, same inputs)
    t = time.perf_counter()
    ref_rows, hyp_rows = labeler.label(refs), labeler.label(hyps)
    t_label = time.perf_counter() - t
    t = time.perf_counter()
    lexical_metrics(refs, hyps, n_resamples=args.bootstrap)
    t_lex = time.perf_counter() - t
    t = time.perf_counter()
    chexbert_f1(ref_rows, hyp_rows, n_resamples=args.bootstrap)
    t_f1 = time.perf_counter() - t
    t = time.perf_counter()
    detect_prior_mentions(hyps)
    detect_prior_mentions(refs)
    t_prior = time.perf_counter() - t

    # baseline: re-score each resample (BLEU-4 with sacrebleu, micro F1-14 with scikit-learn)
    k = 20
    idx = bootstrap_indices(n, k, seed=0)
    y_t, y_p = binarize(ref_rows), binarize(hyp_rows)
    t = time.perf_counter()
    for row in idx:
        sacrebleu.BLEU().corpus_score([hyps[i] for i in row], [[refs[i] for i in row]])
        f1_score(y_t[row], y_p[row], average="micro", zero_division=0)
    naive_per_resample = (time.perf_counter() - t) / k
    t = time.perf_counter()
    lexical_metrics(refs, hyps, n_resamples=args.bootstrap)
    chexbert_f1(ref_rows, hyp_rows, n_resamples=args.bootstrap)
    ours = time.perf_counter() - t
    naive = naive_per_resample * args.bootstrap
    m = result["metrics"]

    print(f"pairs: {n}, bootstrap resamples: {args.bootstrap}, labeler: {labeler.name} {labeler.version}")
    print(f"metrics: Micro-F1-14 {m['Micro-F1-14']['value']:.1f}, Micro-F1-5 {m['Micro-F1-5']['value']:.1f}, "
          f"BLEU-1 {m['BLEU-1']['value']:.1f}, BLEU-4 {m['BLEU-4']['value']:.1f}, ROUGE-L {m['ROUGE-L']['value']:.1f}, "
          f"prior mentions {m['Prior-mentions']['value']:.1f}%")
    gaps = {k: abs(v["full_sample"] - v["bootstrap_median"]) for k, v in m.items() if v is not None}
    worst = max(gaps, key=gaps.get)
    print(f"largest |full-sample value - bootstrap median| (the two conventions): {gaps[worst]:.2f} points ({worst}); "
          f"mean over metrics {sum(gaps.values()) / len(gaps):.2f}")
    print(f"full evaluate (all outputs, plot): {total:.2f} s")
    print(f"  labeling {2 * n} reports: {t_label:.2f} s ({2 * n / t_label:.0f} reports/s)")
    print(f"  lexical + bootstrap: {t_lex:.2f} s; F1 + bootstrap: {t_f1:.2f} s; prior mentions: {t_prior:.2f} s")
    print(f"bootstrap of BLEU-4 + micro F1-14, {args.bootstrap} resamples: vectorised (incl. scoring) {ours:.2f} s, "
          f"re-scoring each resample {naive:.1f} s (measured on {k}, scaled)")
    print(f"RESULT evaluate_wall_time_{n}_pairs {total:.2f} s goal=<60")
    print(f"RESULT evaluate_bootstrap_speedup {naive / ours:.1f} x goal=>1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
