"""Bootstrap confidence intervals shared by every metric of the evaluation stage.

All metrics of one evaluation draw the *same* resamples (same ``seed`` -> same index matrix), so
intervals of different metrics are paired, as in LLaVA-Rad's evaluation (500 resamples of the test
reports, percentile interval). Two ways to use it:

* :func:`bootstrap_ci` calls ``statistic(indices)`` once on ``arange(n)`` and once per resample;
  simple and general, fine when the statistic is cheap.
* :func:`resample_counts` gives the ``(n_resamples, n_items)`` multiplicity matrix of the same
  resamples, so a statistic built from per-item sufficient statistics (n-gram match counts,
  confusion-matrix cells, per-report scores) is one matrix product for all resamples at once;
  :func:`bootstrap_mean_ci` and :func:`percentile_interval` finish the job.

Two generators draw the resamples. ``"pcg64"`` (``numpy.random.default_rng(seed)``) is the
default of the library functions. ``"legacy"`` (``numpy.random.RandomState(seed).randint``) draws
exactly the resamples of the release's evaluation: ``scipy.stats.bootstrap(random_state=seed)``
(its CheXbert and F1-RadGraph intervals) and ``rouge_score``'s ``BootstrapAggregator`` after
``numpy.random.seed(seed)`` (its ROUGE-L interval) both take row ``r`` of that one matrix, so the
evaluation stage uses it with the release's seed 3. sacrebleu's own BLEU bootstrap uses a third
draw (:func:`sacrebleu_counts`) and a symmetric interval (:func:`sacrebleu_interval`).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "RELEASE_SEED",
    "SACREBLEU_SEED",
    "Generator",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_mean_ci",
    "bootstrap_median",
    "percentile_interval",
    "resample_counts",
    "sacrebleu_counts",
    "sacrebleu_interval",
]

Generator = Literal["pcg64", "legacy"]
#: Seed of every bootstrap of the release's evaluation (numpy and random seeded at import of its
#: run.py; random_state of its scipy bootstraps).
RELEASE_SEED = 3
#: sacrebleu's default bootstrap seed (its SACREBLEU_SEED environment variable, when unset).
SACREBLEU_SEED = 12345


def _check(n_items: int, n_resamples: int, confidence: float) -> None:
    problems = []
    if int(n_items) < 1:
        problems.append(f"n_items={n_items!r}: need at least one item to resample")
    if int(n_resamples) < 1:
        problems.append(f"n_resamples={n_resamples!r}: use a positive number such as 500")
    if not 0.0 < float(confidence) < 1.0:
        problems.append(f"confidence={confidence!r}: use a fraction in (0, 1) such as 0.95")
    if problems:
        raise ValueError("; ".join(problems))


def bootstrap_indices(n_items: int, n_resamples: int = 500, seed: int = 0, generator: Generator = "pcg64") -> np.ndarray:
    """Resampled item indices, drawn with replacement.

    Args:
        generator: "pcg64" (``default_rng(seed).integers``) or "legacy"
            (``RandomState(seed).randint``, the release's resamples; see the module docs).

    Returns:
        int64 array of shape ``(n_resamples, n_items)``; row ``r`` is resample ``r``. The same
        ``(n_items, n_resamples, seed, generator)`` always gives the same matrix.
    """
    _check(n_items, n_resamples, 0.5)
    if generator == "legacy":
        return np.random.RandomState(seed).randint(0, n_items, size=(n_resamples, n_items)).astype(np.int64)
    if generator != "pcg64":
        raise ValueError(f"generator={generator!r}: use 'pcg64' or 'legacy'")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n_resamples, n_items), dtype=np.int64)


def _counts_of(idx: np.ndarray, n_items: int) -> np.ndarray:
    n_resamples = idx.shape[0]
    offsets = idx + (np.arange(n_resamples, dtype=np.int64) * n_items)[:, None]
    counts = np.bincount(offsets.ravel(), minlength=n_resamples * n_items)
    return counts.reshape(n_resamples, n_items).astype(np.float64)


def resample_counts(n_items: int, n_resamples: int = 500, seed: int = 0, generator: Generator = "pcg64") -> np.ndarray:
    """How often each item appears in each resample (the resamples of :func:`bootstrap_indices`).

    Returns:
        float64 array of shape ``(n_resamples, n_items)`` whose rows sum to ``n_items``. A sum
        statistic over resample ``r`` is ``counts[r] @ per_item``.
    """
    return _counts_of(bootstrap_indices(n_items, n_resamples, seed, generator), int(n_items))


def sacrebleu_counts(n_items: int, n_resamples: int = 500, seed: int | None = SACREBLEU_SEED) -> np.ndarray:
    """Multiplicities of the resamples sacrebleu draws for ``corpus_score(..., n_bootstrap=n_resamples)``.

    sacrebleu (significance.py, ``_bootstrap_resample``) takes
    ``default_rng(seed).choice(n_items, size=(n_resamples, n_items), replace=True)`` with the seed
    of its ``SACREBLEU_SEED`` variable, 12345 by default. Returns float64 ``(n_resamples, n_items)``.
    """
    _check(n_items, n_resamples, 0.5)
    idx = np.random.default_rng(seed).choice(int(n_items), size=(int(n_resamples), int(n_items)), replace=True)
    return _counts_of(np.asarray(idx, dtype=np.int64), int(n_items))


def sacrebleu_interval(replicates: np.ndarray) -> tuple[float, float, float]:
    """sacrebleu's 95% bootstrap interval: ``(mean - half, mean + half, mean)``.

    sacrebleu (metrics/base.py, ``Score.estimate_ci``) sorts the replicate scores, takes the ones
    at positions ``n // 40`` and ``n - n // 40 - 1`` as the bounds, and reports the mean of all
    replicates plus or minus half their distance; the release prints exactly that interval for
    BLEU. It is symmetric about the bootstrap mean, not a percentile interval.
    """
    reps = np.sort(np.asarray(replicates, dtype=np.float64).ravel())
    if reps.size == 0:
        raise ValueError("no bootstrap replicates")
    k = reps.size // 40
    half = 0.5 * (reps[reps.size - k - 1] - reps[k])
    mean = float(statistics.mean(reps.tolist()))  # sacrebleu's own mean (exact rational sum)
    return mean - half, mean + half, mean


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, shape ``(n_resamples,)``.

    Non-finite replicates (a statistic undefined on some resample) are left out with a warning;
    if none is finite the interval is ``(nan, nan)``.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence={confidence!r}: use a fraction in (0, 1) such as 0.95")
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    finite = reps[np.isfinite(reps)]
    if finite.size < reps.size:
        logger.warning("%d of %d bootstrap replicates were not finite and were left out of the interval",
                       reps.size - finite.size, reps.size)
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.percentile(finite, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def bootstrap_median(replicates: np.ndarray) -> float:
    """Median of the finite bootstrap replicates, shape ``(n_resamples,)`` (nan if none).

    LLaVA-Rad's evaluation script reported this median, rather than the value on all items, as
    the headline of its bootstrapped metrics; it is recorded next to the value for comparison.
    """
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    finite = reps[np.isfinite(reps)]
    return float(np.median(finite)) if finite.size else float("nan")


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_items: int,
    n_resamples: int = 500,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Value of ``statistic`` on all items and its percentile bootstrap interval.

    Args:
        statistic: maps an int index array of shape ``(n_items,)`` (items of one resample, with
            repeats) to a float. It is first called with ``arange(n_items)`` for the point value.
        n_items: number of items (reports) to resample.
        n_resamples: number of bootstrap resamples (the paper's evaluation uses 500).
        seed: seed of the resampling; the same seed gives the same resamples for every metric.
        confidence: coverage of the interval (0.95 -> 2.5th and 97.5th percentiles).

    Returns:
        ``(value, low, high)``.
    """
    _check(n_items, n_resamples, confidence)
    value = float(statistic(np.arange(n_items, dtype=np.int64)))
    idx = bootstrap_indices(n_items, n_resamples, seed)
    reps = np.fromiter((statistic(row) for row in idx), dtype=np.float64, count=n_resamples)
    low, high = percentile_interval(reps, confidence)
    return value, low, high


def bootstrap_mean_ci(
    values: np.ndarray,
    n_resamples: int = 500,
    seed: int = 0,
    confidence: float = 0.95,
    counts: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Mean of per-item ``values`` (shape ``(n_items,)``) with its bootstrap interval, vectorised.

    Identical to ``bootstrap_ci(lambda i: values[i].mean(), ...)`` but one matrix product.
    Pass ``counts`` from :func:`resample_counts` to reuse an already computed matrix.
    """
    vals = np.asarray(values, dtype=np.float64).ravel()
    _check(vals.size, n_resamples, confidence)
    if counts is None:
        counts = resample_counts(vals.size, n_resamples, seed)
    if counts.shape[1] != vals.size:
        raise ValueError(f"counts has {counts.shape[1]} items per resample but values has {vals.size}")
    reps = counts @ vals / vals.size
    low, high = percentile_interval(reps, confidence)
    return float(vals.mean()), low, high
