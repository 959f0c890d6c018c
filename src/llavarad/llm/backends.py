"""Backends that turn chat messages into one reply: the official ``openai`` clients and an
in-process transformers model.

A backend's ``complete`` coroutine returns ``(reply_text, usage)`` or raises
:class:`TransientError` (worth retrying: connection faults, timeouts, 408/409/429, 5xx, a
malformed body; carries the server's Retry-After), :class:`PermanentError` (this request will
never succeed as is: 400, 404, 422 ...) or :class:`FatalError` (no request of the run can
succeed: 401 bad key, 403 no access, a missing model folder). Retrying, time limits, caching and
rate limiting live in :mod:`llavarad.llm.client`, not here: the ``openai`` clients are built with
``max_retries=0`` so that there is one retry policy (capped, announced Retry-After waits; see the
client).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from llavarad.errors import LlavaradError
from llavarad.llm.config import OPENAI_BASE_URL, LLMConfig

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_USAGE_TOKENS",
    "Backend",
    "FatalError",
    "OpenAIBackend",
    "PermanentError",
    "TransformersBackend",
    "TransientError",
    "make_backend",
    "parse_retry_after",
    "validate_usage",
]

Usage = dict[str, int]

#: Largest token count a reply's usage may claim (far above any context window; keeps costs and
#: the SQLite cache's 64-bit integers sane when a server sends garbage).
MAX_USAGE_TOKENS = 10**9


class TransientError(RuntimeError):
    """A failure worth retrying; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(LlavaradError, RuntimeError):
    """A failure that retrying this request will not fix (e.g. 404 unknown model, 400 bad request)."""


class FatalError(PermanentError):
    """A failure every request of the run would hit (401 bad key, 403 no access, no model folder):
    :meth:`llavarad.llm.LLMClient.run` stops the whole batch and raises it once."""


class Backend(Protocol):
    #: whether :mod:`llavarad.llm.client` may cancel a call at ``timeout_s`` (an HTTP request can
    #: be abandoned; a forward pass in a worker thread cannot)
    cancellable: bool

    async def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
                       top_p: float | None, seed: int | None) -> tuple[str, Usage]:
        """One chat completion: the assistant's text and ``{"prompt_tokens", "completion_tokens"}``."""
        ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if
    absent or unreadable. Never negative; may be ``inf`` for absurd values (callers cap it)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when is None:
        return None
    try:
        return max(0.0, when.timestamp() - time.time())
    except (OverflowError, OSError, ValueError):
        return None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """``retry-after-ms`` (OpenAI's, milliseconds) or ``Retry-After`` from response headers."""
    if headers is None:
        return None
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    return parse_retry_after(headers.get("retry-after"))


def validate_usage(usage: Any) -> Usage:
    """``{"prompt_tokens", "completion_tokens"}`` from a reply's ``usage`` (an object or a dict;
    None or a missing field counts 0); raise :class:`TransientError` naming the field when a count
    is not an integer in ``[0, MAX_USAGE_TOKENS]`` (nested objects, strings, negatives, 1e30)."""
    out: Usage = {}
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if value is None:
            out[name] = 0
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_USAGE_TOKENS:
            shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
            raise TransientError(f"malformed response: usage.{name} is {shown[:40]}, not an integer in "
                                 f"[0, {MAX_USAGE_TOKENS}]")
        out[name] = value
    return out


class OpenAIBackend:
    """The chat-completions protocol through the official ``openai`` package: ``AsyncOpenAI``
    for the openai and openai_compatible backends, ``AsyncAzureOpenAI`` for azure.

    Construction raises ``ValueError`` for settings that cannot work (no base_url, no API key).
    The client's own per-read timeout is ``timeout_s``; the whole request is bounded by the
    caller (a server trickling bytes defeats a per-read timeout)."""

    cancellable = True

    def __init__(self, cfg: LLMConfig):
        import openai

        self.cfg = cfg
        self._openai = openai
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.backend == "openai_compatible" and not cfg.base_url:
            raise ValueError(
                "backend='openai_compatible' needs base_url, e.g. http://127.0.0.1:8000/v1 (vLLM), "
                "http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8080/v1 (llama.cpp server)"
            )
        if cfg.backend in ("openai", "azure") and not key:
            raise ValueError(f"backend={cfg.backend!r} needs an API key in the environment variable "
                             f"{cfg.api_key_env!r} (set it, or set api_key_env)")
        common: dict[str, Any] = {"timeout": cfg.timeout_s, "max_retries": 0}
        if cfg.backend == "azure":
            self._client = openai.AsyncAzureOpenAI(azure_endpoint=str(cfg.base_url).rstrip("/"), azure_deployment=cfg.deployment,
                                                   api_version=cfg.api_version, api_key=key, **common)
            self.model = str(cfg.deployment)
        else:
            # a keyless local server still needs a non-empty string for the client
            self._client = openai.AsyncOpenAI(base_url=(cfg.base_url or OPENAI_BASE_URL).rstrip("/"), api_key=key or "none",
                                              **common)
            self.model = cfg.model
        self.where = str(self._client.base_url).rstrip("/")

    async def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
                       top_p: float | None, seed: int | None) -> tuple[str, Usage]:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        if top_p is not None:
            kwargs["top_p"] = top_p
        if seed is not None:
            kwargs["seed"] = seed
        try:
            resp = await self._client.chat.completions.create(**kwargs)
        except openai.APITimeoutError as exc:
            raise TransientError(f"timed out after {self.cfg.timeout_s} s waiting for {self.where}") from exc
        except openai.APIConnectionError as exc:
            raise TransientError(f"connection fault calling {self.where}: {exc.__cause__ or exc}") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise FatalError(f"HTTP {exc.status_code} from {self.where}: {_short(exc.message)}; the key in "
                             f"${self.cfg.api_key_env} is wrong or lacks access to {self.model!r}, so no request can "
                             "succeed (fix the key, api_key_env or the model/deployment name)") from exc
        except openai.APIStatusError as exc:
            message = f"HTTP {exc.status_code} from {self.where}: {_short(exc.message)}"
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                raise TransientError(message, _retry_after(exc.response.headers)) from exc
            raise PermanentError(f"{message} (check the model name and URL)") from exc
        except (ValueError, RecursionError, LookupError, AttributeError, TypeError) as exc:
            # a 200 whose body is not a chat completion (HTML, nested garbage): a fault of the server
            raise TransientError(f"malformed response body from {self.where} ({type(exc).__name__})") from exc
        return _reply_of(resp, self.where, max_tokens)

    async def aclose(self) -> None:
        await self._client.close()


def _reply_of(resp: Any, where: str, max_tokens: int) -> tuple[str, Usage]:
    """Text and validated usage of a chat completion (built by openai without validation)."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise TransientError(f"malformed response from {where}: no choices")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TransientError(f"malformed response from {where}: message content is {type(text).__name__}, not text")
    if getattr(choices[0], "finish_reason", None) == "length":
        logger.warning("reply hit max_tokens=%d (finish_reason=length); it may be cut off", max_tokens)
    return text, validate_usage(getattr(resp, "usage", None))


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


class TransformersBackend:
    """An in-process causal LM (any HF folder, or a GGUF file that transformers dequantizes).

    Generation runs in a worker thread, serialized by a lock (one model, one forward at a time);
    the model loads on the first request. Greedy decoding at temperature 0; sampling with a
    per-request seed otherwise. A forward pass cannot be abandoned midway, so ``timeout_s`` does not
    apply here.
    """

    cancellable = False

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(str(self.cfg.model_path))
        if not path.exists():
            raise FatalError(f"model_path {path} does not exist (give a local model folder; nothing is downloaded)")
        kwargs: dict[str, Any] = {}
        if self.cfg.gguf_file:
            if not (path / self.cfg.gguf_file).is_file():
                raise FatalError(f"gguf_file {self.cfg.gguf_file!r} not found in {path}")
            kwargs["gguf_file"] = self.cfg.gguf_file
        dtype = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.cfg.dtype]
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs).to(self.cfg.device)
        except (OSError, ValueError) as exc:
            raise FatalError(f"cannot load a causal LM from {path} ({type(exc).__name__}: {exc})") from exc
        self._model.eval()
        logger.info("loaded in-process LLM from %s on %s", path, self.cfg.device)

    async def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
                       top_p: float | None, seed: int | None) -> tuple[str, Usage]:
        return await asyncio.to_thread(self._generate, messages, temperature, max_tokens, top_p, seed)

    def _generate(self, messages: list[dict[str, str]], temperature: float, max_tokens: int, top_p: float | None,
                  seed: int | None) -> tuple[str, Usage]:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            tok, model = self._tok, self._model
            if getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            else:
                text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
                ids = tok(text, return_tensors="pt")["input_ids"]
            ids = ids.to(self.cfg.device)  # (1, prompt_len)
            gen: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id or tok.eos_token_id}
            if temperature > 0:
                torch.manual_seed(seed if seed is not None else 0)
                gen.update(do_sample=True, temperature=temperature, top_p=1.0 if top_p is None else top_p, top_k=0)
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen)  # (1, prompt_len + new)
            new = out[0, ids.shape[1]:]
            reply = tok.decode(new, skip_special_tokens=True)
        return reply, {"prompt_tokens": int(ids.shape[1]), "completion_tokens": int(new.shape[0])}

    async def aclose(self) -> None:
        self._model = None


def make_backend(cfg: LLMConfig) -> Backend:
    """The backend ``cfg.backend`` names."""
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    return OpenAIBackend(cfg)
