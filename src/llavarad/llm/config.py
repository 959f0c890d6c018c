"""Settings of the shared LLM client: which backend, which model, limits, retries, cache, prices."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["OPENAI_BASE_URL", "Backend", "LLMConfig"]

Backend = Literal["openai", "azure", "openai_compatible", "transformers"]
Dtype = Literal["auto", "float32", "float16", "bfloat16"]

#: Used when ``backend="openai"`` and no ``base_url`` is given.
OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass
class LLMConfig:
    """Everything :class:`llavarad.llm.LLMClient` needs; validated on construction.

    HTTP backends (through the official ``openai`` package):
      - ``openai``: ``openai.AsyncOpenAI`` on ``base_url`` (default the OpenAI API) with the key
        from ``$<api_key_env>``.
      - ``azure``: ``openai.AsyncAzureOpenAI`` on the resource endpoint ``base_url`` with
        ``deployment`` and ``api_version``.
      - ``openai_compatible``: like ``openai`` (vLLM, Ollama, llama.cpp server ...); the key is
        optional.
    ``timeout_s`` bounds each whole HTTP request (connect, headers and body together), not only
    each read. A server's Retry-After is honoured up to ``retry_after_max_s`` and the wait is logged.
    In-process backend:
      - ``transformers``: ``AutoModelForCausalLM.from_pretrained(model_path, gguf_file=...)``,
        its chat template, greedy decoding at temperature 0.

    The API key is read from the environment variable named by ``api_key_env`` and never stored
    in the config, logged or cached. Prices are per 1,000 tokens (any currency; reported as is).
    """

    backend: Backend = "openai_compatible"
    model: str = "gpt-4o"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 1024
    timeout_s: float = 60.0
    max_retries: int = 5
    max_parse_retries: int = 2
    parse_retry_feedback: bool = True
    concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 60.0
    cache_path: str | None = "llm_cache.sqlite"
    seed: int | None = None
    # azure
    api_version: str = "2024-06-01"
    deployment: str | None = None
    # transformers
    model_path: str | None = None
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: Dtype = "float32"
    # cost
    price_prompt_per_1k: float = 0.0
    price_completion_per_1k: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{f.name}={value} must be a finite number")
        backends = ("openai", "azure", "openai_compatible", "transformers")
        if self.backend not in backends:
            problems.append(f"backend={self.backend!r} is not one of {', '.join(backends)}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            problems.append(f"dtype={self.dtype!r} is not one of auto, float32, float16, bfloat16")
        if not (0.0 <= self.temperature <= 2.0):
            problems.append(f"temperature={self.temperature} must be within [0, 2] (0 = deterministic judging)")
        for name in ("max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("max_retries", "max_parse_retries"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            problems.append(f"top_p={self.top_p} must be within (0, 1], or null to leave it to the server")
        for name in ("timeout_s", "backoff_max_s", "retry_after_max_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        if self.backoff_base_s < 0:
            problems.append(f"backoff_base_s={self.backoff_base_s} must be >= 0")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name}={value} must be > 0, or null for no limit")
        for name in ("price_prompt_per_1k", "price_completion_per_1k"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.backend == "azure":
            if not self.base_url:
                problems.append("backend='azure' needs base_url (the resource endpoint, e.g. https://NAME.openai.azure.com)")
            if not self.deployment:
                problems.append("backend='azure' needs deployment (the deployment name of the model)")
        if self.backend == "transformers" and not self.model_path:
            problems.append("backend='transformers' needs model_path (a local model folder or a folder holding gguf_file)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def model_id(self) -> str:
        """The name the cache keys on: the model, plus the GGUF file for local GGUF models."""
        if self.backend == "transformers":
            return f"{self.model_path}::{self.gguf_file}" if self.gguf_file else str(self.model_path)
        if self.backend == "azure":
            return f"azure:{self.deployment}"
        return self.model
