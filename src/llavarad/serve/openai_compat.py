"""OpenAI-compatible endpoints: ``POST /v1/chat/completions`` (plain and ``stream: true``) and ``GET /v1/models``.

A user message carries the radiograph as an ``image_url`` part (a ``data:`` URI with base64 PNG,
JPEG or DICOM; remote URLs are never fetched) and the indication as text. The answer is the draft
Findings as the assistant's message, so tools built on the official ``openai`` client work as is.
Streaming sends the draft in word-sized deltas once the (batched) generation is done.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from llavarad.serve.limits import decode_data_uri
from llavarad.serve.schemas import ERROR_RESPONSES as _ERRORS
from llavarad.serve.schemas import ApiError, ChatCompletion, ChatRequest, ModelList

__all__ = ["router", "validation_message"]

router = APIRouter()
_CREATED = int(time.time())


def validation_message(exc: ValidationError | Any) -> str:
    """Pydantic errors as one line of ``field: problem``; the offending values are never quoted."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS, summary="The served model (OpenAI format)")
async def list_models(request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    svc.authorize(request)
    return {"object": "list", "data": [{"id": svc.model_id, "object": "model", "created": _CREATED,
                                        "owned_by": "llavarad"}]}


def _inputs(req: ChatRequest) -> tuple[str, str | None]:
    """(image data URI, indication) from the last user message."""
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise ApiError(422, "missing_image", "send a user message with an image_url part (data: URI) and the indication")
    content = users[-1].content
    if not isinstance(content, list):
        raise ApiError(422, "missing_image", "the user message needs a list content with an image_url part "
                       "({'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}})")
    images = [p.image_url.url for p in content if p.type == "image_url" and p.image_url is not None]
    if len(images) != 1:
        raise ApiError(422, "missing_image" if not images else "too_many_images",
                       f"send exactly one image_url part (got {len(images)})")
    texts = [p.text for p in content if p.type == "text" and p.text]
    return images[0], " ".join(texts) if texts else None


async def _parse(request: Request, svc: Any, t0: float) -> ChatRequest:
    body = await svc.read_body(request, t0)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "the body is not valid UTF-8 JSON (or nested too deeply)") from exc
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc)) from exc


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
             summary="Draft Findings, OpenAI chat-completions format",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ChatRequest"}}}}})
async def chat_completions(request: Request) -> Any:
    svc = request.app.state.service
    t0 = time.perf_counter()
    svc.authorize(request)
    req = await _parse(request, svc, t0)
    if req.model != svc.model_id:
        raise ApiError(404, "model_not_found", f"this server serves the model '{svc.model_id}' (see GET /v1/models)")
    uri, text = _inputs(req)
    indication = svc.indication(text)
    cxr = await svc.decode(decode_data_uri(uri, svc.config.max_upload_bytes))
    findings, _ = await svc.draft(request, cxr.image, indication, t0)
    tokenizer = svc.bundle.tokenizer
    ids = tokenizer(findings, add_special_tokens=False)["input_ids"]
    limit = req.max_completion_tokens or req.max_tokens
    finish = "stop"
    if limit is not None and len(ids) > limit:
        findings, ids, finish = tokenizer.decode(ids[:limit], skip_special_tokens=True).strip(), ids[:limit], "length"
    prompt_tokens = svc.bundle.num_image_tokens + (len(tokenizer(indication)["input_ids"]) if indication else 0)
    cid = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if req.stream:
        return StreamingResponse(_events(cid, created, svc.model_id, findings, finish), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})
    return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": svc.model_id,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": findings},
                                      "finish_reason": finish}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                                   "total_tokens": prompt_tokens + len(ids)}})


async def _events(cid: str, created: int, model: str, text: str, finish: str) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in re.findall(r"\s*\S+", text):
        yield chunk({"content": piece})
    yield chunk({}, finish)
    yield "data: [DONE]\n\n"
