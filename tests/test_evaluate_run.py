"""The evaluate stage end to end: bad rows, caches and resume, output files, the CLI verb."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from llavarad.cli import main
from llavarad.config import ConfigError
from llavarad.evaluate.run import TABLE_COLUMNS, EvaluateConfig, EvaluationError, evaluate, read_predictions
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS


class FakeLabeler:
    """Keyword labeler with the interface of llavarad.evaluate.labelers (tests only)."""

    name, version, settings = "fake", "0", {"rules": "keywords"}

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.calls = 0

    def label(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            if self.fail_on and self.fail_on in text:
                raise RuntimeError("cannot label this report")
            t = text.lower()
            row = {o: None for o in CHEXPERT_OBSERVATIONS}
            for word, obs in (("effusion", "Pleural Effusion"), ("cardiomegaly", "Cardiomegaly"), ("edema", "Edema"),
                              ("atelectasis", "Atelectasis"), ("pneumothorax", "Pneumothorax")):
                if f"no {word}" in t or f"no pleural {word}" in t:
                    row[obs] = 0.0
                elif f"possible {word}" in t:
                    row[obs] = -1.0
                elif word in t:
                    row[obs] = 1.0
            if not any(v == 1.0 or v == -1.0 for v in row.values()):
                row["No Finding"] = 1.0
            out.append(row)
        return out


def _openi_pairs(shared_data, n):
    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r["findings"].strip()][: n + 1]
    return [(f"r{i}", texts[i], texts[i + 1]) for i in range(n)]


def _write_preds(path, pairs, extra_lines=()):
    with path.open("w", encoding="utf-8") as fh:
        for rid, ref, pred in pairs:
            fh.write(json.dumps({"id": rid, "image": f"{rid}.png", "reference": ref, "prediction": pred, "error": None,
                                 "model": "tiny-test", "settings": {"max_new_tokens": 8}}) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


BAD_LINES = (
    '{"id": "g1", "reference": "x", "prediction": null, "error": "generation failed: OOM"}',
    "{not json",
    '{"id": "r0", "reference": "dup", "prediction": "dup", "error": null}',
    '{"id": "e1", "reference": "", "prediction": "Heart normal.", "error": null}',
    '{"id": "n1", "reference": "Heart normal.", "prediction": 5, "error": null}',
    '["a list"]',
    '{"reference": "no id", "prediction": "x"}',
)


def test_read_predictions_records_every_bad_row(tmp_path):
    data = read_predictions(_write_preds(tmp_path / "p.jsonl", [("r0", "Ref.", "Pred."), ("b", "Ref.", "")], BAD_LINES))
    assert [p.id for p in data.pairs] == ["r0", "b"]
    assert data.n_rows == 9 and data.model == "tiny-test" and data.generation_settings == {"max_new_tokens": 8}
    assert [e["id"] for e in data.generation_errors] == ["g1"]
    reasons = [p["error"] for p in data.problems]
    assert len(reasons) == 6
    assert "p.jsonl:4: not valid JSON" in reasons[0]
    for needle in ("duplicate id 'r0' (first on line 1)", "reference' is empty", "'prediction' is 5",
                   "expected a JSON object", "field 'id' is missing"):
        assert any(needle in r for r in reasons), needle
    with pytest.raises(FileNotFoundError, match="no such predictions file"):
        read_predictions(tmp_path / "missing.jsonl")


def test_evaluate_end_to_end(tmp_path, shared_data):
    pairs = _openi_pairs(shared_data, 40)
    pairs[5] = ("r5", pairs[5][1], "")  # an empty prediction is scored (0), not dropped
    preds = _write_preds(tmp_path / "preds.jsonl", pairs, BAD_LINES[:2])
    out = tmp_path / "eval"
    result = evaluate(preds, out, EvaluateConfig(bootstrap=50, radgraph="off"), labeler=FakeLabeler())
    assert result["n"] == 40 and result["n_rows"] == 42 and result["model"] == "tiny-test"
    assert len(result["generation_errors"]) == 1 and len(result["problems"]) == 1
    for key, _, _ in TABLE_COLUMNS:
        m = result["metrics"][key]
        if key in ("F1-RadGraph", "RadGraph-combined"):
            assert m is None
            continue
        assert m["ci_low"] <= m["value"] <= m["ci_high"], key
        assert m["ci_low"] <= m["bootstrap_median"] <= m["ci_high"], key
        assert 0.0 <= m["value"] <= 100.0
    assert "turned off" in result["settings"]["metrics"]["F1-RadGraph"]["skipped"]
    assert result["settings"]["bootstrap"] == {"n_resamples": 50, "seed": 3, "confidence": 0.95, "method": "percentile",
                                              "paired": "same resamples for every metric",
                                              "rng": "numpy.random.RandomState(seed).randint(0, n, (n_resamples, n))",
                                              "bleu_seed": 12345}
    assert result["settings"]["statistic"]["convention"] == "release"
    assert result["metrics"]["ROUGE-L"]["headline"] == "bootstrap median"
    assert result["metrics"]["BLEU-4"]["headline"] == "full sample" and "bootstrap_mean" in result["metrics"]["BLEU-4"]
    assert "tok:13a" in result["settings"]["metrics"]["BLEU-4"]["settings"]["signature"]
    assert result["settings"]["metrics"]["Micro-F1-14"]["settings"]["labeler"]["name"] == "fake"
    assert result["versions"]["sacrebleu"] and result["versions"]["labeler"] == "fake 0"
    for name in ("metrics.json", "table.csv", "table.md", "per_observation.csv", "per_report.csv",
                 "prior_mentions.csv", "per_observation_f1.png", "labels_cache.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "per_observation_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    table = list(csv.DictReader((out / "table.csv").open()))
    assert len(table) == 1 and float(table[0]["BLEU-4"]) == pytest.approx(result["metrics"]["BLEU-4"]["value"], abs=1e-4)
    assert table[0]["F1-RadGraph"] == ""
    per_report = list(csv.DictReader((out / "per_report.csv").open()))
    assert [r["id"] for r in per_report] == [p[0] for p in pairs]
    assert float(per_report[5]["rougeL"]) == 0.0
    md = (out / "table.md").read_text()
    assert "Micro F1-14" in md and "F1-RadGraph and RadGraph-combined not computed" in md and "| Pleural Effusion |" in md
    assert "Release convention (LLaVA-Rad rrg_eval)" in md
    obs = list(csv.DictReader((out / "per_observation.csv").open()))
    assert len(obs) == 28


def test_resume_reuses_cached_labels_and_same_numbers(tmp_path, shared_data):
    preds = _write_preds(tmp_path / "preds.jsonl", _openi_pairs(shared_data, 12))
    out = tmp_path / "eval"
    first = evaluate(preds, out, EvaluateConfig(bootstrap=30, radgraph="off", plot=False), labeler=FakeLabeler())
    again = FakeLabeler()
    second = evaluate(preds, out, EvaluateConfig(bootstrap=30, radgraph="off", plot=False), labeler=again)
    assert again.calls == 0  # every label came from the cache
    assert second["metrics"] == first["metrics"]
    # a torn last line (a kill during a write) is ignored and relabelled
    cache = out / "labels_cache.jsonl"
    cache.write_bytes(cache.read_bytes()[:-40])
    third = FakeLabeler()
    assert evaluate(preds, out, EvaluateConfig(bootstrap=30, radgraph="off", plot=False), labeler=third)["metrics"] == \
        first["metrics"]
    assert third.calls == 1


def test_labeling_failure_is_isolated_and_recorded(tmp_path, shared_data):
    pairs = _openi_pairs(shared_data, 6) + [("bad", "Heart normal.", "Heart BOOM normal.")]
    preds = _write_preds(tmp_path / "preds.jsonl", pairs)
    result = evaluate(preds, tmp_path / "eval", EvaluateConfig(bootstrap=20, radgraph="off", plot=False),
                      labeler=FakeLabeler(fail_on="BOOM"))
    assert result["n"] == 6
    assert result["problems"][0]["id"] == "bad" and "labeling failed" in result["problems"][0]["error"]


def test_radgraph_scores_with_injected_scorer(tmp_path, shared_data):
    from llavarad.evaluate.radgraph import RadGraphScorer

    def annotate(texts):  # one entity per distinct word: a stand-in that needs no weights
        return [{"entities": {str(i): {"tokens": w, "label": "Observation::definitely present", "relations": []}
                              for i, w in enumerate(sorted(set(t.lower().split())))}} for t in texts]

    preds = _write_preds(tmp_path / "preds.jsonl", [("a", "Heart normal.", "Heart normal."), ("b", "Lungs clear.", "")])
    result = evaluate(preds, tmp_path / "eval", EvaluateConfig(bootstrap=20, plot=False), labeler=FakeLabeler(),
                      radgraph_scorer=RadGraphScorer(annotator=annotate))
    assert result["metrics"]["F1-RadGraph"]["full_sample"] == pytest.approx(50.0)
    # no relations: entity F1 1.0 and 0.0, relation F1 0.0 for both -> combined 0.25 on average
    assert result["metrics"]["RadGraph-combined"]["value"] == pytest.approx(25.0)
    assert result["settings"]["metrics"]["F1-RadGraph"]["settings"]["package_api"] == "external annotator"
    assert (tmp_path / "eval" / "radgraph_cache.jsonl").is_file()


def test_nothing_to_score_and_bad_config(tmp_path):
    preds = _write_preds(tmp_path / "preds.jsonl", [], BAD_LINES[:1])
    with pytest.raises(EvaluationError, match="nothing to score: 1 rows, 1 with a generation error"):
        evaluate(preds, tmp_path / "eval", EvaluateConfig(radgraph="off"), labeler=FakeLabeler())
    with pytest.raises(ConfigError) as info:
        EvaluateConfig(labeler="gpt", bootstrap=0, confidence=2.0, chexbert_weights="x.pth")
    assert len(info.value.problems) == 4


def test_cli_evaluate(tmp_path, shared_data, monkeypatch, capsys):
    import llavarad.evaluate.run as run_mod

    monkeypatch.delenv("LLAVARAD_RADGRAPH_WEIGHTS", raising=False)
    real = run_mod.evaluate
    monkeypatch.setattr(run_mod, "evaluate", lambda *a, **k: real(*a, **{**k, "labeler": FakeLabeler()}))
    preds = _write_preds(tmp_path / "preds.jsonl", _openi_pairs(shared_data, 15))
    code = main(["evaluate", str(preds), "--out", str(tmp_path / "eval"), "--bootstrap", "20", "--seed", "3",
                 "--no-plot", "--name", "mymodel"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mymodel: 15 of 15 rows scored" in captured.out and "ROUGE-L" in captured.out and "Prior-mentions" in captured.out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["settings"]["bootstrap"]["seed"] == 3
    # a generation error makes the exit code 1, after writing the results
    preds2 = _write_preds(tmp_path / "preds2.jsonl", _openi_pairs(shared_data, 5), BAD_LINES[:1])
    assert main(["evaluate", str(preds2), "--out", str(tmp_path / "eval2"), "--bootstrap", "10", "--no-plot",
                 "--no-radgraph"]) == 1
    assert (tmp_path / "eval2" / "metrics.json").is_file()
    if importlib.util.find_spec("radgraph") is None:
        assert main(["evaluate", str(preds), "--out", str(tmp_path / "eval3"), "--radgraph"]) == 1
        assert "F1-RadGraph is unavailable" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "e")]) == 1
    assert main(["evaluate", "--help"]) == 0 and "Example" in capsys.readouterr().out


def test_with_rule_labeler_when_available(tmp_path, shared_data):
    try:
        from llavarad.evaluate.labelers import get_labeler
    except ImportError:
        pytest.skip("llavarad.evaluate.labelers is not in this checkout yet")
    preds = _write_preds(tmp_path / "preds.jsonl", _openi_pairs(shared_data, 20))
    result = evaluate(preds, tmp_path / "eval", EvaluateConfig(bootstrap=20, radgraph="off", plot=False),
                      labeler=get_labeler("rules"))
    assert result["n"] == 20 and result["settings"]["labeler"] == "rules"


def test_unavailable_labeler_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("llavarad.evaluate.labelers")

    def get_labeler(name):
        raise FileNotFoundError(f"no weights for {name}: pass --chexbert-weights")

    fake.get_labeler = get_labeler
    monkeypatch.setitem(sys.modules, "llavarad.evaluate.labelers", fake)
    preds = _write_preds(tmp_path / "preds.jsonl", [("a", "Heart normal.", "Heart normal.")])
    with pytest.raises(EvaluationError, match="'chexbert' labeler is unavailable: FileNotFoundError: no weights"):
        evaluate(preds, tmp_path / "eval", EvaluateConfig(labeler="chexbert", radgraph="off"))
    assert main(["evaluate", str(preds), "--out", str(tmp_path / "eval"), "--labeler", "chexbert"]) == 1

