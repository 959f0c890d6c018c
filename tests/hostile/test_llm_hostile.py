"""Hostile judges and inputs for `llavarad chexprompt` (issue 21): every case asserts the message
and that the good reports of the same run come out exactly as in a clean run."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
from llm_fake_server import Reply, ScriptedServer, Status, Trickle

from llavarad.chexprompt import ChexpromptConfig, run_chexprompt
from llavarad.chexprompt.judge import RESULTS_FILE, locked_output, read_results
from llavarad.llm import LLMConfig, ReplyCache
from llavarad.prompts.chexprompt import ERROR_TYPES

GOOD = {f"g{i}": (f"Reference {i}: small left pleural effusion.", f"Candidate {i}: left effusion, heart normal.")
        for i in range(4)}
HOSTILE = "HOSTILE candidate"


def answer_for(candidate: str) -> str:
    """A judge answer that depends only on the candidate text (so a clean run can be repeated)."""
    h = hashlib.sha256(candidate.encode()).digest()
    return json.dumps({key: {"significant": h[j] % 3, "insignificant": h[j + 6] % 2} for j, (key, _, _) in enumerate(ERROR_TYPES)})


def candidate_of(body: dict) -> str:
    # the last message holding a pair (a parse retry appends the failed reply and a complaint)
    last = [m["content"] for m in body["messages"] if "Candidate report:\n" in m["content"]][-1]
    return last.split("Candidate report:\n", 1)[1]


def write_preds(path: Path, extra: dict[str, tuple[str, str]] | None = None) -> Path:
    rows = {**GOOD, **(extra or {})}
    path.write_text("".join(json.dumps({"id": k, "reference": r, "prediction": c}) + "\n" for k, (r, c) in rows.items()))
    return path


def good_responder(body: dict, index: int) -> Reply:
    return Reply(answer_for(candidate_of(body)))


def llm(srv: ScriptedServer, **kw: object) -> LLMConfig:
    base = {"backend": "openai_compatible", "base_url": srv.base_url, "model": "judge", "cache_path": None, "concurrency": 2,
            "max_retries": 2, "max_parse_retries": 1, "backoff_base_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0}
    return LLMConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clean_rows(tmp_path_factory) -> dict[str, dict]:
    """Result rows of the good reports judged by a well-behaved server."""
    tmp = tmp_path_factory.mktemp("clean")
    with ScriptedServer(responder=good_responder) as srv:
        run_chexprompt(write_preds(tmp / "p.jsonl"), tmp / "o", ChexpromptConfig(llm=llm(srv), bootstrap=10))
    return read_results(tmp / "o" / RESULTS_FILE)


def assert_good_rows_identical(out: Path, clean_rows: dict[str, dict]) -> None:
    rows = read_results(out / RESULTS_FILE)
    for rid in GOOD:
        assert rows[rid]["ok"], rows[rid]["error"]
        for field in ("counts", "total", "significant", "insignificant", "input_sha256", "judge"):
            assert rows[rid][field] == clean_rows[rid][field], (rid, field)


def hostile_run(tmp_path: Path, reply_for_hostile, **llm_kw: object) -> tuple[dict, dict, ScriptedServer]:
    """Judge the good reports plus one whose judge reply is ``reply_for_hostile(index)``."""
    preds = write_preds(tmp_path / "p.jsonl", {"bad": ("Reference: normal chest.", HOSTILE)})

    def responder(body: dict, index: int):
        return reply_for_hostile(index) if candidate_of(body) == HOSTILE else good_responder(body, index)

    with ScriptedServer(responder=responder) as srv:
        result = run_chexprompt(preds, tmp_path / "o", ChexpromptConfig(llm=llm(srv, **llm_kw), bootstrap=10))
    return result, read_results(tmp_path / "o" / RESULTS_FILE), srv


def test_resume_rejudges_rows_whose_texts_changed_under_the_same_id(tmp_path, clean_rows):
    preds = tmp_path / "p.jsonl"
    changed = {**GOOD, "g0": (GOOD["g0"][0], "A different candidate written by a new model.")}
    preds.write_text("".join(json.dumps({"id": k, "reference": r, "prediction": c}) + "\n" for k, (r, c) in changed.items()))
    with ScriptedServer(responder=good_responder) as srv:
        cfg = ChexpromptConfig(llm=llm(srv), bootstrap=10)
        run_chexprompt(preds, tmp_path / "o", cfg)
        write_preds(preds)  # the predictions change under the same ids, into the same --out
        n_before = len(srv.requests)
        result = run_chexprompt(preds, tmp_path / "o", cfg)
    assert len(srv.requests) == n_before + 1  # only g0 changed, only g0 is asked again
    assert result["n"] == 4 and result["usage"]["this_run"]["requests_sent"] == 1
    assert_good_rows_identical(tmp_path / "o", clean_rows)


def test_a_changed_judge_setting_rejudges(tmp_path):
    preds = write_preds(tmp_path / "p.jsonl")
    with ScriptedServer(responder=good_responder) as srv:
        run_chexprompt(preds, tmp_path / "o", ChexpromptConfig(llm=llm(srv), bootstrap=10))
        run_chexprompt(preds, tmp_path / "o", ChexpromptConfig(llm=llm(srv, max_tokens=64), bootstrap=10))
    assert len(srv.requests) == 8


def test_two_runs_on_one_out_are_locked_against_each_other(tmp_path, run):
    preds = write_preds(tmp_path / "p.jsonl")
    with locked_output(tmp_path / "o"), ScriptedServer(responder=good_responder) as srv:
        res = run("chexprompt", preds, "--out", tmp_path / "o", "--backend", "openai_compatible", "--base-url", srv.base_url)
    assert res.rc == 1 and "another run is writing to" in res.err and ".chexprompt.lock" in res.err
    assert srv.requests == [] and not (tmp_path / "o" / RESULTS_FILE).exists()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (json.dumps({key: {"significant": 10**30, "insignificant": 0} for key, _, _ in ERROR_TYPES}),
         r"must be an integer in \[0, 100\]"),
        ('{"false_finding": {"significant": 2, "insignificant": 0, "significant": 0}}', "appears twice"),
    ],
    ids=["count-1e30", "duplicate-key"],
)
def test_judge_reply_out_of_bounds_or_with_duplicate_keys_fails_that_report(tmp_path, clean_rows, reply, message):
    result, rows, _ = hostile_run(tmp_path, lambda i: Reply(reply))
    assert not rows["bad"]["ok"] and rows["bad"]["counts"] is None
    assert re.search(message, rows["bad"]["error"]) and "unparsable reply (try 2 of 2)" in rows["bad"]["error"]
    assert result["n"] == 4 and [f["id"] for f in result["failed"]] == ["bad"]
    assert_good_rows_identical(tmp_path / "o", clean_rows)


USAGE_BODY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}]}


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"prompt_tokens": -5, "completion_tokens": 3}, "usage.prompt_tokens is -5"),
        ({"prompt_tokens": {"a": [1, {"b": 2}]}, "completion_tokens": 3}, "usage.prompt_tokens is dict"),
        ({"prompt_tokens": 10, "completion_tokens": "7"}, "usage.completion_tokens is '7'"),
        ({"prompt_tokens": 10**30, "completion_tokens": 1}, "usage.prompt_tokens is 1000000000000000000"),
    ],
    ids=["negative", "nested", "string", "huge"],
)
def test_bad_usage_is_a_clear_error_not_a_crash(tmp_path, clean_rows, usage, message):
    body = json.dumps({**USAGE_BODY, "usage": usage})
    result, rows, srv = hostile_run(tmp_path, lambda i: Status(200, body=body), cache_path=str(tmp_path / "c.sqlite"))
    assert not rows["bad"]["ok"] and message in rows["bad"]["error"] and "gave up after 3 attempt(s)" in rows["bad"]["error"]
    assert result["usage"]["this_run"]["prompt_tokens"] >= 0 and result["n"] == 4
    assert sum(candidate_of(r["body"]) == HOSTILE for r in srv.requests) == 3
    assert len(ReplyCache(tmp_path / "c.sqlite")) == 4  # the good replies only; the bad usage never reached SQLite
    assert_good_rows_identical(tmp_path / "o", clean_rows)


def test_deeply_nested_body_is_a_malformed_response(tmp_path, clean_rows):
    deep = '{"a":' * 20000 + "1" + "}" * 20000
    _, rows, _ = hostile_run(tmp_path, lambda i: Status(200, body=deep))
    assert not rows["bad"]["ok"] and "malformed response body" in rows["bad"]["error"]
    assert_good_rows_identical(tmp_path / "o", clean_rows)


@pytest.mark.parametrize("retry_after", ["999999", "Fri, 31 Dec 2100 23:59:59 GMT", "1e999"])
def test_retry_after_is_capped_and_the_wait_is_announced(tmp_path, clean_rows, caplog, retry_after):
    replies = iter([Status(429, headers={"Retry-After": retry_after}), Reply(answer_for(HOSTILE))])
    with caplog.at_level(logging.WARNING, logger="llavarad.llm.client"):
        _, rows, _ = hostile_run(tmp_path, lambda i: next(replies), retry_after_max_s=0.2, concurrency=1)
    assert rows["bad"]["ok"] and rows["bad"]["attempts"] == 2
    waits = [r.getMessage() for r in caplog.records if "Retry-After" in r.getMessage()]
    assert len(waits) == 1 and "waiting 0.2 s (capped by llm.retry_after_max_s)" in waits[0]
    assert_good_rows_identical(tmp_path / "o", clean_rows)


def test_a_trickling_server_cannot_hold_a_request_past_the_timeout(tmp_path, clean_rows):
    # ~300 bytes at one byte per 0.3 s would take ~90 s; every read is quick, so only a bound on the
    # whole request stops it
    _, rows, srv = hostile_run(tmp_path, lambda i: Trickle(answer_for(HOSTILE), interval_s=0.3),
                               timeout_s=0.8, max_retries=1)
    assert not rows["bad"]["ok"] and "no complete reply within 0.8 s" in rows["bad"]["error"]
    assert rows["bad"]["attempts"] == 2 and sum(candidate_of(r["body"]) == HOSTILE for r in srv.requests) == 2
    assert_good_rows_identical(tmp_path / "o", clean_rows)


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_stops_the_run_once(tmp_path, run, status):
    preds = write_preds(tmp_path / "p.jsonl")
    with ScriptedServer(responder=lambda b, i: Status(status, body='{"error": {"message": "invalid key"}}')) as srv:
        res = run("chexprompt", preds, "--out", tmp_path / "o", "--backend", "openai_compatible", "--base-url",
                  srv.base_url, "--concurrency", "4")
    assert res.rc == 1 and len(srv.requests) == 1
    assert f"stopped: HTTP {status}" in res.err and "no request can succeed" in res.err
    assert res.err.count(f"HTTP {status}") == 1


def test_empty_input_exits_non_zero_with_a_message(tmp_path, run):
    empty = tmp_path / "p.jsonl"
    empty.write_text("\n\n")
    res = run("chexprompt", empty, "--out", tmp_path / "o", "--backend", "openai_compatible", "--base-url",
              "http://127.0.0.1:9/v1")
    assert res.rc == 1 and "has no rows" in res.err


def test_empty_prediction_is_judged_like_evaluate_scores_it(tmp_path, clean_rows):
    preds = write_preds(tmp_path / "p2.jsonl", {"blank": ("Reference: right effusion.", "")})
    with ScriptedServer(responder=good_responder) as srv:
        result = run_chexprompt(preds, tmp_path / "o2", ChexpromptConfig(llm=llm(srv), bootstrap=10))
    rows = read_results(tmp_path / "o2" / RESULTS_FILE)
    assert rows["blank"]["ok"] and rows["blank"]["counts"] is not None and result["n"] == 5
    assert sum(candidate_of(r["body"]) == "" for r in srv.requests) == 1
    assert_good_rows_identical(tmp_path / "o2", clean_rows)


def test_unreadable_input_lines_are_failed_rows_with_their_line(tmp_path, clean_rows):
    preds = write_preds(tmp_path / "p.jsonl")
    with preds.open("a") as fh:
        fh.write('{"id": "deep", "x": ' + "[" * 50000 + "]" * 50000 + "}\n")
        fh.write('{"id": "surrogate", "reference": "ok", "prediction": "\\ud800 broken"}\n')
    with ScriptedServer(responder=good_responder) as srv:
        result = run_chexprompt(preds, tmp_path / "o", ChexpromptConfig(llm=llm(srv), bootstrap=10))
    errors = {f["id"]: f["error"] for f in result["failed"]}
    assert "not valid JSON (RecursionError)" in errors["line:5"] and ":5" in errors["line:5"]
    assert "lone surrogate" in errors["surrogate"]
    assert result["n"] == 4
    assert_good_rows_identical(tmp_path / "o", clean_rows)


def test_cli_caps_retry_after_and_bounds_the_whole_request(tmp_path, run, caplog):
    preds = write_preds(tmp_path / "p.jsonl", {"bad": ("Reference: normal chest.", HOSTILE)})
    first = iter([Status(429, headers={"Retry-After": "999999"})])

    def responder(body: dict, index: int):
        if candidate_of(body) == HOSTILE:
            return Trickle(answer_for(HOSTILE), interval_s=0.3)
        return next(first, None) or good_responder(body, index)

    with caplog.at_level(logging.WARNING), ScriptedServer(responder=responder) as srv:
        res = run("chexprompt", preds, "--out", tmp_path / "o", "--backend", "openai_compatible", "--base-url",
                  srv.base_url, "--retry-after-max", "0.2", "--timeout", "0.8", "--max-retries", "1", "--no-cache",
                  "--bootstrap", "10", "--set", "llm.backoff_base_s=0.001")
    assert res.rc == 1 and "4 of 5 reports judged, 1 failed" in res.out
    assert "no complete reply within 0.8 s" in res.err
    assert any("waiting 0.2 s (capped by llm.retry_after_max_s)" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
