"""ReXVal validation on synthetic rater tables whose answers are known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from llm_fake_server import Reply, ScriptedServer
from scipy.stats import kendalltau, ttest_rel

from llavarad.chexprompt import ChexpromptConfig, load_rexval, validate_rexval
from llavarad.chexprompt.rexval import PAIRS_FILE, RATERS_FILE, leave_one_rater_out
from llavarad.cli import main
from llavarad.llm import LLMConfig
from llavarad.prompts.chexprompt import ERROR_TYPES

CAND_TYPES = ("radgraph", "bleu")
N_STUDIES = 6
FINDINGS = ["left pleural effusion", "right lower lobe opacity", "mild cardiomegaly", "small pneumothorax",
            "pulmonary edema", "atelectasis at the bases"]


def truth_of(pair: int) -> tuple[int, int]:
    """Known (total, significant) errors of pair ``pair`` (study * 2 + candidate column)."""
    total = (pair * 7) % 5
    return total, min(total, pair % 3)


def build_rexval(tmp: Path, index_column: bool = True) -> Path:
    """Pairs file in ReXVal's layout (with pandas' unnamed index column) and a rater table where
    rater 0 and 2 count the truth and rater 1 adds one or two insignificant errors."""
    d = tmp / "rexval"
    d.mkdir()
    with (d / PAIRS_FILE).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(([""] if index_column else []) + ["study_id", "gt_report", *CAND_TYPES])
        for s in range(N_STUDIES):
            ref = f"There is {FINDINGS[s]}. Heart size is normal. Study {s}."
            cands = [f"Findings: {FINDINGS[(s + k + 1) % 6]}, no {FINDINGS[s]}. Candidate {s}-{k}." for k in range(2)]
            w.writerow(([str(s)] if index_column else []) + [str(50_000_000 + s), ref, *cands])
    with (d / RATERS_FILE).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_number", "candidate_type", "rater_index", "error_category", "clinically_significant", "num_errors"])
        for s in range(N_STUDIES):
            for k, ct in enumerate(CAND_TYPES):
                total, sig = truth_of(s * 2 + k)
                for rater in range(3):
                    extra = (1 + (s + k) % 2) if rater == 1 else 0
                    for cat in range(1, 7):
                        # significant errors in category 1, insignificant ones in category 2
                        w.writerow([s, ct, rater, cat, "True", sig if cat == 1 else 0])
                        w.writerow([s, ct, rater, cat, "False", (total - sig + extra) if cat == 2 else 0])
    return d


def judge_answer(total: int, sig: int) -> str:
    obj = {key: {"significant": 0, "insignificant": 0} for key, _, _ in ERROR_TYPES}
    obj["false_finding"]["significant"] = sig
    obj["omitted_finding"]["insignificant"] = total - sig
    return json.dumps(obj)


def responder(body, i):
    cand = body["messages"][-1]["content"].split("Candidate report:\n", 1)[1]
    s, k = (int(v) for v in cand.rsplit("Candidate ", 1)[1].rstrip(".").split("-"))
    return Reply(judge_answer(*truth_of(s * 2 + k)))


def cfg_for(srv, tmp_path) -> ChexpromptConfig:
    llm = LLMConfig(backend="openai_compatible", base_url=srv.base_url, model="judge", cache_path=str(tmp_path / "c.sqlite"),
                    backoff_base_s=0.001, backoff_max_s=0.01)
    return ChexpromptConfig(llm=llm, bootstrap=100)


def test_load_rexval_reads_both_layouts(tmp_path):
    data = load_rexval(build_rexval(tmp_path))
    assert len(data.pairs) == 12 and data.pairs[3].id == "1/bleu" and data.raters == ["0", "1", "2"]
    assert data.total.shape == (12, 3) and data.missing_rater_rows == 0
    for p in range(12):
        total, sig = truth_of(p)
        assert data.total[p, 0] == data.total[p, 2] == total and data.significant[p].tolist() == [sig] * 3
    (tmp_path / "plain").mkdir()
    data2 = load_rexval(build_rexval(tmp_path / "plain", index_column=False))
    assert np.array_equal(data2.total, data.total)


def test_validate_rexval_known_answers(tmp_path):
    d = build_rexval(tmp_path)
    with ScriptedServer(responder=responder) as srv:
        result = validate_rexval(d, tmp_path / "out", cfg_for(srv, tmp_path))
        assert len(srv.requests) == 12
    data = load_rexval(d)
    judge_total = np.array([truth_of(p)[0] for p in range(12)], dtype=float)
    judge_sig = np.array([truth_of(p)[1] for p in range(12)], dtype=float)
    rows = {(r["target"], r["method"]): r for r in result["kendall"]}
    expected = kendalltau(judge_total, data.total.mean(axis=1), variant="b")
    assert rows[("total_errors", "chexprompt")]["tau_b"] == pytest.approx(expected.statistic)
    assert rows[("total_errors", "chexprompt")]["p_value"] == pytest.approx(expected.pvalue)
    assert rows[("significant_errors", "chexprompt")]["tau_b"] == pytest.approx(1.0)  # all raters agree with the judge
    assert {m for _, m in rows} >= {"chexprompt", "bleu4", "rougeL", "labeler_f1"}
    assert result["settings"]["metric_notes"]["radgraph_f1"].startswith(("skipped", "radgraph"))
    # leave-one-rater-out, by hand: rater 1 is the odd one out, the judge agrees with raters 0 and 2
    loro = {r["rater"]: r for r in result["leave_one_rater_out"]["total_errors"]}
    extra = np.array([1 + (p // 2 + p % 2) % 2 for p in range(12)], dtype=float)
    assert loro["1"]["mad_left_out_rater"] == pytest.approx(extra.mean()) and loro["1"]["mad_judge"] == 0.0
    assert loro["1"]["judge_closer"] and loro["1"]["t_statistic"] < 0
    assert loro["1"]["p_value"] == pytest.approx(ttest_rel(np.zeros(12), extra).pvalue)
    assert loro["0"]["mad_left_out_rater"] == pytest.approx(loro["0"]["mad_judge"]) == pytest.approx((extra / 2).mean())
    assert loro["0"]["p_value"] == 1.0 and not loro["0"]["judge_closer"]
    assert result["metrics"]["mad/total_errors/chexprompt"]["value"] == pytest.approx((extra / 2).mean() * 2 / 3)
    for ext in ("json", "csv", "md", "png"):
        assert (tmp_path / "out" / f"rexval.{ext}").stat().st_size > 0
    json.loads((tmp_path / "out" / "rexval.json").read_text())  # strict JSON (no NaN)


def test_vectorised_bootstrap_tau_matches_scipy_on_each_resample():
    from llavarad.chexprompt.rexval import tau_b_resampled
    from llavarad.evaluate.bootstrap import bootstrap_indices, resample_counts

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 30).astype(float), rng.integers(0, 6, 30).astype(float)
    fast = tau_b_resampled(x, y, resample_counts(30, 20, seed=5))
    slow = [kendalltau(x[i], y[i], variant="b").statistic for i in bootstrap_indices(30, 20, seed=5)]
    assert fast == pytest.approx(slow)
    assert np.isnan(tau_b_resampled(np.ones(5), np.arange(5.0), resample_counts(5, 3, 0))).all()


def test_leave_one_rater_out_matches_definition():
    rng = np.random.default_rng(0)
    raters = rng.integers(0, 5, size=(40, 6)).astype(float)
    judge = rng.integers(0, 5, size=40).astype(float)
    rows = leave_one_rater_out(raters, judge, [str(i) for i in range(6)])
    for j, row in enumerate(rows):
        others = raters[:, [k for k in range(6) if k != j]].mean(axis=1)
        assert row["mad_left_out_rater"] == pytest.approx(np.abs(raters[:, j] - others).mean())
        assert row["mad_judge"] == pytest.approx(np.abs(judge - others).mean())
        assert row["t_statistic"] == pytest.approx(ttest_rel(np.abs(judge - others), np.abs(raters[:, j] - others)).statistic)


def test_cli_validate_rexval_and_resume(tmp_path, capsys):
    d = build_rexval(tmp_path)
    with ScriptedServer(responder=responder) as srv:
        argv = ["validate-rexval", str(d), "--out", str(tmp_path / "o"), "--backend", "openai_compatible",
                "--base-url", srv.base_url, "--model", "judge", "--bootstrap", "50"]
        assert main(argv) == 0
        assert main(argv) == 0  # second run: everything already judged
        assert len(srv.requests) == 12
    out = capsys.readouterr().out
    assert "ReXVal: 12 of 12 pairs judged" in out and "tau-b total_errors" in out


@pytest.mark.parametrize(
    "row, message",
    [
        ([0, "radgraph", 0, 7, "True", 1], "error_category=7"),
        ([0, "gpt4", 0, 1, "True", 1], "candidate_type='gpt4'"),
        ([99, "bleu", 0, 1, "True", 1], "study_number=99"),
        ([0, "bleu", 0, 1, "maybe", 1], "clinically_significant='maybe'"),
        ([0, "bleu", 0, 1, "True", -2], "num_errors='-2'"),
    ],
)
def test_bad_rater_rows_are_named(tmp_path, row, message):
    d = build_rexval(tmp_path)
    with (d / RATERS_FILE).open("a", newline="") as fh:
        csv.writer(fh).writerow(row)
    with pytest.raises(ValueError, match=message):
        load_rexval(d)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=PAIRS_FILE):
        load_rexval(tmp_path)
