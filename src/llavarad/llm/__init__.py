"""One LLM client for every llavarad step that asks a language model (CheXprompt, structuring,
translation): OpenAI / Azure / OpenAI-compatible HTTP servers and in-process transformers models,
with concurrency, rate limits, retries, a SQLite reply cache and token/cost accounting.

:mod:`llavarad.llm.testing` has :class:`~llavarad.llm.testing.ScriptedServer`, a local scripted
OpenAI-compatible server for protocol and fault tests.
"""

from llavarad.llm.backends import PermanentError, TransientError
from llavarad.llm.cache import ReplyCache, request_hash
from llavarad.llm.client import ChatRequest, ChatResult, LLMClient, LLMStats
from llavarad.llm.config import LLMConfig

__all__ = [
    "ChatRequest",
    "ChatResult",
    "LLMClient",
    "LLMConfig",
    "LLMStats",
    "PermanentError",
    "ReplyCache",
    "TransientError",
    "request_hash",
]
