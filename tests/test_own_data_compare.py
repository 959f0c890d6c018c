"""``llavarad compare``: parity of each side with the evaluation stage, paired differences checked
against an independent bootstrap loop, mismatched files, and the CLI's files and exit code. Real
Open-I reports from ../shared/data stand in for model outputs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from llavarad.cli import main
from llavarad.evaluate.compare import (
    COMPARE_METRICS,
    CompareConfig,
    CompareError,
    compare,
)
from llavarad.evaluate.run import EvaluateConfig, evaluate


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def preds(shared_data, tmp_path_factory):
    """before: a random other report as prediction; after: the right report for two rows in three."""
    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(encoding="utf-8", newline="") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r["findings"].strip()][:80]
    rng = random.Random(0)
    before, after = [], []
    for i, ref in enumerate(texts):
        other = texts[rng.randrange(len(texts))]
        before.append({"id": f"r{i}", "reference": ref, "prediction": other, "error": None, "model": "release"})
        after.append({"id": f"r{i}", "reference": ref, "prediction": ref if i % 3 else other, "error": None,
                      "model": "finetuned"})
    d = tmp_path_factory.mktemp("cmp")
    return _write(d / "before.jsonl", before), _write(d / "after.jsonl", after), texts


def test_each_side_equals_the_evaluation_stage(preds, tmp_path):
    before, after, _ = preds
    res = compare(before, after, tmp_path / "c", CompareConfig(statistic="full", bootstrap=200, plot=False))
    ev = evaluate(before, tmp_path / "e", EvaluateConfig(statistic="full", bootstrap=200, radgraph="off", plot=False))
    for key in COMPARE_METRICS:
        ours, theirs = res["metrics"][key]["before"], ev["metrics"][key]
        for field in ("value", "ci_low", "ci_high"):
            assert ours[field] == pytest.approx(theirs[field], abs=1e-9), (key, field)
    for obs, o in res["per_observation"]["negative"].items():
        assert o["before"]["value"] == pytest.approx(ev["per_observation"]["negative"][obs]["f1"], abs=1e-9)
        assert o["support"] == ev["per_observation"]["negative"][obs]["support"]


def test_paired_difference_matches_an_independent_bootstrap_loop(preds, tmp_path):
    before, after, texts = preds
    res = compare(before, after, tmp_path, CompareConfig(statistic="full", bootstrap=300, seed=7, plot=False))
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rows_b = [json.loads(x) for x in before.read_text().splitlines()]
    rows_a = [json.loads(x) for x in after.read_text().splitlines()]
    rb = np.array([scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in rows_b])
    ra = np.array([scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in rows_a])
    idx = np.random.RandomState(7).randint(0, len(rb), (300, len(rb)))
    diffs = 100 * (ra[idx].mean(1) - rb[idx].mean(1))
    d = res["metrics"]["ROUGE-L"]["difference"]
    assert d["value"] == pytest.approx(100 * (ra.mean() - rb.mean()))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert d["p_not_better"] == pytest.approx(float(np.mean(diffs <= 0)))
    # pairing: the difference's interval is narrower than the gap the two separate intervals leave
    m = res["metrics"]["ROUGE-L"]
    assert d["ci_high"] - d["ci_low"] < (m["after"]["ci_high"] - m["after"]["ci_low"]) + (
        m["before"]["ci_high"] - m["before"]["ci_low"])
    assert d["ci_low"] > 0 and res["metrics"]["Micro-F1-14"]["difference"]["ci_low"] > 0


def test_a_model_against_itself_differs_by_nothing(preds, tmp_path):
    before, _, _ = preds
    res = compare(before, before, tmp_path, CompareConfig(bootstrap=50, plot=False))
    for m in res["metrics"].values():
        assert m["difference"]["value"] == 0 and m["difference"]["ci_low"] == m["difference"]["ci_high"] == 0
        assert m["difference"]["p_not_better"] == 1.0
    assert (res["before"]["name"], res["after"]["name"]) == ("before", "after")


def test_only_shared_reports_with_equal_references_are_scored(preds, tmp_path):
    before, after, _ = preds
    rows = [json.loads(x) for x in after.read_text().splitlines()]
    rows[0]["reference"] = "Something else entirely."
    rows[1]["error"] = "CUDA out of memory"
    rows.append({"id": "extra", "reference": "No acute disease.", "prediction": "Normal.", "error": None})
    res = compare(before, _write(tmp_path / "a.jsonl", rows), tmp_path / "c", CompareConfig(bootstrap=50, plot=False))
    assert res["n"] == len(rows) - 3
    assert {p["id"] for p in res["problems"]} == {"r0", "r1", "extra"}
    assert res["after"]["generation_errors"] == 1
    with pytest.raises(CompareError):
        compare(before, _write(tmp_path / "none.jsonl", rows[-1:]), tmp_path / "d", CompareConfig(bootstrap=50))


def test_cli_writes_json_markdown_csv_and_plot(preds, tmp_path, capsys):
    before, after, _ = preds
    out = tmp_path / "cmp"
    assert main(["compare", str(before), str(after), "--out", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "finetuned vs release" in printed and "Micro-F1-14" in printed
    result = json.loads((out / "compare.json").read_text())
    assert result["n"] == 80 and set(result["metrics"]) == set(COMPARE_METRICS)
    md = (out / "compare.md").read_text()
    assert "| Micro-F1-14 |" in md and "Per-observation F1" in md and "better" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "compare.csv").read_text().splitlines()) == 1 + 3 * (len(COMPARE_METRICS) + 28)
    rows = [json.loads(x) for x in after.read_text().splitlines()][1:]
    assert main(["compare", str(before), str(_write(tmp_path / "a.jsonl", rows)), "--out", str(tmp_path / "c2"),
                 "--bootstrap", "50", "--no-plot"]) == 1  # a report missing on one side
    assert main(["compare", str(before), str(after), "--out", str(before)]) != 0  # never over an input
    assert before.is_file()
