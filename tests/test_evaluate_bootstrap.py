"""Bootstrap helpers: determinism, agreement of the index and count forms, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from llavarad.evaluate.bootstrap import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_mean_ci,
    bootstrap_median,
    percentile_interval,
    resample_counts,
)


def test_indices_are_seeded_and_in_range():
    a = bootstrap_indices(50, 20, seed=3)
    b = bootstrap_indices(50, 20, seed=3)
    assert a.shape == (20, 50) and a.dtype == np.int64
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 50
    assert not np.array_equal(a, bootstrap_indices(50, 20, seed=4))


def test_counts_match_indices():
    idx = bootstrap_indices(7, 5, seed=1)
    counts = resample_counts(7, 5, seed=1)
    assert counts.shape == (5, 7)
    for r in range(5):
        assert np.array_equal(counts[r], np.bincount(idx[r], minlength=7))
    assert np.all(counts.sum(axis=1) == 7)


def test_generic_and_vectorised_mean_agree():
    values = np.random.default_rng(0).random(300)
    v1, lo1, hi1 = bootstrap_ci(lambda i: float(values[i].mean()), 300, n_resamples=200, seed=5)
    v2, lo2, hi2 = bootstrap_mean_ci(values, n_resamples=200, seed=5)
    assert v1 == pytest.approx(values.mean()) and v2 == pytest.approx(values.mean())
    assert lo1 == pytest.approx(lo2) and hi1 == pytest.approx(hi2)
    assert lo1 < values.mean() < hi1


def test_percentile_interval_exact_and_nonfinite(caplog):
    reps = np.arange(101, dtype=float)  # percentiles of 0..100 are the percentages themselves
    assert percentile_interval(reps, 0.95) == pytest.approx((2.5, 97.5))
    with caplog.at_level("WARNING"):
        low, high = percentile_interval(np.array([1.0, np.nan, 3.0]), 0.5)
    assert (low, high) == pytest.approx((1.5, 2.5))
    assert "not finite" in caplog.text
    assert all(np.isnan(percentile_interval(np.array([np.nan]))))


@pytest.mark.parametrize("kwargs, message", [
    ({"n_items": 0}, "n_items=0"),
    ({"n_items": 5, "n_resamples": 0}, "n_resamples=0"),
    ({"n_items": 5, "confidence": 1.5}, "confidence=1.5"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(lambda i: 0.0, **kwargs)


def test_single_item_interval_is_degenerate():
    assert bootstrap_mean_ci(np.array([0.25]), n_resamples=10) == (0.25, 0.25, 0.25)


def test_bootstrap_median_ignores_nonfinite():
    assert bootstrap_median(np.array([3.0, 1.0, np.nan, 2.0])) == 2.0
    assert np.isnan(bootstrap_median(np.array([np.inf])))


def test_legacy_generator_draws_the_release_resamples():
    """scipy.stats.bootstrap(random_state=3) and rouge_score's aggregator after numpy.random.seed(3)
    both resample with exactly the rows of bootstrap_indices(..., generator="legacy")."""
    from scipy.stats import bootstrap

    n, r = 23, 40
    idx = bootstrap_indices(n, r, seed=3, generator="legacy")
    seen = []
    bootstrap((list(range(n)),), lambda i: seen.append(np.array(i)) or 0.0, method="percentile", paired=False,
              vectorized=False, random_state=3, n_resamples=r)
    assert np.array_equal(np.stack(seen[-r:]), idx)
    np.random.seed(3)
    rouge_rows = np.stack([np.random.choice(np.arange(n), size=n) for _ in range(r)])  # rouge_score's loop
    assert np.array_equal(rouge_rows, idx)
    assert np.array_equal(resample_counts(n, r, 3, "legacy").sum(1), np.full(r, float(n)))
    with pytest.raises(ValueError, match="generator='mt'"):
        bootstrap_indices(n, r, generator="mt")


def test_sacrebleu_interval_is_its_mean_plus_minus_half_the_spread():
    from llavarad.evaluate.bootstrap import sacrebleu_counts, sacrebleu_interval

    reps = np.arange(80, dtype=float)[::-1]  # 80 replicates: bounds at sorted positions 2 and 77
    low, high, mean = sacrebleu_interval(reps)
    assert mean == pytest.approx(39.5) and (high - low) / 2 == pytest.approx((77 - 2) / 2)
    assert (low + high) / 2 == pytest.approx(mean)
    counts = sacrebleu_counts(10, 7)
    rows = np.random.default_rng(12345).choice(10, size=(7, 10), replace=True)
    assert np.array_equal(counts, np.stack([np.bincount(r, minlength=10) for r in rows]).astype(float))
