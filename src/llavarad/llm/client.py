"""The one LLM client of llavarad: concurrent, rate-limited, retrying, cached, cost-counting.

Used by CheXprompt (judging reports) and by the data steps (structuring, translation)::

    client = LLMClient(LLMConfig(backend="openai_compatible", base_url="http://127.0.0.1:8000/v1"))
    results = client.run([ChatRequest(key="r1", messages=[...], prompt_version="v1", parse=fn)],
                         on_result=callback)

Built on the official ``openai`` package (``AsyncOpenAI`` / ``AsyncAzureOpenAI``, see
:mod:`llavarad.llm.backends`) and ``aiolimiter`` for the request- and token-per-minute limits; the
requests of a batch run as asyncio tasks on an event loop that the client owns, so
``cfg.concurrency`` of them are in flight at once from one thread.

Semantics:
- a reply is handed to ``parse``; if it raises ``ValueError`` the request is sent again (with the
  failed reply and the parser's complaint appended when ``parse_retry_feedback``), up to
  ``max_parse_retries`` times; then the result is ``ok=False`` with the error. An unusable reply is
  never turned into a default value.
- network faults, timeouts, 408/409/429, 5xx and malformed bodies are retried up to
  ``max_retries`` times with jittered exponential backoff, waiting at least the server's
  Retry-After, capped at ``retry_after_max_s``; such waits are logged (a warning) with their length.
- ``timeout_s`` bounds each whole HTTP request, so a server that trickles bytes cannot hold a
  request open past it.
- 401/403 (and a missing in-process model) raise :class:`FatalError` out of :meth:`LLMClient.run`
  once, after one request: the first request of a client goes alone, so a bad key costs one call,
  not one per report.
- only replies that passed ``parse`` go to the SQLite cache; a cache hit costs nothing.
- ``on_result`` runs in the calling thread as each result completes, so callers can write each
  result at once (e.g. with :class:`llavarad.io.manifest.JsonlWriter`) and resume after a kill.
Messages and replies are never logged; only keys, counts and error kinds are.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llavarad.llm.backends import (
    Backend,
    FatalError,
    PermanentError,
    TransientError,
    make_backend,
)
from llavarad.llm.cache import ReplyCache, request_hash
from llavarad.llm.config import LLMConfig

logger = logging.getLogger(__name__)

__all__ = ["ChatRequest", "ChatResult", "LLMClient", "LLMStats", "estimate_tokens"]


def _identity(text: str) -> str:
    return text


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """A conservative pre-request token estimate: ~4 characters per prompt token plus the
    completion budget (what providers count against a tokens-per-minute limit)."""
    chars = sum(len(str(m.get("content", ""))) + 8 for m in messages)
    return chars // 4 + 1 + max_tokens


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
    """Running totals over the client's lifetime."""

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
    """Runs :class:`ChatRequest` batches against the configured backend (see module docstring).

    ``sleep`` (an ``async`` function of seconds) replaces ``asyncio.sleep`` for retry waits, so
    tests can record them. One batch at a time per client; :meth:`run` blocks, so call it from a
    thread without a running event loop (async code: ``await asyncio.to_thread(client.run, ...)``).
    """

    def __init__(self, cfg: LLMConfig, backend: Backend | None = None, *,
                 sleep: Callable[[float], Awaitable[None]] | None = None):
        from aiolimiter import AsyncLimiter

        self.cfg = cfg
        self.backend = backend if backend is not None else make_backend(cfg)
        self.cache = ReplyCache(cfg.cache_path) if cfg.cache_path else None
        self.stats = LLMStats()
        self._sleep = sleep or asyncio.sleep
        self._loop = asyncio.new_event_loop()
        self._batch_lock = threading.Lock()
        # limiters hold one second's (requests) / ten seconds' (tokens) worth, so that bursts stay
        # short while one ordinary request always fits
        self._rpm = None
        if cfg.requests_per_minute:
            burst = max(cfg.requests_per_minute / 60.0, 1.0)
            self._rpm = AsyncLimiter(burst, burst * 60.0 / cfg.requests_per_minute)
        self._tpm = AsyncLimiter(cfg.tokens_per_minute / 6.0, 10.0) if cfg.tokens_per_minute else None
        self._probed = False  # set once one request got an answer that was not 401/403
        self._fatal: FatalError | None = None
        self._probe_lock: asyncio.Lock | None = None

    # -- public -------------------------------------------------------------------------------
    def run(self, requests: Iterable[ChatRequest], on_result: Callable[[ChatResult], None] | None = None) -> list[ChatResult]:
        """Run all requests with up to ``cfg.concurrency`` in flight; return results in request order.

        ``on_result`` is called in this thread as each result completes (completion order). An
        exception in ``on_result`` stops the batch (requests in flight are cancelled) and propagates;
        so does :class:`FatalError` (401/403), raised once for the whole batch.
        """
        reqs = list(requests)
        if not reqs:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("LLMClient.run blocks; call it from a thread without a running event loop "
                               "(in async code: await asyncio.to_thread(client.run, requests))")
        with self._batch_lock:
            if self._loop.is_closed():
                raise RuntimeError("this LLMClient is closed; make a new one")
            try:
                return self._loop.run_until_complete(self._run_batch(reqs, on_result))
            except BaseException:
                # KeyboardInterrupt / SystemExit leave the loop at once with the batch's tasks still
                # pending; cancel them now, or the next use of the loop (even close()) would resume them
                self._cancel_leftovers()
                raise

    def _cancel_leftovers(self) -> None:
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def chat(self, request: ChatRequest) -> ChatResult:
        """Run a single request (same semantics as :meth:`run`)."""
        return self.run([request])[0]

    def close(self) -> None:
        """Release the HTTP connections / in-process model, the event loop and the cache file."""
        with self._batch_lock:
            if not self._loop.is_closed():
                self._loop.run_until_complete(self.backend.aclose())
                self._loop.run_until_complete(self._loop.shutdown_default_executor())  # in-process backend's thread
                self._loop.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batch ----------------------------------------------------------------------------------
    async def _run_batch(self, reqs: list[ChatRequest], on_result: Callable[[ChatResult], None] | None) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(reqs)
        todo: Iterator[tuple[int, ChatRequest]] = iter(enumerate(reqs))

        async def worker() -> None:
            for i, req in todo:  # one shared iterator: each request is taken by exactly one worker
                results[i] = await self._run_one(req)
                if on_result is not None:
                    on_result(results[i])

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.cfg.concurrency, len(reqs)))]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [e for e in (t.exception() for t in done) if e is not None]  # retrieves every one
        if errors:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise errors[0]
        return [r for r in results if r is not None]

    def _cost(self, usage: dict[str, int]) -> float:
        return (
            usage.get("prompt_tokens", 0) / 1000.0 * self.cfg.price_prompt_per_1k
            + usage.get("completion_tokens", 0) / 1000.0 * self.cfg.price_completion_per_1k
        )

    async def _run_one(self, req: ChatRequest) -> ChatResult:
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
                    self.stats.cache_hits += 1
                    self.stats.succeeded += 1
                    usage = {"prompt_tokens": hit.prompt_tokens, "completion_tokens": hit.completion_tokens}
                    return ChatResult(req.key, True, value, [hit.reply], None, usage, cached=True, attempts=0)

        result = ChatResult(req.key, False)
        messages = list(req.messages)
        seed = self.cfg.seed
        if temperature > 0:
            seed = (self.cfg.seed or 0) * 1_000_003 + req.sample
        for parse_try in range(self.cfg.max_parse_retries + 1):
            try:
                reply, usage = await self._send(req.key, messages, temperature, seed, result)
            except FatalError:
                raise
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
                    self.stats.retries_parse += 1
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
        if result.ok:
            self.stats.succeeded += 1
        else:
            self.stats.failures += 1
            logger.warning("request %s failed after %d attempt(s): %s", req.key, result.attempts, _kind(result.error))
        return result

    # -- one logical call -----------------------------------------------------------------------
    async def _send(self, key: str, messages: list[dict[str, str]], temperature: float, seed: int | None,
                    result: ChatResult) -> tuple[str, dict[str, int]]:
        """Rate-limit, then send; retry transient faults with backoff and capped Retry-After."""
        cfg = self.cfg
        estimate = estimate_tokens(messages, cfg.max_tokens)
        for attempt in range(cfg.max_retries + 1):
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                # a request larger than the bucket waits for an empty bucket instead of failing
                await self._tpm.acquire(min(estimate, self._tpm.max_rate))
            result.attempts += 1
            self.stats.requests_sent += 1
            try:
                reply, usage = await self._attempt(messages, temperature, seed)
            except TransientError as exc:
                if attempt >= cfg.max_retries:
                    raise TransientError(f"gave up after {attempt + 1} attempt(s): {exc}") from exc
                delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2**attempt)) * random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, cfg.retry_after_max_s))
                    capped = " (capped by llm.retry_after_max_s)" if exc.retry_after > cfg.retry_after_max_s else ""
                    logger.warning("request %s: %s; the server asks to wait %.4g s (Retry-After): waiting %.1f s%s, "
                                   "retry %d of %d", key, _kind(str(exc)), exc.retry_after, delay, capped,
                                   attempt + 1, cfg.max_retries)
                else:
                    logger.info("request %s: %s; retry %d of %d in %.2f s", key, _kind(str(exc)), attempt + 1,
                                cfg.max_retries, delay)
                self.stats.retries_transient += 1
                await self._sleep(delay)
                continue
            self.stats.prompt_tokens += usage["prompt_tokens"]
            self.stats.completion_tokens += usage["completion_tokens"]
            self.stats.estimated_cost += self._cost(usage)
            return reply, usage
        raise AssertionError("unreachable")  # the loop either returns or raises

    async def _attempt(self, messages: list[dict[str, str]], temperature: float, seed: int | None) -> tuple[str, dict[str, int]]:
        """One request to the backend, bounded as a whole by ``timeout_s``; the client's first
        request goes alone, so that a 401/403 is met once."""
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        probing = False
        if not self._probed:
            await self._probe_lock.acquire()
            probing = not self._probed
            if not probing:
                self._probe_lock.release()
        try:
            if self._fatal is not None:
                raise FatalError(str(self._fatal))  # a fresh one: re-raising one object grows its traceback
            coro = self.backend.complete(messages, temperature=temperature, max_tokens=self.cfg.max_tokens,
                                         top_p=self.cfg.top_p, seed=seed)
            if not getattr(self.backend, "cancellable", False):
                out = await coro
            else:
                try:
                    out = await asyncio.wait_for(coro, timeout=self.cfg.timeout_s)
                except TimeoutError:
                    raise TransientError(f"no complete reply within {self.cfg.timeout_s} s (llm.timeout_s bounds the "
                                         "whole request)") from None
            return out
        except FatalError as exc:
            self._fatal = exc
            raise
        finally:
            if self._fatal is None:
                self._probed = True  # any other outcome (a reply, 404, 5xx, no route) is no auth problem
            if probing:
                self._probe_lock.release()


def _kind(error: str | None) -> str:
    """First clause of an error, for logs (errors never contain report text, but keep logs short)."""
    return (error or "").split(": ")[0][:120]  # ": " so that a URL's "http://" stays whole
