"""CheXbert-style F1: observation labels of the prediction scored against those of the reference.

Definitions (LLaVA-Rad's evaluation):

* Labels per report are ``{observation: 1.0 | 0.0 | -1.0 | None}`` over the 14 CheXpert
  observations (positive, negative, uncertain, not mentioned), from any labeler
  (:mod:`llavarad.evaluate.labelers`).
* "uncertain as negative": only 1.0 counts as 1. "uncertain as positive": 1.0 and -1.0 count as
  1. Negative and blank are 0 in both.
* F1-14 uses all 14 observations (13 conditions + No Finding); F1-5 uses Atelectasis,
  Cardiomegaly, Consolidation, Edema, Pleural Effusion.
* Micro and macro F1 as scikit-learn computes them (``zero_division=0``) with the reference
  report's labels as truth.

Point values come from scikit-learn. Bootstrap replicates come from per-report confusion cells
(true positives, false positives, false negatives per observation) summed with the shared resample
matrix, which gives the same numbers as calling scikit-learn on each resample, in one product.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as _pkg_version
from typing import Literal

import numpy as np

from llavarad.evaluate.bootstrap import bootstrap_median, percentile_interval, resample_counts
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

logger = logging.getLogger(__name__)

__all__ = [
    "OBSERVATIONS_14",
    "OBSERVATIONS_5",
    "UNCERTAIN_POLICIES",
    "ChexbertF1Result",
    "UncertainPolicy",
    "binarize",
    "chexbert_f1",
    "chexbert_f1_settings",
    "confusion_cells",
    "f1_from_cells",
    "per_pair_f1",
]

OBSERVATIONS_14: tuple[str, ...] = tuple(CHEXPERT_OBSERVATIONS)
OBSERVATIONS_5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UncertainPolicy = Literal["negative", "positive"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("negative", "positive")

LabelRow = Mapping[str, "float | int | None"]


def _label_value(value: object, row: int, obs: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"report #{row}, {obs!r}: label {value!r} is not one of 1.0, 0.0, -1.0 or None")
    if isinstance(value, float) and math.isnan(value):
        return None
    if value not in (1, 0, -1):
        raise ValueError(f"report #{row}, {obs!r}: label {value!r} is not one of 1.0, 0.0, -1.0 or None")
    return float(value)


def binarize(
    rows: Sequence[LabelRow],
    uncertain: UncertainPolicy = "negative",
    observations: Sequence[str] = OBSERVATIONS_14,
) -> np.ndarray:
    """Binary label matrix, shape ``(n_reports, len(observations))``, dtype uint8.

    An observation missing from a row counts as blank (not mentioned). Unknown observation names
    in ``observations`` and label values other than 1, 0, -1, None (or NaN) raise ``ValueError``.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain={uncertain!r}: use one of {', '.join(UNCERTAIN_POLICIES)}")
    unknown = [o for o in observations if o not in OBSERVATIONS_14]
    if unknown:
        raise ValueError(f"unknown observations {unknown}; use names from {OBSERVATIONS_14}")
    positive = {1.0, -1.0} if uncertain == "positive" else {1.0}
    out = np.zeros((len(rows), len(observations)), dtype=np.uint8)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"report #{i}: labels are {type(row).__name__}, expected {{observation: value}}")
        for j, obs in enumerate(observations):
            if _label_value(row.get(obs), i, obs) in positive:
                out[i, j] = 1
    return out


def confusion_cells(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-report, per-observation true positives, false positives and false negatives.

    Args:
        y_true, y_pred: binary arrays of shape ``(n_reports, n_observations)``.

    Returns:
        ``(tp, fp, fn)``, each float64 of shape ``(n_reports, n_observations)``.
    """
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"label matrices differ in shape: reference {t.shape}, prediction {p.shape}")
    return (t & p).astype(np.float64), (~t & p).astype(np.float64), (t & ~p).astype(np.float64)


def f1_from_cells(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class, micro and macro F1 from summed cells with scikit-learn's ``zero_division=0``.

    Args:
        tp, fp, fn: arrays of shape ``(..., n_observations)`` (e.g. one row per resample).

    Returns:
        ``(per_class, micro, macro)`` of shapes ``(..., n_observations)``, ``(...)``, ``(...)``.
    """
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)
    tp_s, denom_s = tp.sum(axis=-1), denom.sum(axis=-1)
    micro = np.divide(2 * tp_s, denom_s, out=np.zeros_like(denom_s, dtype=np.float64), where=denom_s > 0)
    return per_class, micro, per_class.mean(axis=-1)


@dataclass
class ChexbertF1Result:
    """All CheXbert-style F1 figures, on a 0-100 scale, each ``(value, ci_low, ci_high)``.

    ``summary[policy][subset][average]``: policy "negative"/"positive" (uncertain as ...),
    subset "14"/"5", average "micro"/"macro". ``per_observation[policy][observation]``: precision,
    recall, f1 (0-100), f1_ci_low, f1_ci_high, support (reference positives), predicted
    (prediction positives). ``medians[policy][subset][average]``: median of the bootstrap
    replicates (0-100).
    """

    summary: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = field(default_factory=dict)
    medians: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_observation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    n: int = 0


def chexbert_f1(
    ref_labels: Sequence[LabelRow],
    pred_labels: Sequence[LabelRow],
    counts: np.ndarray | None = None,
    n_resamples: int = 500,
    seed: int = 0,
    confidence: float = 0.95,
) -> ChexbertF1Result:
    """Micro/macro F1-14 and F1-5 under both uncertainty policies, with bootstrap intervals.

    Args:
        ref_labels, pred_labels: one label dict per report (same order).
        counts: shared resample multiplicities, shape ``(n_resamples, n_reports)``
            (:func:`llavarad.evaluate.bootstrap.resample_counts`); made from ``seed`` if omitted.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    if len(ref_labels) != len(pred_labels):
        raise ValueError(f"got labels for {len(ref_labels)} references but {len(pred_labels)} predictions")
    n = len(ref_labels)
    if n == 0:
        raise ValueError("no labelled report pairs to score")
    if counts is None:
        counts = resample_counts(n, n_resamples, seed)
    result = ChexbertF1Result(n=n)
    subsets = {"14": OBSERVATIONS_14, "5": OBSERVATIONS_5}
    idx5 = [OBSERVATIONS_14.index(o) for o in OBSERVATIONS_5]
    for policy in UNCERTAIN_POLICIES:
        y_true = binarize(ref_labels, policy)  # type: ignore[arg-type]
        y_pred = binarize(pred_labels, policy)  # type: ignore[arg-type]
        tp, fp, fn = confusion_cells(y_true, y_pred)
        tp_r, fp_r, fn_r = counts @ tp, counts @ fp, counts @ fn  # (R, 14) per resample
        result.summary[policy] = {}
        result.medians[policy] = {}
        for key, obs in subsets.items():
            cols = list(range(14)) if key == "14" else idx5
            _, micro_r, macro_r = f1_from_cells(tp_r[:, cols], fp_r[:, cols], fn_r[:, cols])
            entry = {}
            for average, reps in (("micro", micro_r), ("macro", macro_r)):
                value = f1_score(y_true[:, cols], y_pred[:, cols], average=average, zero_division=0)
                low, high = percentile_interval(reps, confidence)
                entry[average] = (100.0 * float(value), 100.0 * low, 100.0 * high)
                result.medians[policy].setdefault(key, {})[average] = 100.0 * bootstrap_median(reps)
            result.summary[policy][key] = entry
            _check_vectorised(tp[:, cols], fp[:, cols], fn[:, cols], entry)
        prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
        per_class_r, _, _ = f1_from_cells(tp_r, fp_r, fn_r)
        result.per_observation[policy] = {}
        for j, obs in enumerate(OBSERVATIONS_14):
            low, high = percentile_interval(per_class_r[:, j], confidence)
            result.per_observation[policy][obs] = {
                "precision": 100.0 * float(prec[j]),
                "recall": 100.0 * float(rec[j]),
                "f1": 100.0 * float(f1[j]),
                "f1_ci_low": 100.0 * low,
                "f1_ci_high": 100.0 * high,
                "support": int(support[j]),
                "predicted": int(y_pred[:, j].sum()),
            }
    return result


def _check_vectorised(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, entry: dict) -> None:
    """The bootstrap's F1 formula must agree with scikit-learn on the full sample."""
    _, micro, macro = f1_from_cells(tp.sum(0), fp.sum(0), fn.sum(0))
    for average, value in (("micro", micro), ("macro", macro)):
        if abs(100.0 * float(value) - entry[average][0]) > 1e-9:
            raise AssertionError(f"vectorised {average} F1 {100 * float(value)} != scikit-learn {entry[average][0]}")


def per_pair_f1(
    ref_labels: Sequence[LabelRow],
    pred_labels: Sequence[LabelRow],
    uncertain: UncertainPolicy = "negative",
    observations: Sequence[str] = OBSERVATIONS_14,
    zero_division: float = 0.0,
) -> list[float]:
    """F1 over the observations of each single (reference, prediction) pair, in [0, 1].

    For pair i this is ``2 TP / (2 TP + FP + FN)`` over its observations, as scikit-learn's
    ``f1_score(ref_i, pred_i)`` on the two binary vectors; a pair where neither report has a
    positive observation gets ``zero_division`` (0, scikit-learn's convention used in the table;
    1.0 treats agreement on "nothing positive" as perfect).
    """
    t = binarize(ref_labels, uncertain, observations)
    p = binarize(pred_labels, uncertain, observations)
    tp, fp, fn = confusion_cells(t, p)
    tp_s, denom = tp.sum(1), (2 * tp + fp + fn).sum(1)
    out = np.full(len(t), float(zero_division))
    np.divide(2 * tp_s, denom, out=out, where=denom > 0)
    return out.tolist()


def chexbert_f1_settings(labeler_name: str, labeler_version: str, labeler_settings: Mapping[str, object]) -> dict:
    """Implementation, version and settings of the F1 metrics, for the result file."""
    return {
        "implementation": "scikit-learn f1_score / precision_recall_fscore_support",
        "version": _pkg_version("scikit-learn"),
        "settings": {
            "labeler": {"name": labeler_name, "version": labeler_version, "settings": dict(labeler_settings)},
            "truth": "labels of the reference report",
            "zero_division": 0,
            "uncertain_as_negative": "1.0 -> 1; -1.0, 0.0, blank -> 0",
            "uncertain_as_positive": "1.0, -1.0 -> 1; 0.0, blank -> 0",
            "observations_14": list(OBSERVATIONS_14),
            "observations_5": list(OBSERVATIONS_5),
            "scale": "0-100",
        },
    }
