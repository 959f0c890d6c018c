"""Lexical metrics: exact hand-checked values and parity with sacrebleu / rouge_score called directly."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llavarad.evaluate.bootstrap import bootstrap_indices, percentile_interval, resample_counts
from llavarad.evaluate.lexical import (
    bleu_stats,
    corpus_bleu,
    lexical_metrics,
    lexical_settings,
    per_report_scores,
    rouge_l_scores,
)


def _openi_findings(shared_data, n):
    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r["findings"].strip()]
    return texts[:n]


def test_hand_checked_values():
    ref, hyp = "the cat sat on the mat", "the cat"
    # unigram precision 2/2, brevity penalty exp(1 - 6/2); no 3-grams -> BLEU-4 is 0
    assert corpus_bleu([ref], [hyp], 1) == pytest.approx(100 * math.exp(-2), abs=1e-12)
    assert corpus_bleu([ref], [hyp], 4) == 0.0
    assert corpus_bleu([ref], [ref], 4) == pytest.approx(100.0)
    # LCS 2: precision 1, recall 1/3 -> F = 0.5
    assert rouge_l_scores([ref], [hyp])[0] == pytest.approx(0.5)
    assert rouge_l_scores([ref], [""])[0] == 0.0


def test_corpus_parity_with_sacrebleu_and_rouge_score(shared_data):
    texts = _openi_findings(shared_data, 61)
    refs, hyps = texts[:60], texts[1:61]
    hyps[3] = ""  # an empty prediction is scored, not dropped
    assert corpus_bleu(refs, hyps, 4) == pytest.approx(sacrebleu.BLEU().corpus_score(hyps, [refs]).score, abs=1e-9)
    assert corpus_bleu(refs, hyps, 1) == pytest.approx(
        sacrebleu.BLEU(max_ngram_order=1).corpus_score(hyps, [refs]).score, abs=1e-9)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
    assert np.allclose(rouge_l_scores(refs, hyps), expected, atol=0, rtol=0)


def test_per_report_scores_match_sentence_bleu(shared_data):
    texts = _openi_findings(shared_data, 11)
    refs, hyps = texts[:10], texts[1:11]
    got = per_report_scores(refs, hyps)
    assert set(got) == {"bleu1", "bleu4", "rougeL"}
    for i, (r, h) in enumerate(zip(refs, hyps)):
        assert got["bleu4"][i] == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score / 100, abs=1e-12)
        b1 = sacrebleu.BLEU(max_ngram_order=1, effective_order=True).sentence_score(h, [r]).score
        assert got["bleu1"][i] == pytest.approx(b1 / 100, abs=1e-12)
        assert 0.0 <= got["rougeL"][i] <= 1.0


def test_vectorised_bootstrap_equals_rescoring_each_resample(shared_data):
    texts = _openi_findings(shared_data, 31)
    refs, hyps = texts[:30], texts[1:31]
    res = lexical_metrics(refs, hyps, n_resamples=25, seed=7)
    idx = bootstrap_indices(30, 25, seed=7)
    reps4 = [sacrebleu.BLEU().corpus_score([hyps[i] for i in row], [[refs[i] for i in row]]).score for row in idx]
    low, high = percentile_interval(np.array(reps4))
    assert res.bleu4 == pytest.approx((sacrebleu.BLEU().corpus_score(hyps, [refs]).score, low, high), abs=1e-9)
    rouge = rouge_l_scores(refs, hyps)
    low, high = percentile_interval(np.array([rouge[row].mean() for row in idx]))
    assert res.rouge_l == pytest.approx((100 * rouge.mean(), 100 * low, 100 * high), abs=1e-9)
    assert res.medians["BLEU-4"] == pytest.approx(float(np.median(reps4)), abs=1e-9)
    assert res.medians["ROUGE-L"] == pytest.approx(100 * float(np.median([rouge[row].mean() for row in idx])), abs=1e-9)
    assert np.array_equal(resample_counts(30, 25, 7).sum(1), np.full(25, 30.0))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        bleu_stats(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="prediction #0 is NoneType"):
        rouge_l_scores(["a"], [None])


def test_settings_record_signature():
    s = lexical_settings()
    assert "tok:13a" in s["BLEU-4"]["settings"]["signature"]
    assert s["BLEU-1"]["settings"]["max_ngram_order"] == 1
    assert s["ROUGE-L"]["settings"]["use_stemmer"] is False


def test_bleu_with_sacrebleus_own_bootstrap_equals_corpus_score():
    from sacrebleu.metrics import BLEU

    from llavarad.evaluate.lexical import bleu_sacrebleu_bootstrap

    rng = np.random.default_rng(4)
    words = "the lungs are clear no pleural effusion heart size normal mild edema left base".split()
    refs = [" ".join(rng.choice(words, rng.integers(3, 14))) for _ in range(45)]
    hyps = [" ".join(rng.choice(words, rng.integers(0, 14))) for _ in range(45)]
    for order in (1, 4):
        ref = BLEU(max_ngram_order=order).corpus_score(hyps, [refs], n_bootstrap=300)
        got = bleu_sacrebleu_bootstrap(bleu_stats(refs, hyps), order, n_resamples=300)
        assert (got["value"], got["ci_low"], got["ci_high"], got["bootstrap_mean"]) == \
            (ref.score, ref._mean - ref._ci, ref._mean + ref._ci, ref._mean)
