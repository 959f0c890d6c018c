"""Request and response shapes of the service (pydantic), and the one error type it raises.

Every refusal is an :class:`ApiError`: HTTP 4xx (or 503/504 for load and time limits) with the body
``{"error": {"code": ..., "message": ...}}``. Messages name the problem and the fix and never quote
what the client sent (no report text, no DICOM tag values).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERROR_RESPONSES",
    "ApiError",
    "ChatCompletion",
    "ChatRequest",
    "ErrorBody",
    "HeatWord",
    "ModelList",
    "Preview",
    "Report",
    "ReportWarning",
]


class ApiError(Exception):
    """A request the service refuses: ``status`` (HTTP), machine ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable kind, e.g. 'unsupported_media_type', 'queue_full'.")
    message: str = Field(description="What is wrong and how to fix it; never quotes the upload.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ReportWarning(BaseModel):
    code: Literal["lateral_view", "prior_comparison", "view_unknown"]
    message: str
    sentence: str | None = Field(None, description="For prior_comparison: the draft sentence that refers to a prior.")
    cues: list[str] = Field(default_factory=list)


class HeatWord(BaseModel):
    text: str
    start: int = Field(description="Character offset of the word in `findings`.")
    end: int
    grid: list[list[float]] = Field(description="Attention over the image patch grid (rows x columns), sums to the word's share.")
    overlay: str = Field(description="PNG data URI: the heat map blended over the image as the model saw it.")


class Report(BaseModel):
    id: str = Field(description="Request id (echo of a valid X-Request-Id header, else generated).")
    findings: str
    labels: dict[str, float | None] = Field(description="The 14 CheXpert observations of the draft (rule labeler): 1, 0, -1 or null.")
    warnings: list[ReportWarning]
    model: dict[str, Any]
    settings: dict[str, Any]
    timings: dict[str, float] = Field(description="Milliseconds: read, queue, generate, label, total; and the batch size used.")
    words: list[HeatWord] | None = Field(None, description="With explain=true: each word's heat map.")


class Preview(BaseModel):
    image: str = Field(description="PNG data URI of the image as rendered for the model (DICOM windowed, MONOCHROME1 inverted).")
    width: int
    height: int
    source_format: str
    view: str | None


class ImageUrl(BaseModel):
    url: str = Field(description="data:image/png|jpeg|dicom;base64,... (remote URLs are not fetched).")
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request; unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    n: int | None = Field(None, ge=1, le=1)


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


#: The refusals every /v1 route documents in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what} for code, what in (
        (400, "malformed request"), (401, "missing or wrong API key"), (404, "unknown model"),
        (408, "upload too slow"), (413, "over a size cap"), (415, "not PNG/JPEG/DICOM"),
        (422, "unusable image or field"), (503, "queue full (Retry-After)"), (504, "deadline passed"))}
