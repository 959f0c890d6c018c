"""LLM client (openai package + aiolimiter) against the scripted local server: protocol, parse
retries, faults, cache, limits."""

from __future__ import annotations

import json
import threading
import time

import pytest
from llm_fake_server import Drop, Reply, ScriptedServer, Status, Truncated

from llavarad.llm import (
    ChatRequest,
    FatalError,
    LLMClient,
    LLMConfig,
    ReplyCache,
    request_hash,
)
from llavarad.llm.backends import parse_retry_after

MSGS = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Count to one."}]


def parse_json_n(text: str) -> int:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("n"), int):
        raise ValueError("expected an object with an integer 'n'")
    return obj["n"]


class SleepRecorder:
    """An async stand-in for asyncio.sleep that records the waits and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_cfg(srv: ScriptedServer, tmp_path=None, **kw) -> LLMConfig:
    base = dict(backend="openai_compatible", base_url=srv.base_url, model="judge-1", timeout_s=2.0, max_retries=3,
                max_parse_retries=2, backoff_base_s=0.001, backoff_max_s=0.01, concurrency=4,
                cache_path=str(tmp_path / "cache.sqlite") if tmp_path is not None else None)
    base.update(kw)
    return LLMConfig(**base)


def test_valid_reply_protocol_and_auth_header(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-123")
    with ScriptedServer([Reply('{"n": 1}', prompt_tokens=12, completion_tokens=3)]) as srv:
        client = LLMClient(make_cfg(srv, api_key_env="TEST_LLM_KEY", price_prompt_per_1k=1.0, price_completion_per_1k=2.0))
        res = client.chat(ChatRequest("a", MSGS, "t-v1", parse_json_n))
    assert res.ok and res.value == 1 and res.raw_replies == ['{"n": 1}'] and res.attempts == 1 and not res.cached
    assert res.usage == {"prompt_tokens": 12, "completion_tokens": 3}
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test-123"
    assert req["body"]["model"] == "judge-1" and req["body"]["temperature"] == 0.0 and req["body"]["messages"] == MSGS
    assert client.stats.prompt_tokens == 12 and client.stats.completion_tokens == 3
    assert client.stats.estimated_cost == pytest.approx(12 / 1000 * 1.0 + 3 / 1000 * 2.0)


def test_malformed_then_valid_is_retried_with_feedback_and_all_replies_recorded():
    with ScriptedServer([Reply("sure! n is one"), Reply('{"n": 1}')]) as srv:
        res = LLMClient(make_cfg(srv)).chat(ChatRequest("a", MSGS, "t-v1", parse_json_n))
    assert res.ok and res.value == 1
    assert res.raw_replies == ["sure! n is one", '{"n": 1}'] and res.attempts == 2
    second = srv.requests[1]["body"]["messages"]
    assert second[:2] == MSGS and second[2] == {"role": "assistant", "content": "sure! n is one"}
    assert "could not be read" in second[3]["content"]


def test_never_parsable_reply_is_a_failure_not_a_default(tmp_path):
    script = [Reply("no"), Reply('{"n": "one"}'), Reply('{"n": ')]
    with ScriptedServer(script) as srv:
        client = LLMClient(make_cfg(srv, tmp_path))
        res = client.chat(ChatRequest("a", MSGS, "t-v1", parse_json_n))
    assert not res.ok and res.value is None
    assert res.raw_replies == ["no", '{"n": "one"}', '{"n": ']
    assert "unparsable reply (try 3 of 3)" in res.error
    assert client.stats.failures == 1 and client.stats.retries_parse == 2
    assert len(client.cache) == 0  # failures are never cached


def test_partial_reply_cut_by_max_tokens_is_retried():
    with ScriptedServer([Reply('{"n"', finish_reason="length"), Reply('{"n": 2}')]) as srv:
        res = LLMClient(make_cfg(srv, parse_retry_feedback=False)).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.value == 2 and len(res.raw_replies) == 2
    assert srv.requests[1]["body"]["messages"] == MSGS  # no feedback turn when disabled


def test_429_retry_after_is_honoured():
    sleeps = SleepRecorder()
    with ScriptedServer([Status(429, headers={"Retry-After": "0.3"}), Reply('{"n": 1}')]) as srv:
        res = LLMClient(make_cfg(srv), sleep=sleeps).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.attempts == 2
    assert len(sleeps.calls) == 1 and sleeps.calls[0] >= 0.3  # Retry-After beats the 0.01 s backoff cap


def test_500_then_success_and_backoff_grows():
    sleeps = SleepRecorder()
    script = [Status(500), Status(502), Status(503), Reply('{"n": 3}')]
    with ScriptedServer(script) as srv:
        client = LLMClient(make_cfg(srv, backoff_base_s=1.0, backoff_max_s=100.0), sleep=sleeps)
        res = client.chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.value == 3 and res.attempts == 4 and res.raw_replies == ['{"n": 3}']
    assert [0.5 <= s <= 1.0 for s in sleeps.calls[:1]] == [True]
    assert 1.0 <= sleeps.calls[1] <= 2.0 and 2.0 <= sleeps.calls[2] <= 4.0
    assert client.stats.retries_transient == 3


def test_retries_exhausted_reports_the_fault():
    with ScriptedServer([Status(500)] * 4) as srv:
        client = LLMClient(make_cfg(srv, max_retries=3), sleep=SleepRecorder())
        res = client.chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert not res.ok and res.attempts == 4 and res.raw_replies == []
    assert "gave up after 4 attempt(s)" in res.error and "HTTP 500" in res.error


def test_timeout_then_success():
    with ScriptedServer([Reply('{"n": 9}', delay_s=1.0), Reply('{"n": 1}')]) as srv:
        res = LLMClient(make_cfg(srv, timeout_s=0.2), sleep=SleepRecorder()).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.value == 1 and res.attempts == 2


def test_dropped_connection_and_truncated_body_are_retried():
    with ScriptedServer([Drop(), Truncated(), Reply('{"n": 1}')]) as srv:
        res = LLMClient(make_cfg(srv), sleep=SleepRecorder()).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.attempts == 3 and res.raw_replies == ['{"n": 1}']


def test_non_json_200_body_is_a_transient_fault():
    with ScriptedServer([Status(200, body="<html>proxy error</html>"), Reply('{"n": 1}')]) as srv:
        res = LLMClient(make_cfg(srv), sleep=SleepRecorder()).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.attempts == 2


def test_401_stops_the_batch_once_and_is_not_retried():
    reqs = [ChatRequest(str(i), MSGS, "t", parse_json_n) for i in range(5)]
    with ScriptedServer(responder=lambda b, i: Status(401, body='{"error": {"message": "bad key"}}')) as srv:
        client = LLMClient(make_cfg(srv, concurrency=4), sleep=SleepRecorder())
        with pytest.raises(FatalError, match="HTTP 401.*no request can succeed"):
            client.run(reqs)
        with pytest.raises(FatalError):  # the client remembers: no second request with a bad key
            client.run(reqs)
    assert len(srv.requests) == 1


def test_404_fails_only_its_request():
    with ScriptedServer([Status(404), Reply('{"n": 2}')]) as srv:
        res = LLMClient(make_cfg(srv, concurrency=1), sleep=SleepRecorder()).run(
            [ChatRequest("a", MSGS, "t", parse_json_n), ChatRequest("b", MSGS[:1], "t", parse_json_n)])
    assert not res[0].ok and res[0].attempts == 1 and "HTTP 404" in res[0].error
    assert res[1].ok and res[1].value == 2


def test_cache_makes_rerun_free_and_survives_a_new_client(tmp_path):
    def responder(body, i):
        return Reply(json.dumps({"n": int(body["messages"][-1]["content"].split()[-1])}))

    reqs = [ChatRequest(f"k{i}", [{"role": "user", "content": f"number {i}"}], "t-v1", parse_json_n) for i in range(6)]
    with ScriptedServer(responder=responder) as srv:
        first = LLMClient(make_cfg(srv, tmp_path)).run(reqs)
        n_sent = len(srv.requests)
        second_client = LLMClient(make_cfg(srv, tmp_path))
        second = second_client.run(reqs)
        assert len(srv.requests) == n_sent == 6  # nothing new was sent
        # a new prompt version is a different cache key
        third = LLMClient(make_cfg(srv, tmp_path)).run([ChatRequest("k0", reqs[0].messages, "t-v2", parse_json_n)])
        assert len(srv.requests) == 7 and not third[0].cached
    assert [r.value for r in first] == [r.value for r in second] == list(range(6))
    assert all(r.cached and r.attempts == 0 for r in second)
    assert second_client.stats.cache_hits == 6 and second_client.stats.requests_sent == 0
    assert second_client.stats.prompt_tokens == 0  # a cache hit costs nothing


def test_cached_reply_that_no_longer_parses_is_asked_again(tmp_path):
    cache = ReplyCache(tmp_path / "cache.sqlite")
    cache.put("judge-1", "t", request_hash(MSGS, 0.0), "stale reply", {"prompt_tokens": 1})
    cache.close()
    with ScriptedServer([Reply('{"n": 5}')]) as srv:
        res = LLMClient(make_cfg(srv, tmp_path)).chat(ChatRequest("a", MSGS, "t", parse_json_n))
    assert res.ok and res.value == 5 and not res.cached


def test_run_keeps_order_runs_concurrently_and_calls_on_result_in_caller_thread():
    lock = threading.Lock()
    state = {"active": 0, "peak": 0}

    def responder(body, i):
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.15)
        with lock:
            state["active"] -= 1
        return Reply(json.dumps({"n": int(body["messages"][0]["content"])}))

    seen = []
    main_thread = threading.get_ident()
    reqs = [ChatRequest(str(i), [{"role": "user", "content": str(i)}], "t", parse_json_n) for i in range(8)]
    with ScriptedServer(responder=responder) as srv:
        res = LLMClient(make_cfg(srv, concurrency=4)).run(reqs, on_result=lambda r: seen.append((r.key, threading.get_ident())))
    assert [r.value for r in res] == list(range(8))
    assert sorted(k for k, _ in seen) == sorted(str(i) for i in range(8))
    assert {t for _, t in seen} == {main_thread}
    assert state["peak"] >= 2  # requests really overlapped


def test_on_result_exception_stops_the_batch():
    reqs = [ChatRequest(str(i), MSGS, "t") for i in range(3)]
    with ScriptedServer(responder=lambda b, i: Reply("x")) as srv:
        client = LLMClient(make_cfg(srv, concurrency=1))

        def boom(r):
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError, match="disk full"):
            client.run(reqs, on_result=boom)
    assert len(srv.requests) == 1


def test_an_interrupt_leaves_no_request_running_in_the_client():
    reqs = [ChatRequest(str(i), [{"role": "user", "content": str(i)}], "t") for i in range(20)]
    with ScriptedServer(responder=lambda b, i: Reply("x", delay_s=0.1)) as srv:
        client = LLMClient(make_cfg(srv, concurrency=4))

        def interrupt(r):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.run(reqs, on_result=interrupt)
        sent = len(srv.requests)
        client.close()  # runs the loop once more: nothing of the interrupted batch may resume
        time.sleep(0.3)
    assert sent <= 4 and len(srv.requests) == sent


def test_repeated_samples_have_distinct_cache_keys_and_seeds(tmp_path):
    with ScriptedServer(responder=lambda b, i: Reply(json.dumps({"n": i}))) as srv:
        client = LLMClient(make_cfg(srv, tmp_path, seed=3))
        reqs = [ChatRequest(f"a#{s}", MSGS, "t", parse_json_n, temperature=0.7, sample=s) for s in range(3)]
        res = client.run(reqs)
        again = client.run(reqs)
    assert sorted(r.value for r in res) == [0, 1, 2] and all(r.cached for r in again)
    seeds = {r["body"]["seed"] for r in srv.requests}
    assert len(seeds) == 3 and all(r["body"]["temperature"] == 0.7 for r in srv.requests)


def test_azure_url_key_header_and_api_version(monkeypatch):
    monkeypatch.setenv("AZ_KEY", "az-secret")
    with ScriptedServer([Reply("hi")]) as srv:
        cfg = LLMConfig(backend="azure", base_url=srv.url, deployment="gpt4t", api_version="2024-02-01",
                        api_key_env="AZ_KEY", cache_path=None)
        res = LLMClient(cfg).chat(ChatRequest("a", MSGS))
    assert res.ok and res.value == "hi"
    req = srv.requests[0]
    assert req["path"] == "/openai/deployments/gpt4t/chat/completions"
    assert req["query"] == {"api-version": ["2024-02-01"]}
    assert req["headers"]["api-key"] == "az-secret" and "authorization" not in req["headers"]
    assert req["body"]["model"] == "gpt4t"  # openai's Azure client sends the deployment as the model


def test_openai_backend_needs_its_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(Exception, match="NO_SUCH_KEY_VAR"):
        LLMClient(LLMConfig(backend="openai", api_key_env="NO_SUCH_KEY_VAR", cache_path=None))


def test_config_collects_all_problems():
    with pytest.raises(ValueError) as err:
        LLMConfig(backend="azure", temperature=3.0, concurrency=0, requests_per_minute=-1)
    msg = str(err.value)
    for part in ("temperature=3.0", "concurrency=0", "requests_per_minute=-1", "needs base_url", "needs deployment"):
        assert part in msg
    cfg = LLMConfig(backend="openai_compatible")  # constructible as a default; the client says what is missing
    with pytest.raises(Exception, match="needs base_url"):
        LLMClient(cfg)


def test_bad_messages_are_rejected_naming_the_request():
    with pytest.raises(ValueError, match="'r9'.*messages\\[0\\]"):
        ChatRequest("r9", [{"role": "robot", "content": "x"}])


def test_requests_per_minute_paces_the_batch():
    # 120 per minute = a burst of 2, then one every 0.5 s: 4 requests need >= ~1 s
    reqs = [ChatRequest(str(i), [{"role": "user", "content": str(i)}]) for i in range(4)]
    with ScriptedServer(responder=lambda b, i: Reply("ok")) as srv:
        client = LLMClient(make_cfg(srv, requests_per_minute=120.0, concurrency=4))
        t0 = time.monotonic()
        client.run(reqs)
        elapsed = time.monotonic() - t0
    assert len(srv.requests) == 4 and elapsed >= 0.8  # the limiter made the batch wait (a bound from below only)


def test_tokens_per_minute_admits_a_request_larger_than_the_bucket():
    big = [{"role": "user", "content": "x" * 4000}]  # ~1,000 tokens + max_tokens; bucket holds 10 s of 600/min
    with ScriptedServer(responder=lambda b, i: Reply("ok")) as srv:
        res = LLMClient(make_cfg(srv, tokens_per_minute=600.0, max_tokens=16)).chat(ChatRequest("a", big))
    assert res.ok and len(srv.requests) == 1


def test_parse_retry_after_formats():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(future) <= 31


def test_corrupt_cache_file_is_named(tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="cache.sqlite.*not a usable SQLite file"):
        LLMClient(LLMConfig(backend="openai_compatible", base_url="http://127.0.0.1:9/v1", cache_path=str(bad)))
