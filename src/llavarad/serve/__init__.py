"""The private report drafting service: HTTP API, OpenAI-compatible endpoint and web page.

``llavarad serve --model DIR`` loads the model once, warms it and serves, on 127.0.0.1 by default:

- ``POST /v1/reports`` (multipart image + indication) -> draft Findings, labels, warnings, heat maps;
- ``POST /v1/chat/completions`` and ``GET /v1/models`` for tools built on the ``openai`` client;
- ``GET /`` the drafting page, ``/docs`` the API reference (both offline), ``/healthz``, ``/readyz``,
  ``/metrics`` (Prometheus).

Modules: :mod:`.config` (settings), :mod:`.limits` (auth, caps, in-memory parsing), :mod:`.worker`
(dynamic batching), :mod:`.service` (one request end to end), :mod:`.routes` and
:mod:`.openai_compat` (HTTP), :mod:`.metrics`, :mod:`.app` (assembly). FastAPI and uvicorn (the
``serve`` extra) are imported only by the modules that need them.
"""

from llavarad.serve.config import ServeConfig, ServeConfigError

__all__ = ["ServeConfig", "ServeConfigError", "create_app", "run_server"]


def __getattr__(name: str):
    if name in ("create_app", "run_server"):
        from llavarad.serve import app

        return getattr(app, name)
    raise AttributeError(name)
