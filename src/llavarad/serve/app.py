"""The FastAPI application: routes, error shape, metrics middleware, security headers, lifespan.

:func:`create_app` wires a loaded :class:`~llavarad.generate.ReportGenerator` behind the batching
worker; :func:`run_server` runs it on uvicorn with the config's host and port.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from llavarad import __version__
from llavarad.serve.metrics import ServeMetrics
from llavarad.serve.openai_compat import router as openai_router
from llavarad.serve.openai_compat import validation_message
from llavarad.serve.routes import router as core_router
from llavarad.serve.schemas import ApiError, ChatRequest
from llavarad.serve.service import DraftService

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from llavarad.generate import ReportGenerator
    from llavarad.serve.config import ServeConfig

logger = logging.getLogger(__name__)

__all__ = ["create_app", "run_server"]

_ENDPOINTS = {"/v1/reports", "/v1/preview", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics",
              "/", "/docs", "/openapi.json"}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
    (b"content-security-policy", (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                  b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'")),
    (b"cache-control", b"no-store"),
]


class _ObserveMiddleware:
    """Counts every answer by endpoint and status, times it, and adds the security headers."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "/static" if path.startswith("/static/") else "other"
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                message["headers"] = headers + _SECURITY_HEADERS
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)
            if status["code"] >= 400:
                logger.info("%s %s -> %d", scope.get("method"), endpoint, status["code"])


def _install_errors(app: FastAPI, metrics: ServeMetrics) -> None:
    def answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(code=code).inc()
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Any, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        return answer(422, "invalid_request", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = "no such endpoint; see /docs" if exc.status_code == 404 else str(exc.detail)[:200]
        return answer(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Any, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s while answering %s", type(exc).__name__, request.url.path, exc_info=exc)
        return answer(500, "internal_error", "the server failed on this request; it stays up. Report the request id")


def _openapi(app: FastAPI) -> Any:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            chat = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(chat.pop("$defs", {}))
            components["ChatRequest"] = chat
            app.openapi_schema = schema
        return app.openapi_schema
    return build


_DESCRIPTION = """Drafts the Findings section of a chest X-ray report with a LLaVA-Rad model running on this
machine. Images and reports are never stored or logged. Errors are `{"error": {"code", "message"}}`."""


def create_app(config: ServeConfig, generator: ReportGenerator, *, model_id: str = "llavarad") -> FastAPI:
    """The service app for a loaded generator; the worker starts (and warms the model) with the app."""
    from llavarad.io._dicom import never_quote_dicom_values

    never_quote_dicom_values()  # an upload's invalid tag values must never be quoted into a log line
    metrics = ServeMetrics()
    service = DraftService(config, generator, metrics, model_id=model_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        if not service.worker.ready:
            seconds = await asyncio.to_thread(service.worker.warm_up)
            logger.info("model warmed up in %.2f s", seconds)
        yield
        await asyncio.to_thread(service.worker.stop)

    app = FastAPI(title="llavarad report drafting service", version=__version__, description=_DESCRIPTION,
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    _install_errors(app, metrics)
    app.include_router(core_router)
    app.include_router(openai_router)
    app.mount("/static", StaticFiles(packages=[("llavarad.serve", "static")]), name="static")
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"])
    app.add_middleware(_ObserveMiddleware, metrics=metrics)
    return app


def run_server(config: ServeConfig, generator: ReportGenerator, *, model_id: str = "llavarad") -> None:
    """Serve until interrupted (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    app = create_app(config, generator, model_id=model_id)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
