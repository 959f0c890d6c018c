"""The one LLM client of llavarad: concurrent, rate-limited, retrying, cached, cost-counting.

Used by CheXprompt (judging reports) and by the data steps (structuring, translation)::

    client = LLMClient(LLMConfig(backend="openai_compatible", base_url="http://127.0.0.1:8000/v1"))
    results = client.run([ChatRequest(key="r1", messages=[...], prompt_version="v1", parse=fn)],
                         on_result=callback)

Semantics:
- a reply is handed to ``parse``; if it raises ``ValueError`` the request is sent again (with the
  failed reply and the parser's complaint appended when ``parse_retry_feedback``), up to
  ``max_parse_retries`` times; then the result is ``ok=False`` with the error. An unusable reply is
  never turned into a default value.
- network faults, timeouts, 429 and 5xx are retried up to ``max_retries`` times with exponential
  backoff (jittered), waiting at least the server's ``Retry-After``.
- only replies that passed ``parse`` go to the SQLite cache; a cache hit costs nothing.
- ``on_result`` runs in the calling thread as each result completes, so callers can write each
  result at once (e.g. with :class:`llavarad.io.manifest.JsonlWriter`) and resume after a kill.
Messages and replies are never logged; only keys, counts and error kinds are.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from llavarad.llm.backends import Backend, PermanentError, TransientError, make_backend
from llavarad.llm.cache import ReplyCache, request_hash
from llavarad.llm.config import LLMConfig
from llavarad.llm.ratelimit import TokenBucket, estimate_tokens

logger = logging.getLogger(__name__)

__all__ = ["ChatRequest", "ChatResult", "LLMClient", "LLMStats"]


def _identity(text: str) -> str:
    return text


@dataclass
class ChatRequest:
    """One chat to run. ``parse(reply_text)`` returns the value or raises ``ValueError``.

    ``prompt_version`` names the prompt's wording (bump it when the prompt changes, so old cached
    replies are not reused). ``temperature`` overrides the config's; ``sample`` distinguishes
    repeated samples of the same messages at temperature > 0 (separate cache entries and seeds).
    """

    key: str
    messages: list[dict[str, str]]
    prompt_version: str = "unversioned"
    parse: Callable[[str], Any] | None = None
    temperature: float | None = None
    sample: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValueError(f"request {self.key!r}: messages must be a non-empty list of {{role, content}} dicts")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ValueError(f"request {self.key!r}: messages[{i}] must be {{'role': system|user|assistant, 'content': str}}")


@dataclass
class ChatResult:
    """Outcome of one request. ``raw_replies`` holds every reply received, in order (a cache hit
    gives the one cached reply); ``error`` is None when ``ok``."""

    key: str
    ok: bool
    value: Any = None
    raw_replies: list[str] = field(default_factory=list)
    error: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cached: bool = False
    attempts: int = 0


@dataclass
class LLMStats:
    """Running totals over the client's lifetime (thread-safe updates through :meth:`LLMClient`)."""

    requests_sent: int = 0
    cache_hits: int = 0
    retries_transient: int = 0
    retries_parse: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost: float = 0.0
    failures: int = 0
    succeeded: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class LLMClient:
    """Runs :class:`ChatRequest` batches against the configured backend (see module docstring)."""

    def __init__(self, cfg: LLMConfig, backend: Backend | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.backend = backend if backend is not None else make_backend(cfg)
        self.cache = ReplyCache(cfg.cache_path) if cfg.cache_path else None
        self.stats = LLMStats()
        self._stats_lock = threading.Lock()
        self._sleep = sleep
        self._rpm = TokenBucket(cfg.requests_per_minute) if cfg.requests_per_minute else None
        # a token bucket holds a few seconds' worth so that one ordinary request always fits
        self._tpm = (
            TokenBucket(cfg.tokens_per_minute, capacity=max(cfg.tokens_per_minute / 60.0 * 10, 1.0))
            if cfg.tokens_per_minute
            else None
        )

    # -- public -------------------------------------------------------------------------------
    def run(self, requests: Iterable[ChatRequest], on_result: Callable[[ChatResult], None] | None = None) -> list[ChatResult]:
        """Run all requests with up to ``cfg.concurrency`` in flight; return results in request order.

        ``on_result`` is called in this thread as each result completes (completion order). An
        exception in ``on_result`` stops the batch (pending requests are cancelled) and propagates.
        """
        reqs = list(requests)
        results: list[ChatResult | None] = [None] * len(reqs)
        if not reqs:
            return []
        workers = min(self.cfg.concurrency, len(reqs))
        if workers == 1:
            for i, req in enumerate(reqs):
                results[i] = self._run_one(req)
                if on_result is not None:
                    on_result(results[i])
            return [r for r in results if r is not None]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
            pending: dict[Future[ChatResult], int] = {}
            it = iter(enumerate(reqs))
            # keep a bounded window of submitted work so a huge batch does not queue all at once
            def top_up() -> None:
                while len(pending) < workers * 2:
                    try:
                        i, req = next(it)
                    except StopIteration:
                        return
                    pending[pool.submit(self._run_one, req)] = i

            top_up()
            try:
                while pending:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        results[i] = fut.result()
                        if on_result is not None:
                            on_result(results[i])
                    top_up()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        return [r for r in results if r is not None]

    def chat(self, request: ChatRequest) -> ChatResult:
        """Run a single request (same semantics as :meth:`run`)."""
        return self._run_one(request)

    def close(self) -> None:
        """Release the HTTP connections / in-process model and the cache file."""
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _bump(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _cost(self, usage: dict[str, int]) -> float:
        return (
            usage.get("prompt_tokens", 0) / 1000.0 * self.cfg.price_prompt_per_1k
            + usage.get("completion_tokens", 0) / 1000.0 * self.cfg.price_completion_per_1k
        )

    def _run_one(self, req: ChatRequest) -> ChatResult:
        parse = req.parse or _identity
        temperature = self.cfg.temperature if req.temperature is None else float(req.temperature)
        model_id = self.cfg.model_id
        digest = request_hash(req.messages, temperature, req.sample)
        if self.cache is not None:
            hit = self.cache.get(model_id, req.prompt_version, digest)
            if hit is not None:
                try:
                    value = parse(hit.reply)
                except ValueError:
                    # the parser changed since this was cached; drop the entry and ask again
                    logger.info("request %s: cached reply no longer parses; asking the model again", req.key)
                    self.cache.delete(model_id, req.prompt_version, digest)
                else:
                    self._bump(cache_hits=1, succeeded=1)
                    usage = {"prompt_tokens": hit.prompt_tokens, "completion_tokens": hit.completion_tokens}
                    return ChatResult(req.key, True, value, [hit.reply], None, usage, cached=True, attempts=0)

        result = ChatResult(req.key, False)
        messages = list(req.messages)
        seed = self.cfg.seed
        if temperature > 0:
            seed = (self.cfg.seed or 0) * 1_000_003 + req.sample
        for parse_try in range(self.cfg.max_parse_retries + 1):
            try:
                reply, usage = self._send(req.key, messages, temperature, seed, result)
            except (TransientError, PermanentError) as exc:
                result.error = str(exc)
                break
            result.raw_replies.append(reply)
            for k in ("prompt_tokens", "completion_tokens"):
                result.usage[k] += usage[k]
            try:
                value = parse(reply)
            except ValueError as exc:
                result.error = f"unparsable reply (try {parse_try + 1} of {self.cfg.max_parse_retries + 1}): {exc}"
                logger.info("request %s: %s", req.key, result.error)
                if parse_try < self.cfg.max_parse_retries:
                    self._bump(retries_parse=1)
                    if self.cfg.parse_retry_feedback:
                        messages = list(req.messages) + [
                            {"role": "assistant", "content": reply},
                            {"role": "user", "content": f"That reply could not be read: {exc}. Answer again, exactly in the required format."},
                        ]
                    if seed is not None and temperature > 0:
                        seed += 7919
                continue
            result.ok, result.value, result.error = True, value, None
            if self.cache is not None:
                self.cache.put(model_id, req.prompt_version, digest, reply, usage)
            break
        self._bump(succeeded=1) if result.ok else self._bump(failures=1)
        if not result.ok:
            logger.warning("request %s failed after %d attempt(s): %s", req.key, result.attempts, _kind(result.error))
        return result

    def _send(self, key: str, messages: list[dict[str, str]], temperature: float, seed: int | None,
              result: ChatResult) -> tuple[str, dict[str, int]]:
        """One logical call: rate-limit, then retry transient faults with backoff."""
        estimate = estimate_tokens(messages, self.cfg.max_tokens)
        for attempt in range(self.cfg.max_retries + 1):
            if self._rpm is not None:
                self._rpm.acquire(1)
            if self._tpm is not None:
                self._tpm.acquire(estimate)
            result.attempts += 1
            self._bump(requests_sent=1)
            try:
                reply, usage = self.backend.complete(messages, temperature=temperature, max_tokens=self.cfg.max_tokens, seed=seed)
            except TransientError as exc:
                if attempt >= self.cfg.max_retries:
                    raise TransientError(f"gave up after {attempt + 1} attempt(s): {exc}") from exc
                delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2**attempt)) * random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    # honour the server's wait, but never sleep unboundedly on a bogus header
                    delay = max(delay, min(exc.retry_after, max(self.cfg.backoff_max_s, 300.0)))
                logger.info("request %s: %s; retry %d in %.2f s", key, _kind(str(exc)), attempt + 1, delay)
                self._bump(retries_transient=1)
                self._sleep(delay)
                continue
            if self._tpm is not None:
                used = usage["prompt_tokens"] + usage["completion_tokens"]
                if used:
                    self._tpm.adjust(estimate - used)
            self._bump(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                       estimated_cost=self._cost(usage))
            return reply, usage
        raise AssertionError("unreachable")  # the loop either returns or raises


def _kind(error: str | None) -> str:
    """First clause of an error, for logs (errors never contain report text, but keep logs short)."""
    return (error or "").split(":")[0][:120]
