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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_mean_ci",
    "bootstrap_median",
    "percentile_interval",
    "resample_counts",
]


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


def bootstrap_indices(n_items: int, n_resamples: int = 500, seed: int = 0) -> np.ndarray:
    """Resampled item indices, drawn with replacement.

    Returns:
        int64 array of shape ``(n_resamples, n_items)``; row ``r`` is resample ``r``. The same
        ``(n_items, n_resamples, seed)`` always gives the same matrix.
    """
    _check(n_items, n_resamples, 0.5)
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n_resamples, n_items), dtype=np.int64)


def resample_counts(n_items: int, n_resamples: int = 500, seed: int = 0) -> np.ndarray:
    """How often each item appears in each resample (the resamples of :func:`bootstrap_indices`).

    Returns:
        float64 array of shape ``(n_resamples, n_items)`` whose rows sum to ``n_items``. A sum
        statistic over resample ``r`` is ``counts[r] @ per_item``.
    """
    idx = bootstrap_indices(n_items, n_resamples, seed)
    offsets = idx + (np.arange(n_resamples, dtype=np.int64) * n_items)[:, None]
    counts = np.bincount(offsets.ravel(), minlength=n_resamples * n_items)
    return counts.reshape(n_resamples, n_items).astype(np.float64)


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
