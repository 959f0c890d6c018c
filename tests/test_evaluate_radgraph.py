"""F1-RadGraph: the partial reward on hand-made annotations, empty reports, weight resolution."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from llavarad.evaluate.radgraph import (
    ENV_VAR,
    RadGraphScorer,
    RadGraphUnavailable,
    partial_reward,
    radgraph_settings,
    resolve_weights,
)

OP, OA, AP = "Observation::definitely present", "Observation::definitely absent", "Anatomy::definitely present"


def _ann(*entities):
    return {"text": "", "entities": {str(i): {"tokens": t, "label": lab, "relations": rel, "start_ix": 0, "end_ix": 0}
                                     for i, (t, lab, rel) in enumerate(entities, start=1)}}


HYP = _ann(("effusion", OP, [["located_at", "2"]]), ("pleural", AP, []), ("edema", OA, []))
REF = _ann(("effusion", OP, [["located_at", "2"]]), ("pleural", AP, []), ("pneumothorax", OA, []),
           ("heart", AP, [["modify", "1"]]))


def test_partial_reward_hand_computed():
    # 2 of 3 hypothesis entities match, 2 of 4 reference entities: P 2/3, R 1/2 -> F1 4/7
    assert partial_reward(HYP, REF) == pytest.approx(4 / 7)
    # the has-relation flag is part of the key: without it 'effusion' no longer matches -> P 1/3, R 1/4
    no_rel = _ann(("effusion", OP, []), ("pleural", AP, []), ("edema", OA, []))
    assert partial_reward(no_rel, REF) == pytest.approx(2 / 7)
    assert partial_reward(REF, REF) == 1.0
    assert partial_reward(_ann(), REF) == 0.0 and partial_reward(HYP, _ann()) == 0.0


class _FakeAnnotator:
    """Annotations looked up by text; records what it was asked."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.table = {"hyp a": HYP, "ref a": REF, "same": REF}

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [self.table[t] for t in texts]


def test_scorer_scores_pairs_and_empty_reports_zero():
    fake = _FakeAnnotator()
    scorer = RadGraphScorer(annotator=fake)
    scores = scorer.score(["ref a", "same", "ref a", "  "], ["hyp a", "same", "", "hyp a"])
    assert scores == pytest.approx([4 / 7, 1.0, 0.0, 0.0])
    assert fake.calls == [["hyp a", "same", "ref a", "same"]]  # empty pairs never reach the model
    assert scorer.score([], []).shape == (0,)


def test_annotator_count_mismatch_is_an_error():
    scorer = RadGraphScorer(annotator=lambda texts: [])
    with pytest.raises(RuntimeError, match="0 annotations for 2 reports"):
        scorer.score(["a"], ["b"])


def _fake_weights(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "weights.th").write_bytes(b"")


def test_resolve_weights_from_argument_env_and_model_folder(tmp_path, monkeypatch):
    _fake_weights(tmp_path / "cache" / "radgraph")
    assert resolve_weights(tmp_path / "cache") == (tmp_path / "cache", "radgraph")
    assert resolve_weights(tmp_path / "cache" / "radgraph") == (tmp_path / "cache", "radgraph")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "cache"))
    assert resolve_weights() == (tmp_path / "cache", "radgraph")
    _fake_weights(tmp_path / "oddname")
    with pytest.raises(RadGraphUnavailable, match="rename it"):
        resolve_weights(tmp_path / "oddname")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(RadGraphUnavailable, match=f"{ENV_VAR}.*has no radgraph/config.json"):
        resolve_weights()
    with pytest.raises(ValueError, match="model_type='nope'"):
        resolve_weights(tmp_path, "nope")


@pytest.mark.skipif(importlib.util.find_spec("radgraph") is not None, reason="the radgraph package is installed here")
def test_unavailable_message_says_how_to_get_weights(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(RadGraphUnavailable, match="StanfordAIMI/RRG_scorers.*LLAVARAD_RADGRAPH_WEIGHTS"):
        RadGraphScorer()
    s = radgraph_settings(None, "no weights")
    assert s["skipped"] == "no weights" and s["settings"]["reward_level"] == "partial"


@pytest.mark.integration
def test_real_radgraph_model():
    if importlib.util.find_spec("radgraph") is None:
        pytest.skip("the radgraph package is not installed (pip install radgraph)")
    try:
        scorer = RadGraphScorer()
    except RadGraphUnavailable as exc:
        pytest.skip(f"RadGraph weights are not available offline: {exc}")
    scores = scorer.score(["No pleural effusion or pneumothorax."] * 2, ["No pleural effusion or pneumothorax.", ""])
    assert scores[0] == pytest.approx(1.0) and scores[1] == 0.0
    assert np.all((scores >= 0) & (scores <= 1))
