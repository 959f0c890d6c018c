"""Prior-comparison mention detector on realistic report sentences."""

from __future__ import annotations

import csv

import pytest

from llavarad.evaluate.priors import detect_prior_mentions, find_prior_mentions, split_sentences

FLAGGED = [
    ("Unchanged from prior.", "no_change"),
    ("There is tortuosity of the thoracic aorta, stable compared with prior.", "prior_study"),
    ("Calcified granuloma is again seen in the right upper lobe.", "no_change"),
    ("No interval change in the diffuse interstitial markings.", "no_change"),
    ("These opacities appear slightly increased as compared to prior examination.", "prior_study"),
    ("New right PICC line terminates in the SVC.", "new"),
    ("No new focal consolidation.", "new"),
    ("Heart and mediastinum remain normal.", "no_change"),
    ("The left hemidiaphragm remains elevated.", "no_change"),
    ("Persistent small left pleural effusion.", "no_change"),
    ("Interval placement of an endotracheal tube.", "change"),
    ("The pneumothorax has resolved.", "change"),
    ("Improved aeration of the left lung base.", "change"),
    ("The nasogastric tube has been removed.", "change"),
    ("Pulmonary nodules have increased in size and number.", "change"),
    ("Previously seen nodule is no longer visualized.", "prior_study"),
    ("Stable cardiomegaly.", "no_change"),
    ("Redemonstration of sternotomy wires.", "no_change"),
    ("Worsening bibasilar opacities.", "change"),
    ("The effusion is now small.", "change"),
    ("Comparison: chest radiograph from last year.", "prior_study"),
]

NOT_FLAGGED = [
    "Degenerative changes in the thoracic spine.",
    "Increased interstitial markings bilaterally.",
    "Soft tissue density in the medial right apex which is asymmetric compared to left.",
    "Bibasilar opacities, worse on the right.",
    "The remaining lungs are clear.",
    "Recommend short interval followup radiograph or CT.",
    "No prior studies available for comparison.",
    "No prior chest radiographs.",
    "Comparison: none.",
    "Findings consistent with prior granulomatous disease.",
    "There is increased kyphosis of the thoracic spine.",
    "The patient is hemodynamically stable.",
    "Postoperative changes of CABG.",
    "High resolution CT could be considered.",
    "No acute cardiopulmonary abnormality.",
    "Heart size is normal. No pneumothorax or pleural effusion.",
]


@pytest.mark.parametrize("sentence, category", FLAGGED)
def test_flags_prior_and_change_mentions(sentence, category):
    found = find_prior_mentions(sentence)
    assert len(found) == 1, sentence
    assert category in found[0].categories
    assert found[0].sentence == sentence and found[0].cues


@pytest.mark.parametrize("sentence", NOT_FLAGGED)
def test_leaves_look_alikes_alone(sentence):
    assert find_prior_mentions(sentence) == []


def test_summary_lists_sentences_per_report():
    texts = ["Heart size is normal. Stable left effusion.", "Lungs are clear.", "No new consolidation.\nUnchanged.", ""]
    s = detect_prior_mentions(texts)
    assert s.flagged.tolist() == [True, False, True, False]
    assert (s.n, s.n_flagged, s.share) == (4, 2, 0.5)
    assert [(m.report, m.sentence) for m in s.mentions] == [
        (0, "Stable left effusion."), (2, "No new consolidation."), (2, "Unchanged.")]
    assert s.by_category() == {"new": 1, "no_change": 2}


def test_split_sentences_keeps_decimals():
    assert split_sentences("Nodule measures 2.5 cm. Clear lungs.\nNormal heart") == [
        "Nodule measures 2.5 cm.", "Clear lungs.", "Normal heart"]


def test_type_error_names_report():
    with pytest.raises(TypeError, match="report #1 is NoneType"):
        detect_prior_mentions(["ok", None])


def test_openi_share_is_plausible(shared_data):
    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:500]
    s = detect_prior_mentions([r["findings"] + " " + r["impression"] for r in rows])
    # Open-I reports often compare with earlier films (the 'comparison' column is set for many)
    with_comparison = sum(1 for r in rows if r["comparison"].strip().lower() not in ("", "none.", "none"))
    assert 0.1 < s.share < 0.5
    assert s.n_flagged <= with_comparison + 0.1 * len(rows)


def test_prefilter_changes_nothing(shared_data, monkeypatch):
    import re

    import llavarad.evaluate.priors as priors

    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] + " " + r["impression"] for r in list(csv.DictReader(fh))[:800]]
    texts += [s for s, _ in FLAGGED] + NOT_FLAGGED
    fast = [(m.report, m.sentence, m.cues) for m in detect_prior_mentions(texts).mentions]
    monkeypatch.setattr(priors, "_PREFILTER", re.compile(""))
    slow = [(m.report, m.sentence, m.cues) for m in detect_prior_mentions(texts).mentions]
    assert fast == slow
