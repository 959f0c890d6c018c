"""CheXbert-style F1 against hand-computed confusion matrices and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from llavarad.evaluate.bootstrap import bootstrap_indices, percentile_interval
from llavarad.evaluate.chexbert_f1 import (
    OBSERVATIONS_5,
    OBSERVATIONS_14,
    binarize,
    chexbert_f1,
    chexbert_f1_settings,
    per_pair_f1,
)

# Four reports. Uncertain as negative: Cardiomegaly TP, Edema FP, Pleural Effusion FN, No Finding TP.
# Uncertain as positive: Cardiomegaly, Edema, Pleural Effusion, No Finding TP; Atelectasis FN.
REFS = [{"Cardiomegaly": 1.0, "Edema": -1.0}, {"Pleural Effusion": 1.0}, {"No Finding": 1.0}, {"Atelectasis": -1.0}]
PREDS = [{"Cardiomegaly": 1.0, "Edema": 1.0}, {"Pleural Effusion": -1.0, "Cardiomegaly": 0.0}, {"No Finding": 1.0}, {}]


def test_hand_computed_confusion_matrices():
    res = chexbert_f1(REFS, PREDS, n_resamples=20)
    neg, pos = res.summary["negative"], res.summary["positive"]
    # uncertain as negative: TP 2, FP 1, FN 1 over 14 -> 4/6; 2 classes with F1 1 -> macro 2/14
    assert neg["14"]["micro"][0] == pytest.approx(100 * 4 / 6)
    assert neg["14"]["macro"][0] == pytest.approx(100 * 2 / 14)
    # F1-5: Cardiomegaly TP, Edema FP, Pleural Effusion FN -> micro 2/4, macro 1/5
    assert neg["5"]["micro"][0] == pytest.approx(50.0)
    assert neg["5"]["macro"][0] == pytest.approx(20.0)
    # uncertain as positive: TP 4, FN 1 -> 8/9; macro 4/14; F1-5: TP 3, FN 1 -> 6/7, macro 3/5
    assert pos["14"]["micro"][0] == pytest.approx(100 * 8 / 9)
    assert pos["14"]["macro"][0] == pytest.approx(100 * 4 / 14)
    assert pos["5"]["micro"][0] == pytest.approx(100 * 6 / 7)
    assert pos["5"]["macro"][0] == pytest.approx(60.0)
    card = res.per_observation["negative"]["Cardiomegaly"]
    assert (card["f1"], card["support"], card["predicted"]) == (100.0, 1, 1)
    assert res.per_observation["positive"]["Atelectasis"]["recall"] == 0.0
    assert res.per_observation["negative"]["Edema"]["precision"] == 0.0


def test_binarize_policies_and_blank():
    rows = [{"Edema": -1.0, "Fracture": 0.0, "Cardiomegaly": 1, "Lung Lesion": None, "Pneumonia": float("nan")}]
    neg, pos = binarize(rows, "negative"), binarize(rows, "positive")
    i = OBSERVATIONS_14.index
    assert neg[0, i("Cardiomegaly")] == 1 and neg[0, i("Edema")] == 0
    assert pos[0, i("Edema")] == 1 and pos[0, i("Fracture")] == 0 and pos[0, i("Pneumonia")] == 0
    assert neg.sum() == 1 and pos.sum() == 2


@pytest.mark.parametrize("row, message", [
    ({"Edema": 2}, "'Edema': label 2"),
    ({"Edema": "yes"}, "'Edema': label 'yes'"),
    ({"Edema": True}, "'Edema': label True"),
])
def test_bad_labels_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        binarize([{}, row])


def test_policy_checked():
    with pytest.raises(ValueError, match="uncertain='maybe'"):
        binarize([{}], "maybe")  # type: ignore[arg-type]


def _random_rows(rng, n):
    values = [1.0, 0.0, -1.0, None]
    return [{o: values[rng.integers(0, 4)] for o in OBSERVATIONS_14 if rng.random() < 0.5} for _ in range(n)]


def test_values_and_intervals_match_sklearn_on_each_resample():
    rng = np.random.default_rng(0)
    refs, preds = _random_rows(rng, 120), _random_rows(rng, 120)
    res = chexbert_f1(refs, preds, n_resamples=40, seed=2)
    idx = bootstrap_indices(120, 40, seed=2)
    cols5 = [OBSERVATIONS_14.index(o) for o in OBSERVATIONS_5]
    for policy in ("negative", "positive"):
        t, p = binarize(refs, policy), binarize(preds, policy)
        for subset, cols in (("14", list(range(14))), ("5", cols5)):
            for average in ("micro", "macro"):
                reps = [f1_score(t[row][:, cols], p[row][:, cols], average=average, zero_division=0) for row in idx]
                value = f1_score(t[:, cols], p[:, cols], average=average, zero_division=0)
                low, high = percentile_interval(100 * np.array(reps))
                assert res.summary[policy][subset][average] == pytest.approx((100 * value, low, high), abs=1e-9)
                assert res.medians[policy][subset][average] == pytest.approx(100 * float(np.median(reps)), abs=1e-9)


def test_per_pair_f1():
    assert per_pair_f1(REFS, PREDS) == pytest.approx([2 / 3, 0.0, 1.0, 0.0])
    assert per_pair_f1(REFS, PREDS, "positive") == pytest.approx([1.0, 1.0, 1.0, 0.0])
    both_empty = [{"Edema": 0.0}]
    assert per_pair_f1(both_empty, both_empty) == [0.0]
    assert per_pair_f1(both_empty, both_empty, zero_division=1.0) == [1.0]
    assert per_pair_f1(REFS, PREDS, observations=OBSERVATIONS_5) == pytest.approx([2 / 3, 0.0, 0.0, 0.0])


def test_mismatched_lengths_and_settings():
    with pytest.raises(ValueError, match="4 references but 3 predictions"):
        chexbert_f1(REFS, PREDS[:3])
    s = chexbert_f1_settings("rules", "1", {"a": 1})
    assert s["settings"]["zero_division"] == 0 and s["settings"]["labeler"]["name"] == "rules"
