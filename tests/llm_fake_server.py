"""A scripted OpenAI-compatible chat server on 127.0.0.1, for protocol and fault tests in any area.

A test double: it lives with the tests (on ``sys.path`` through ``tests/conftest.py``), never in the
package. Benchmarks that need it add ``tests/`` to ``sys.path`` themselves.

    from llm_fake_server import ScriptedServer, Reply, Status, Drop, Truncated, Trickle

    with ScriptedServer([Status(429, headers={"Retry-After": "0.05"}), Reply('{"ok": 1}')]) as srv:
        cfg = LLMConfig(backend="openai_compatible", base_url=srv.base_url, cache_path=None)
        ...
    srv.requests  # every request received: path, query, headers (lower-case names), parsed JSON body

Requests take the scripted actions in arrival order; when the script runs out, ``responder``
(``fn(body: dict, index: int) -> action``) decides, or else the server answers 500 "script
exhausted". Actions: :class:`Reply` (a chat completion, optional delay for timeouts and latency,
``finish_reason="length"`` for a cut-off reply), :class:`Status` (any HTTP error, e.g. 429 with
Retry-After, 500), :class:`Drop` (close the connection without answering), :class:`Truncated`
(promise a longer body than is sent, then hang up), :class:`Trickle` (a whole, valid reply sent one
byte at a time, to defeat per-read timeouts). Any path ending in ``/chat/completions``
is served, so the same server stands in for OpenAI, Azure and vLLM-style URLs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union
from urllib.parse import parse_qs, urlsplit

__all__ = ["Drop", "Reply", "ScriptedServer", "Status", "Trickle", "Truncated", "chat_completion_body"]


@dataclass
class Reply:
    """Answer with a chat completion whose message content is ``text``, after ``delay_s``."""

    text: str
    delay_s: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int | None = None  # default: one token per 4 characters
    finish_reason: str = "stop"


@dataclass
class Status:
    """Answer with an HTTP error status, e.g. ``Status(429, headers={"Retry-After": "1"})``."""

    code: int
    body: str = '{"error": {"message": "scripted error"}}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Drop:
    """Close the connection without sending any response."""

    delay_s: float = 0.0


@dataclass
class Truncated:
    """Send a 200 whose body is cut off halfway, then close the connection."""

    text: str = "a reply that will never arrive whole"


@dataclass
class Trickle:
    """Send a valid 200 chat completion, but one byte every ``interval_s`` seconds."""

    text: str = '{"n": 1}'
    interval_s: float = 0.5


Action = Union[Reply, Status, Drop, Truncated, Trickle]


def chat_completion_body(text: str, model: str = "scripted", prompt_tokens: int = 100, completion_tokens: int | None = None,
                         finish_reason: str = "stop") -> dict[str, Any]:
    """An OpenAI chat.completion JSON object with one choice."""
    ct = max(1, len(text) // 4) if completion_tokens is None else completion_tokens
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct},
    }


class ScriptedServer:
    """Context manager running a scripted chat-completions server on a free port of 127.0.0.1."""

    def __init__(self, script: list[Action] | None = None, responder: Callable[[dict[str, Any], int], Action] | None = None):
        self.script: list[Action] = list(script or [])
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ScriptedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

            def do_POST(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL (what Azure's ``base_url`` is)."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, ``<root>/v1``."""
        return self.url + "/v1"

    # -- request handling --------------------------------------------------------------------
    def _next_action(self, body: dict[str, Any]) -> Action:
        with self._lock:
            index = len(self.requests) - 1
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            try:
                return self.responder(body, index)
            except Exception as exc:
                return Status(500, json.dumps({"error": {"message": f"ScriptedServer responder raised {exc!r}"}}))
        return Status(500, '{"error": {"message": "ScriptedServer: script exhausted"}}')

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (ValueError, UnicodeDecodeError):
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        parts = urlsplit(h.path)
        with self._lock:
            self.requests.append({"path": parts.path, "query": parse_qs(parts.query), "headers": {k.lower(): v for k, v in h.headers.items()}, "body": body})
        if not parts.path.endswith("/chat/completions"):
            self._send(h, 404, json.dumps({"error": {"message": f"no route {parts.path}"}}).encode())
            return
        action = self._next_action(body)
        delay = getattr(action, "delay_s", 0.0)
        if delay and self._stop.wait(delay):
            return  # server is shutting down
        try:
            if isinstance(action, Reply):
                payload = chat_completion_body(action.text, str(body.get("model", "scripted")), action.prompt_tokens,
                                               action.completion_tokens, action.finish_reason)
                self._send(h, 200, json.dumps(payload).encode())
            elif isinstance(action, Status):
                self._send(h, action.code, action.body.encode(), action.headers)
            elif isinstance(action, Drop):
                h.close_connection = True
            elif isinstance(action, Truncated):
                data = json.dumps(chat_completion_body(action.text)).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
            elif isinstance(action, Trickle):
                data = json.dumps(chat_completion_body(action.text)).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                for i in range(len(data)):
                    h.wfile.write(data[i:i + 1])
                    h.wfile.flush()
                    if self._stop.wait(action.interval_s):
                        return
            else:
                self._send(h, 500, f'{{"error": {{"message": "unknown scripted action {type(action).__name__}"}}}}'.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a timeout test)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
