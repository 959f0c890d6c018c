"""Backends that turn chat messages into one reply: OpenAI-style HTTP APIs and in-process transformers.

A backend's :meth:`complete` returns ``(reply_text, usage)`` or raises :class:`TransientError`
(worth retrying: connection faults, timeouts, 429, 5xx; carries the server's Retry-After) or
:class:`PermanentError` (a request that will never succeed as is: bad key, unknown model, 4xx).
Retrying, caching and rate limiting live in :mod:`llavarad.llm.client`, not here.
"""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from llavarad.llm.config import OPENAI_BASE_URL, LLMConfig

logger = logging.getLogger(__name__)

__all__ = ["Backend", "HttpBackend", "PermanentError", "TransformersBackend", "TransientError", "make_backend", "parse_retry_after"]

Usage = dict[str, int]


class TransientError(RuntimeError):
    """A failure worth retrying; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(RuntimeError):
    """A failure that retrying will not fix (e.g. 401 bad key, 404 unknown model)."""


class Backend(Protocol):
    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int | None) -> tuple[str, Usage]:
        """One chat completion: the assistant's text and ``{"prompt_tokens", "completion_tokens"}``."""
        ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpBackend:
    """OpenAI chat-completions protocol over httpx, for the openai, azure and openai_compatible backends.

    Construction raises ``ValueError`` for settings that cannot work (no base_url, no API key)."""

    def __init__(self, cfg: LLMConfig):
        import httpx

        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        headers = {"Content-Type": "application/json"}
        if cfg.backend == "openai_compatible" and not cfg.base_url:
            raise ValueError(
                "backend='openai_compatible' needs base_url, e.g. http://127.0.0.1:8000/v1 (vLLM), "
                "http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8080/v1 (llama.cpp server)"
            )
        if cfg.backend == "openai" and not key:
            raise ValueError(
                f"backend='openai' needs an API key in the environment variable {cfg.api_key_env!r} (set it, or set api_key_env)"
            )
        if cfg.backend == "azure":
            if not key:
                raise ValueError(f"backend='azure' needs an API key in the environment variable {cfg.api_key_env!r}")
            headers["api-key"] = key
            base = str(cfg.base_url).rstrip("/")
            self.url = f"{base}/openai/deployments/{cfg.deployment}/chat/completions"
            self.params: dict[str, str] = {"api-version": cfg.api_version}
        else:
            if key:
                headers["Authorization"] = f"Bearer {key}"
            base = (cfg.base_url or OPENAI_BASE_URL).rstrip("/")
            self.url = f"{base}/chat/completions"
            self.params = {}
        timeout = httpx.Timeout(cfg.timeout_s)
        limits = httpx.Limits(max_connections=max(cfg.concurrency, 1) + 2, max_keepalive_connections=max(cfg.concurrency, 1))
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._httpx = httpx

    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int | None) -> tuple[str, Usage]:
        httpx = self._httpx
        body: dict[str, Any] = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        if self.cfg.backend != "azure":
            body["model"] = self.cfg.model
        if seed is not None:
            body["seed"] = seed
        try:
            resp = self._client.post(self.url, params=self.params, json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(f"timed out after {self.cfg.timeout_s} s ({type(exc).__name__}) calling {self.url}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"connection fault calling {self.url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 429 or resp.status_code == 408 or resp.status_code >= 500:
            raise TransientError(
                f"HTTP {resp.status_code} from {self.url}: {_short(resp.text)}", parse_retry_after(resp.headers.get("retry-after"))
            )
        if resp.status_code >= 400:
            raise PermanentError(f"HTTP {resp.status_code} from {self.url}: {_short(resp.text)} (check model name, key and URL)")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # a 200 whose body is not a chat completion: treat as a fault of the server, retry
            raise TransientError(f"malformed response body from {self.url} ({type(exc).__name__}: {exc})") from exc
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise TransientError(f"malformed response from {self.url}: message content is {type(text).__name__}, not text")
        if choice.get("finish_reason") == "length":
            logger.warning("reply hit max_tokens=%d (finish_reason=length); it may be cut off", max_tokens)
        usage = data.get("usage") or {}
        return text, {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }

    def close(self) -> None:
        self._client.close()


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class TransformersBackend:
    """An in-process causal LM (any HF folder, or a GGUF file that transformers dequantizes).

    Generation is serialized by a lock (one model, one forward at a time); the model loads on the
    first request. Greedy decoding at temperature 0; sampling with a per-request seed otherwise.
    """

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
            raise PermanentError(f"model_path {path} does not exist (give a local model folder; nothing is downloaded)")
        kwargs: dict[str, Any] = {}
        if self.cfg.gguf_file:
            if not (path / self.cfg.gguf_file).is_file():
                raise PermanentError(f"gguf_file {self.cfg.gguf_file!r} not found in {path}")
            kwargs["gguf_file"] = self.cfg.gguf_file
        dtype = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.cfg.dtype]
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs).to(self.cfg.device)
        except (OSError, ValueError) as exc:
            raise PermanentError(f"cannot load a causal LM from {path} ({type(exc).__name__}: {exc})") from exc
        self._model.eval()
        logger.info("loaded in-process LLM from %s on %s", path, self.cfg.device)

    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int, seed: int | None) -> tuple[str, Usage]:
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
                gen.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen)  # (1, prompt_len + new)
            new = out[0, ids.shape[1]:]
            reply = tok.decode(new, skip_special_tokens=True)
        return reply, {"prompt_tokens": int(ids.shape[1]), "completion_tokens": int(new.shape[0])}

    def close(self) -> None:
        self._model = None


def make_backend(cfg: LLMConfig) -> Backend:
    """The backend ``cfg.backend`` names."""
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    return HttpBackend(cfg)
