"""HTTP routes: the report API, the image preview, health, readiness, metrics, the page and its docs."""

from __future__ import annotations

import asyncio
import time
import uuid
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from llavarad.serve.limits import request_id
from llavarad.serve.schemas import ERROR_RESPONSES as _ERRORS
from llavarad.serve.schemas import ApiError, ErrorBody, Preview, Report

__all__ = ["router"]

router = APIRouter()

def _multipart_doc(with_fields: bool) -> dict[str, Any]:
    props: dict[str, Any] = {"image": {"type": "string", "format": "binary",
                                       "description": "PNG, JPEG or DICOM; the type is read from the bytes."}}
    if with_fields:
        props["indication"] = {"type": "string", "description": "Why the study was ordered (optional)."}
        props["explain"] = {"type": "boolean", "description": "Also return each word's heat map."}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["image"], "properties": props}}}}}


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    raise ApiError(422, "invalid_field", f"form field '{name}' must be true or false")


@router.post("/v1/reports", response_model=Report, responses=_ERRORS, openapi_extra=_multipart_doc(True),
             summary="Draft the Findings of a chest X-ray")
async def create_report(request: Request) -> JSONResponse:
    """Multipart ``image`` (PNG, JPEG, DICOM), optional ``indication`` and ``explain``: the draft Findings,
    its 14 CheXpert labels (rule labeler), warnings (lateral view, sentences about a prior study),
    model, settings and timings; with ``explain=true`` each word's heat map."""
    svc = request.app.state.service
    t0 = time.perf_counter()
    rid = request_id(request.headers.get("x-request-id"), uuid.uuid4().hex)
    svc.authorize(request)
    form = await svc.read_form(request, t0)
    if form.file is None:
        raise ApiError(422, "missing_image", "send the radiograph in the multipart field 'image'")
    explain = _flag(form.fields.get("explain"), "explain")
    indication = svc.indication(form.fields.get("indication"))
    cxr = await svc.decode(form.file)
    t_read = time.perf_counter()
    result, job = await svc.draft(request, cxr.image, indication, t0, explain=explain)
    if explain:
        words = await asyncio.to_thread(svc.heat_words, result, cxr.image)
        body = svc.report(rid, cxr, result.text, job, t0, t_read, words)
    else:
        body = svc.report(rid, cxr, result, job, t0, t_read)
    return JSONResponse(body, headers={"X-Request-Id": rid})


@router.post("/v1/preview", response_model=Preview, responses=_ERRORS, openapi_extra=_multipart_doc(False),
             summary="Render an upload as the model will see it")
async def preview(request: Request) -> JSONResponse:
    """Multipart ``image``: a PNG (at most 1024 px a side) of the rendered radiograph, so the page can
    show DICOM files, which browsers cannot display; the same checks as ``/v1/reports``."""
    svc = request.app.state.service
    t0 = time.perf_counter()
    svc.authorize(request)
    form = await svc.read_form(request, t0)
    if form.file is None:
        raise ApiError(422, "missing_image", "send the radiograph in the multipart field 'image'")
    cxr = await svc.decode(form.file)

    def render() -> dict[str, Any]:
        from llavarad.serve.service import png_data_uri

        shown = cxr.image.copy()
        shown.thumbnail((1024, 1024))
        return {"image": png_data_uri(shown), "width": cxr.size[0], "height": cxr.size[1],
                "source_format": cxr.source_format, "view": cxr.view}

    return JSONResponse(await asyncio.to_thread(render))


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the model is loaded and warmed",
            responses={503: {"model": ErrorBody, "description": "still warming up"}})
async def readyz(request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    if not svc.worker.ready:
        raise ApiError(503, "not_ready", "the model is loading or warming up", {"Retry-After": "5"})
    return {"status": "ready", "model": svc.model_id, "queue_depth": svc.worker.depth}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    svc = request.app.state.service
    svc.authorize(request)
    svc.metrics.ready.set(1 if svc.worker.ready else 0)
    data, ctype = svc.metrics.render()
    return Response(data, media_type=ctype)


def _asset(name: str) -> str:
    return (resources.files("llavarad.serve") / "static" / name).read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"))


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return HTMLResponse(_asset("docs.html"))
