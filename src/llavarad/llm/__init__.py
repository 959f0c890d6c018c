"""One LLM client for every llavarad step that asks a language model (CheXprompt, structuring,
translation): OpenAI / Azure / OpenAI-compatible servers through the official ``openai`` package and
in-process transformers models, with concurrency, rate limits (``aiolimiter``), retries, a SQLite
reply cache and token/cost accounting.

The scripted OpenAI-compatible server used to test it is a test double and lives in
``tests/llm_fake_server.py``, not in the package.
"""

from llavarad.llm.backends import FatalError, PermanentError, TransientError
from llavarad.llm.cache import ReplyCache, request_hash
from llavarad.llm.client import ChatRequest, ChatResult, LLMClient, LLMStats
from llavarad.llm.config import LLMConfig

__all__ = [
    "ChatRequest",
    "ChatResult",
    "FatalError",
    "LLMClient",
    "LLMConfig",
    "LLMStats",
    "PermanentError",
    "ReplyCache",
    "TransientError",
    "request_hash",
]
