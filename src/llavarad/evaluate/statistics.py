"""The number that heads each metric of the table: the release's convention (default) or the full sample.

``"release"``: what LLaVA-Rad's evaluation (llava/eval/rrg_eval) prints and the paper's table
reports, so the two tables mean the same thing:

* CheXbert micro/macro F1-14/F1-5 (both uncertainty policies), F1-RadGraph and ROUGE-L: the
  median of 500 bootstrap replicates, with the 2.5th-97.5th percentile interval of the same
  replicates. The resamples are ``RandomState(3).randint(0, n, (500, n))``: what
  ``scipy.stats.bootstrap(random_state=3)`` draws for CheXbert and F1-RadGraph, and what
  ``rouge_score``'s ``BootstrapAggregator`` draws for ROUGE-L after ``numpy.random.seed(3)``.
* BLEU-1 and BLEU-4: the corpus score of all reports, with sacrebleu's own bootstrap interval
  (its resamples with seed 12345, mean of the replicates plus or minus half the distance of its
  2.5% bounds).

``"full"``: the value on all reports for every metric, each with the percentile interval of the
shared resamples (the convention of most other tools).

Whichever heads the row, every entry also records the other numbers: ``full_sample``,
``bootstrap_median`` (and for the release's BLEU ``bootstrap_mean``), and ``headline`` says which
one ``value`` is. docs/evaluation.md cites the release lines each choice mirrors.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from llavarad.evaluate.bootstrap import bootstrap_median, percentile_interval
from llavarad.evaluate.chexbert_f1 import ChexbertF1Result
from llavarad.evaluate.lexical import LexicalResult

__all__ = ["STATISTICS", "Statistic", "metric_entry", "statistic_caption", "statistic_settings", "table_metrics", "setting_problems"]

Statistic = Literal["release", "full"]
STATISTICS: tuple[str, ...] = ("release", "full")
_MEDIAN, _FULL = "bootstrap median", "full sample"


def metric_entry(full: float, low: float, high: float, median: float, headline: str) -> dict[str, Any]:
    """One metric's record: ``value`` is ``median`` or ``full`` as ``headline`` says."""
    if headline not in (_MEDIAN, _FULL):
        raise ValueError(f"headline={headline!r}: use {_MEDIAN!r} or {_FULL!r}")
    return {"value": median if headline == _MEDIAN else full, "ci_low": low, "ci_high": high, "full_sample": full,
            "bootstrap_median": median, "headline": headline}


def _mean_entry(per_item: np.ndarray, counts: np.ndarray, confidence: float, headline: str) -> dict[str, Any]:
    reps = 100.0 * (counts @ per_item) / per_item.size
    low, high = percentile_interval(reps, confidence)
    return metric_entry(100.0 * float(per_item.mean()), low, high, bootstrap_median(reps), headline)


def table_metrics(
    f1: ChexbertF1Result,
    lex: LexicalResult,
    radgraph: dict[str, np.ndarray] | None,
    counts: np.ndarray,
    statistic: Statistic,
    confidence: float,
    bleu_release: dict[int, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Every column of the table (0-100 scale) under ``statistic``.

    Args:
        f1, lex: the CheXbert-F1 and lexical results, computed with ``counts``.
        radgraph: per-report RadGraph scores (``RadGraphScorer.score_all``), or None when skipped.
        counts: the shared resample multiplicities, shape ``(n_resamples, n_reports)``.
        bleu_release: for ``"release"``, ``{1: ..., 4: ...}`` from
            :func:`llavarad.evaluate.lexical.bleu_sacrebleu_bootstrap`.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: use one of {', '.join(STATISTICS)}")
    boot = _MEDIAN if statistic == "release" else _FULL
    out: dict[str, dict[str, Any] | None] = {}
    for policy, suffix in (("negative", ""), ("positive", "+")):
        for subset in ("14", "5"):
            for average in ("micro", "macro"):
                v, lo, hi = f1.summary[policy][subset][average]
                out[f"{average.capitalize()}-F1-{subset}{suffix}"] = metric_entry(
                    v, lo, hi, f1.medians[policy][subset][average], boot)
    out["F1-RadGraph"] = None if radgraph is None else _mean_entry(radgraph["partial"], counts, confidence, boot)
    for key, order, val in (("BLEU-1", 1, lex.bleu1), ("BLEU-4", 4, lex.bleu4)):
        if statistic == "release":
            if bleu_release is None or order not in bleu_release:
                raise ValueError("the release convention needs sacrebleu's bootstrap of BLEU-1 and BLEU-4 (bleu_release)")
            b = bleu_release[order]
            out[key] = {**metric_entry(b["value"], b["ci_low"], b["ci_high"], b["bootstrap_median"], _FULL),
                        "bootstrap_mean": b["bootstrap_mean"]}
        else:
            out[key] = metric_entry(val[0], val[1], val[2], lex.medians[key], _FULL)
    out["ROUGE-L"] = metric_entry(lex.rouge_l[0], lex.rouge_l[1], lex.rouge_l[2], lex.medians["ROUGE-L"], boot)
    # ReXrank's column is its mean over reports under either convention (that is what it publishes).
    out["RadGraph-combined"] = None if radgraph is None else _mean_entry(radgraph["combined"], counts, confidence, _FULL)
    return out


def statistic_settings(statistic: Statistic, n_resamples: int, seed: int, bleu_seed: int | None,
                       confidence: float) -> dict[str, Any]:
    """What heads each column and how its interval was made, for ``metrics.json``."""
    shared = (f"percentile interval ({100 * confidence:g}%) of {n_resamples} resamples "
              f"numpy.random.RandomState({seed}).randint(0, n, ({n_resamples}, n))")
    if statistic == "release":
        return {
            "convention": "release",
            "source": "microsoft/LLaVA-Rad llava/eval/rrg_eval (the paper's table)",
            "CheXbert F1, F1-RadGraph, ROUGE-L": f"value = bootstrap median; {shared}",
            "BLEU-1, BLEU-4": (f"value = corpus BLEU of all reports; interval = sacrebleu's bootstrap "
                               f"(corpus_score n_bootstrap={n_resamples}, seed {bleu_seed}): mean +/- half the "
                               "distance between its 2.5% bounds"),
            "RadGraph-combined": f"value = mean over reports (ReXrank); {shared}",
        }
    return {"convention": "full", "all metrics": f"value = the metric on all reports; {shared}"}


def statistic_caption(settings: dict[str, Any]) -> str:
    """One sentence for the table caption saying what the numbers are."""
    boot = settings["bootstrap"]
    n, seed = boot["n_resamples"], boot["seed"]
    if settings["statistic"]["convention"] == "release":
        return (f"Release convention (LLaVA-Rad rrg_eval): CheXbert F1, F1-RadGraph and ROUGE-L are the median of "
                f"{n} bootstrap resamples (seed {seed}) with the 2.5-97.5 percentile interval; BLEU is the corpus "
                f"score with sacrebleu's bootstrap interval (seed {boot['bleu_seed']}); RadGraph-combined (ReXrank) "
                "is the mean over reports.")
    return (f"Full-sample convention: every value is the metric on all reports, with the "
            f"{round(100 * boot['confidence'])}% percentile interval of {n} bootstrap resamples (seed {seed}).")


def setting_problems(*, labeler: str, chexbert_weights: object, statistic: str, bootstrap: object,
                     seeds: dict[str, object], confidence: object, min_resamples: int = 1) -> list[str]:
    """What is wrong with the settings every metric table shares (``evaluate`` and ``compare``),
    one message per problem, for the caller's :class:`~llavarad.config.ConfigError`."""
    problems = []
    if labeler not in ("rules", "chexbert"):
        problems.append(f"labeler: {labeler!r} is not one of 'rules', 'chexbert'")
    if chexbert_weights and labeler != "chexbert":
        problems.append("chexbert_weights is set but labeler is not 'chexbert'; add --labeler chexbert")
    if statistic not in STATISTICS:
        problems.append(f"statistic: {statistic!r} is not one of {', '.join(map(repr, STATISTICS))}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < min_resamples:
        problems.append(f"bootstrap: {bootstrap!r} must be an integer >= {min_resamples} (resamples, e.g. 500)")
    for key, value in seeds.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            problems.append(f"{key}: {value!r} must be an integer in [0, 2**32)")
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        problems.append(f"confidence: {confidence!r} must be a fraction in (0, 1), e.g. 0.95")
    return problems
