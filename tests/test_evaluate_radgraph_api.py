"""Both generations of the radgraph package, through stand-in packages written by the test.

Neither real version is installed here (they need model weights from the hub). A stand-in has the
constructor of its generation, its ``CACHE_DIR``, a ``dist-info`` with its version, and annotates
one entity per word, so what is checked is the adapter: how each API is called, where it looks for
the model, and that which one ran is recorded. ReXrank's combined score is checked by hand.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from llavarad.evaluate.radgraph import (
    ENV_VAR,
    LEGACY_ARCHIVE,
    RadGraphScorer,
    RadGraphUnavailable,
    partial_reward,
    radgraph_settings,
    resolve_weights,
    rexrank_scores,
)
from llavarad.evaluate.run import EvaluateConfig, evaluate

_ANNOTATE = '''
def _annotate(text):
    words = [w.strip(".").lower() for w in text.split()]
    ents = {str(i): {"tokens": w, "label": "Observation::definitely present",
                     "relations": [["modify", str(i + 1)]] if i < len(words) else []}
            for i, w in enumerate(words, start=1)}
    return {"text": text, "entities": ents}
'''

_LEGACY = '''
import os
CACHE_DIR = {cache!r}
CALLS = []

class RadGraph:
    def __init__(self, batch_size=1, cuda=None, **kwargs):
        if not os.path.isfile(os.path.join(CACHE_DIR, "radgraph.tar.gz")):
            raise FileNotFoundError("the stand-in would download here")
        CALLS.append(dict(batch_size=batch_size, cuda=cuda, **kwargs))

    def __call__(self, texts):
        return {{str(i): _annotate(t) for i, t in enumerate(texts)}}
'''

_CURRENT = '''
import os
CACHE_DIR = {cache!r}
CALLS = []

class RadGraph:
    def __init__(self, batch_size=1, cuda=None, model_type=None, temp_dir=None, model_cache_dir=None,
                 tokenizer_cache_dir=None, **kwargs):
        if not os.path.isfile(os.path.join(model_cache_dir, model_type, "weights.th")):
            raise FileNotFoundError("the stand-in would download here")
        CALLS.append(dict(batch_size=batch_size, cuda=cuda, model_type=model_type, model_cache_dir=model_cache_dir))

    def __call__(self, texts):
        return {{str(i): _annotate(t) for i, t in enumerate(texts)}}
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Write a stand-in radgraph package of a given generation; returns its module."""
    monkeypatch.delenv(ENV_VAR, raising=False)

    def make(version: str, body: str):
        site, cache = tmp_path / f"site-{version}", tmp_path / f"cache-{version}"
        (site / "radgraph").mkdir(parents=True)
        cache.mkdir()
        (site / "radgraph" / "__init__.py").write_text("from radgraph.radgraph import RadGraph\n")
        (site / "radgraph" / "radgraph.py").write_text(textwrap.dedent(_ANNOTATE) + body.format(cache=str(cache)))
        info = site / f"radgraph-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: radgraph\nVersion: {version}\n")
        for name in [m for m in sys.modules if m == "radgraph" or m.startswith("radgraph.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.syspath_prepend(str(site))
        import radgraph.radgraph as mod

        return mod

    yield make
    for name in [m for m in sys.modules if m == "radgraph" or m.startswith("radgraph.")]:
        del sys.modules[name]


def test_release_api_reads_the_archive_in_the_package_cache(stand_in, tmp_path):
    mod = stand_in("0.0.9", _LEGACY)
    with pytest.raises(RadGraphUnavailable, match=r"reads its model only from .*radgraph.tar.gz.*d97745aa"):
        RadGraphScorer(device="cpu")
    (tmp_path / "cache-0.0.9" / LEGACY_ARCHIVE).write_bytes(b"archive")
    assert resolve_weights() == (tmp_path / "cache-0.0.9", "radgraph")  # the CLI's early check accepts it
    scorer = RadGraphScorer(device="cpu")
    assert (scorer.api, scorer.version, scorer.weights) == ("0.0.9", "0.0.9", str(tmp_path / "cache-0.0.9" / LEGACY_ARCHIVE))
    assert mod.CALLS == [{"batch_size": 1, "cuda": -1}]  # 0.0.9 takes no model_type / model_cache_dir
    assert scorer.score(["No effusion."], ["No effusion."])[0] == 1.0
    assert radgraph_settings(scorer)["settings"]["package_api"] == "0.0.9"
    with pytest.raises(RadGraphUnavailable, match="a weights folder was given"):
        RadGraphScorer(weights=tmp_path, device="cpu")


def test_current_api_gets_model_type_and_cache_dir(stand_in, tmp_path):
    mod = stand_in("0.1.18", _CURRENT)
    weights = tmp_path / "w" / "radgraph"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "weights.th").write_bytes(b"")
    scorer = RadGraphScorer(weights=tmp_path / "w", device="cpu")
    assert (scorer.api, scorer.version) == ("current", "0.1.18")
    assert mod.CALLS == [{"batch_size": 1, "cuda": -1, "model_type": "radgraph", "model_cache_dir": str(tmp_path / "w")}]
    assert scorer.score(["Heart normal."], ["Heart large."])[0] == pytest.approx(0.5)


def test_evaluate_records_which_api_ran(stand_in, tmp_path):
    stand_in("0.0.9", _LEGACY)
    (tmp_path / "cache-0.0.9" / LEGACY_ARCHIVE).write_bytes(b"archive")
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": f"r{i}", "reference": r, "prediction": p, "error": None}) + "\n"
                             for i, (r, p) in enumerate([("Heart normal.", "Heart normal."), ("Lungs clear.", "Lungs")])))

    class Labeler:
        name, version, settings = "none", "0", {}

        def label(self, texts):
            return [{"No Finding": 1.0} for _ in texts]

    result = evaluate(preds, tmp_path / "eval", EvaluateConfig(radgraph="on", bootstrap=20, plot=False), labeler=Labeler())
    assert result["settings"]["metrics"]["F1-RadGraph"]["settings"]["package_api"] == "0.0.9"
    assert result["versions"]["radgraph"] == "0.0.9"
    # pair 2: "lungs" relates to "clear" in the reference only, so the partial reward has no match
    assert result["metrics"]["F1-RadGraph"]["full_sample"] == pytest.approx(100 * (1.0 + 0.0) / 2)


def _ann(*entities):
    return {"entities": {str(i): {"tokens": t, "label": lab, "relations": rel}
                         for i, (t, lab, rel) in enumerate(entities, start=1)}}


def test_rexrank_combined_by_hand():
    op, ap = "Observation::definitely present", "Anatomy::definitely present"
    hyp = _ann(("effusion", op, [["located_at", "2"]]), ("pleural", ap, []), ("edema", op, []))
    ref = _ann(("effusion", op, [["located_at", "2"]]), ("pleural", ap, []), ("heart", ap, [["modify", "1"]]))
    entity, relation, combined = rexrank_scores(hyp, ref)
    # entities: 2 of 3 match both ways -> F1 2/3; relations: effusion->pleural matches, heart->effusion
    # only in ref -> P 1, R 1/2, F1 2/3
    assert (entity, relation, combined) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    no_rel = _ann(("effusion", op, []), ("pleural", ap, []))
    assert rexrank_scores(no_rel, no_rel) == (1.0, 0.0, 0.5)  # no relations on either side: relation F1 0
    assert partial_reward(no_rel, no_rel) == 1.0
