"""Lexical metrics: BLEU-1, BLEU-4 (sacrebleu) and ROUGE-L (rouge_score), as LLaVA-Rad computed them.

* BLEU: sacrebleu corpus BLEU, default settings (13a tokenizer, mixed case, ``exp`` smoothing, no
  effective order), ``max_ngram_order`` 1 and 4, on sacrebleu's 0-100 scale.
* ROUGE-L: ``rouge_score.RougeScorer(["rougeL"], use_stemmer=False)``, F-measure of each
  (reference, prediction) pair, averaged over reports; reported on a 0-100 scale in the table.

Each report is tokenised once into BLEU sufficient statistics (hypothesis length, closest reference
length, matched and total n-grams for n = 1..4). Corpus BLEU of any subset or bootstrap resample is
then ``compute_bleu`` of a sum of rows, so 500 resamples cost one matrix product, not 500
re-tokenisations. BLEU-1 uses the first n-gram order of the same statistics, which is exactly what
``BLEU(max_ngram_order=1)`` computes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as _pkg_version

import numpy as np

from llavarad.evaluate.bootstrap import (
    SACREBLEU_SEED,
    bootstrap_median,
    percentile_interval,
    resample_counts,
    sacrebleu_counts,
    sacrebleu_interval,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BleuStats",
    "LexicalResult",
    "bleu_from_stats",
    "bleu_sacrebleu_bootstrap",
    "bleu_stats",
    "corpus_bleu",
    "lexical_metrics",
    "lexical_settings",
    "per_report_scores",
    "rouge_l_scores",
]

_MAX_ORDER = 4


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} predictions; pass one of each per report")
    for name, seq in (("reference", refs), ("prediction", hyps)):
        for i, text in enumerate(seq):
            if not isinstance(text, str):
                raise TypeError(f"{name} #{i} is {type(text).__name__}, not a string; "
                                "pass '' for an empty report instead of None")


@dataclass
class BleuStats:
    """Per-report BLEU sufficient statistics.

    Attributes:
        stats: int64 array of shape ``(n_reports, 2 + 2 * 4)``: hypothesis length, closest
            reference length, matched n-grams for n = 1..4, total hypothesis n-grams for n = 1..4.
    """

    stats: np.ndarray

    def __len__(self) -> int:
        return int(self.stats.shape[0])


def _bleu_metric(max_ngram_order: int = _MAX_ORDER, effective_order: bool = False):
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=max_ngram_order, effective_order=effective_order)


def bleu_stats(refs: Sequence[str], hyps: Sequence[str]) -> BleuStats:
    """Tokenise each pair once (sacrebleu 13a) and return its BLEU sufficient statistics."""
    _check_pairs(refs, hyps)
    if not refs:
        return BleuStats(np.zeros((0, 2 + 2 * _MAX_ORDER), dtype=np.int64))
    metric = _bleu_metric(_MAX_ORDER)
    # sacrebleu's own significance tests use this method; the parity test of this module checks
    # that summed rows reproduce corpus_score exactly, so an upstream change cannot go unnoticed.
    rows = metric._extract_corpus_statistics(list(hyps), [list(refs)])
    return BleuStats(np.asarray(rows, dtype=np.int64).reshape(len(refs), 2 + 2 * _MAX_ORDER))


def bleu_from_stats(summed: np.ndarray, max_ngram_order: int, effective_order: bool = False) -> float:
    """BLEU (0-100) from statistics summed over reports, shape ``(2 + 2 * 4,)``.

    ``effective_order=False`` is corpus BLEU (sacrebleu's default); ``True`` is sentence BLEU.
    """
    from sacrebleu.metrics import BLEU

    if not 1 <= max_ngram_order <= _MAX_ORDER:
        raise ValueError(f"max_ngram_order={max_ngram_order}: use 1..{_MAX_ORDER}")
    s = [int(x) for x in summed]
    correct = s[2:2 + max_ngram_order]
    total = s[2 + _MAX_ORDER:2 + _MAX_ORDER + max_ngram_order]
    score = BLEU.compute_bleu(correct, total, sys_len=s[0], ref_len=s[1], smooth_method="exp",
                              effective_order=effective_order, max_ngram_order=max_ngram_order)
    return float(score.score)


def bleu_sacrebleu_bootstrap(
    stats: BleuStats, max_ngram_order: int, n_resamples: int = 500, seed: int | None = SACREBLEU_SEED,
) -> dict[str, float]:
    """Corpus BLEU with sacrebleu's own bootstrap, as ``corpus_score(..., n_bootstrap=n_resamples)``.

    The release's BLEU rows (rrg_eval run.py) print that call's score (all reports) and
    ``mean -/+ ci`` of its resamples. This gives the same numbers from the per-report statistics:
    sacrebleu's resamples (:func:`llavarad.evaluate.bootstrap.sacrebleu_counts`), each scored from
    float32 sums as sacrebleu does, and its interval
    (:func:`llavarad.evaluate.bootstrap.sacrebleu_interval`).

    Returns:
        ``{"value", "ci_low", "ci_high", "bootstrap_mean", "bootstrap_median"}`` on sacrebleu's 0-100 scale.
    """
    from sacrebleu.metrics import BLEU

    st = stats.stats
    counts = sacrebleu_counts(len(stats), n_resamples, seed)
    sums = np.rint(counts @ st.astype(np.float64)).astype(np.float32)  # sacrebleu sums float32 rows
    order = int(max_ngram_order)
    reps = np.array([
        BLEU.compute_bleu(correct=row[2:2 + order], total=row[2 + _MAX_ORDER:2 + _MAX_ORDER + order],
                          sys_len=int(row[0]), ref_len=int(row[1]), smooth_method="exp",
                          effective_order=False, max_ngram_order=order).score
        for row in sums], dtype=np.float64)
    low, high, mean = sacrebleu_interval(reps)
    return {"value": bleu_from_stats(st.sum(axis=0), order), "ci_low": low, "ci_high": high,
            "bootstrap_mean": mean, "bootstrap_median": bootstrap_median(reps)}


def corpus_bleu(refs: Sequence[str], hyps: Sequence[str], max_ngram_order: int = 4) -> float:
    """sacrebleu corpus BLEU (13a tokenizer, exp smoothing), 0-100."""
    st = bleu_stats(refs, hyps)
    return bleu_from_stats(st.stats.sum(axis=0), max_ngram_order)


def rouge_l_scores(refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure of each pair (rouge_score, no stemmer), shape ``(n_reports,)``, in [0, 1]."""
    from rouge_score import rouge_scorer

    _check_pairs(refs, hyps)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)], dtype=np.float64)


def per_report_scores(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, list[float]]:
    """Scores of each (reference, prediction) pair, for per-report analyses such as ReXVal.

    Returns:
        ``{"bleu1": [...], "bleu4": [...], "rougeL": [...]}``, one value per pair, all in [0, 1]:
        sentence BLEU as ``sacrebleu.sentence_bleu`` computes it (exp smoothing, effective order)
        divided by 100, and the ROUGE-L F-measure.
    """
    st = bleu_stats(refs, hyps).stats
    return {
        "bleu1": [bleu_from_stats(row, 1, effective_order=True) / 100.0 for row in st],
        "bleu4": [bleu_from_stats(row, 4, effective_order=True) / 100.0 for row in st],
        "rougeL": rouge_l_scores(refs, hyps).tolist(),
    }


@dataclass
class LexicalResult:
    """Lexical metrics on a 0-100 scale, each as ``(value, ci_low, ci_high)``.

    ``rouge_l_per_report`` (shape ``(n,)``, in [0, 1]) is kept for per-report outputs;
    ``medians`` holds the median of each metric's bootstrap replicates ("BLEU-1", "BLEU-4", "ROUGE-L").
    """

    bleu1: tuple[float, float, float]
    bleu4: tuple[float, float, float]
    rouge_l: tuple[float, float, float]
    rouge_l_per_report: np.ndarray
    bleu_stats: BleuStats
    medians: dict[str, float] = field(default_factory=dict)


def lexical_metrics(
    refs: Sequence[str],
    hyps: Sequence[str],
    counts: np.ndarray | None = None,
    n_resamples: int = 500,
    seed: int = 0,
    confidence: float = 0.95,
) -> LexicalResult:
    """BLEU-1, BLEU-4 and ROUGE-L with percentile bootstrap intervals.

    Args:
        refs, hyps: one reference and one prediction per report.
        counts: resample multiplicities from :func:`llavarad.evaluate.bootstrap.resample_counts`,
            shape ``(n_resamples, n_reports)``; shared with the other metrics so intervals are
            paired. Computed from ``n_resamples`` and ``seed`` when omitted.
    """
    _check_pairs(refs, hyps)
    if not refs:
        raise ValueError("no report pairs to score")
    if counts is None:
        counts = resample_counts(len(refs), n_resamples, seed)
    st = bleu_stats(refs, hyps)
    resampled = counts @ st.stats.astype(np.float64)  # (R, 10) summed statistics per resample
    total = st.stats.sum(axis=0)
    out, medians = {}, {}
    for order in (1, 4):
        reps = np.array([bleu_from_stats(np.rint(row), order) for row in resampled])
        out[order] = (bleu_from_stats(total, order), *percentile_interval(reps, confidence))
        medians[f"BLEU-{order}"] = bootstrap_median(reps)
    rouge = rouge_l_scores(refs, hyps)
    rouge_reps = counts @ rouge / len(refs)
    r_low, r_high = percentile_interval(rouge_reps, confidence)
    medians["ROUGE-L"] = 100.0 * bootstrap_median(rouge_reps)
    return LexicalResult(
        bleu1=out[1],
        bleu4=out[4],
        rouge_l=(100.0 * float(rouge.mean()), 100.0 * r_low, 100.0 * r_high),
        rouge_l_per_report=rouge,
        bleu_stats=st,
        medians=medians,
    )


def _signature(max_ngram_order: int) -> str:
    metric = _bleu_metric(max_ngram_order)
    metric.corpus_score(["x"], [["x"]])  # sacrebleu knows the reference count only after a score
    return str(metric.get_signature().format())


def lexical_settings() -> dict[str, dict[str, object]]:
    """Implementation, version and settings of each lexical metric, for the result file."""
    sb = _pkg_version("sacrebleu")
    return {
        "BLEU-1": {"implementation": "sacrebleu corpus BLEU", "version": sb,
                   "settings": {"signature": _signature(1),
                                "max_ngram_order": 1, "tokenize": "13a", "smooth_method": "exp",
                                "lowercase": False, "effective_order": False, "scale": "0-100"}},
        "BLEU-4": {"implementation": "sacrebleu corpus BLEU", "version": sb,
                   "settings": {"signature": _signature(4),
                                "max_ngram_order": 4, "tokenize": "13a", "smooth_method": "exp",
                                "lowercase": False, "effective_order": False, "scale": "0-100"}},
        "ROUGE-L": {"implementation": "rouge_score RougeScorer(['rougeL'])", "version": _pkg_version("rouge_score"),
                    "settings": {"use_stemmer": False, "measure": "fmeasure", "aggregate": "mean over reports",
                                 "scale": "0-100 (mean F-measure x 100)"}},
    }
