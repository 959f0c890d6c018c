"""Guards at the door: bearer keys, body and field caps enforced while reading, in-memory multipart,
content sniffing, data URIs, image and indication caps.

Nothing here writes to disk: bodies are read into memory up to their cap (a body over it is cut
off at the first chunk past the cap), and images are decoded by :func:`llavarad.io.images.read_cxr`
from an ``io.BytesIO``. Every refusal is an :class:`~llavarad.serve.schemas.ApiError` whose message
names the limit and never quotes the input.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llavarad.serve.schemas import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request

    from llavarad.io.images import CxrImage

__all__ = [
    "FormData",
    "check_bearer",
    "check_indication",
    "decode_data_uri",
    "parse_multipart",
    "read_body",
    "read_image",
]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DATA_URI = re.compile(r"^data:([\w.+/-]*)((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.IGNORECASE)


def request_id(header: str | None, fallback: str) -> str:
    """The client's ``X-Request-Id`` when it is a short safe token, else ``fallback``."""
    return header if header and _REQUEST_ID.match(header) else fallback


def check_bearer(authorization: str | None, keys: tuple[str, ...]) -> None:
    """Accept ``Authorization: Bearer <key>`` for one of ``keys`` (constant-time); no keys: open."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    ok = scheme.lower() == "bearer" and token and any(
        hmac.compare_digest(token.encode("utf-8", "replace"), k.encode()) for k in keys)
    if not ok:
        raise ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>' with a key "
                       "from the server's --api-key-file", {"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes`` and with 408 when it
    takes longer than ``timeout_s`` to arrive (slow uploads cannot hold a slot forever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_content_length", "the Content-Length header is not a number")
        if int(declared) > max_bytes:
            raise ApiError(413, "payload_too_large", f"the body is {int(declared)} bytes; the limit is {max_bytes} "
                           "bytes (server option --max-upload-mb)")
    chunks: list[bytes] = []
    size = 0

    async def _read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "payload_too_large", f"the body passed the limit of {max_bytes} bytes "
                               "(server option --max-upload-mb)")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(_read(), timeout_s)
    except TimeoutError as exc:
        raise ApiError(408, "upload_timeout", f"the body did not arrive within {timeout_s:g} s; "
                       "check the network or send a smaller file") from exc
    except ApiError:
        raise
    except Exception as exc:  # the client hung up mid-body (starlette's ClientDisconnect and friends)
        raise ApiError(400, "incomplete_body", "the connection closed before the body was complete") from exc
    return b"".join(chunks)


@dataclass
class FormData:
    """Parsed multipart form: text fields and the one file part."""

    fields: dict[str, str] = field(default_factory=dict)
    file: bytes | None = None
    file_field: str | None = None


def parse_multipart(body: bytes, content_type: str | None, *, file_field: str, max_field_bytes: int,
                    max_parts: int = 16) -> FormData:
    """Parse a ``multipart/form-data`` body in memory (no temp files, unlike Starlette's form parser).

    Text fields must be UTF-8 and at most ``max_field_bytes``; ``file_field`` holds the upload.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the image as multipart/form-data "
                       f"(field '{file_field}'), e.g. curl -F {file_field}=@cxr.dcm")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise ApiError(400, "malformed_multipart", "the multipart Content-Type has no valid boundary")

    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    state = {"ended": False}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise ApiError(400, "too_many_parts", f"the form has more than {max_parts} parts")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    def on_end() -> None:
        state["ended"] = True

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_end": on_end}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart raises several error types for broken bodies
        raise ApiError(400, "malformed_multipart", "the multipart body could not be parsed; let your HTTP client "
                       "build it (curl -F, requests files=...)") from exc
    if not state["ended"]:
        raise ApiError(400, "malformed_multipart", "the multipart body is truncated (no closing boundary)")
    return _collect_parts(parts, file_field, max_field_bytes)


def _collect_parts(parts: list[dict[str, Any]], file_field: str, max_field_bytes: int) -> FormData:
    from python_multipart.multipart import parse_options_header

    form = FormData()
    for part in parts:
        disp, opts = parse_options_header(part["headers"].get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if disp != b"form-data" or not name:
            raise ApiError(400, "malformed_multipart", "a multipart part has no 'form-data; name=...' disposition")
        if name == file_field:
            if form.file is not None:
                raise ApiError(400, "duplicate_field", f"send one file in '{file_field}'")
            form.file, form.file_field = bytes(part["data"]), name
            continue
        if len(part["data"]) > max_field_bytes:
            raise ApiError(413, "field_too_large", f"form field '{name[:40]}' is over {max_field_bytes} bytes")
        try:
            form.fields[name] = bytes(part["data"]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid_text", f"form field '{name[:40]}' is not valid UTF-8 text") from exc
    return form


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:...;base64,...`` URI (the only image source the chat endpoint accepts)."""
    m = _DATA_URI.match(url[:256])
    if not m:
        if url.startswith(("http://", "https://")):
            raise ApiError(400, "remote_url_refused", "image_url must be a data: URI with base64 content; the server "
                           "never fetches remote URLs")
        raise ApiError(400, "invalid_data_uri", "image_url must look like data:image/png;base64,<base64 bytes>")
    if not m.group(3):
        raise ApiError(400, "invalid_data_uri", "the data: URI must be base64-encoded (';base64,')")
    payload = url[m.end():]
    if len(payload) * 3 // 4 > max_bytes:
        raise ApiError(413, "payload_too_large", f"the image is over the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", "the data: URI's content is not valid base64") from exc


def read_image(data: bytes, max_pixels: int) -> CxrImage:
    """Decode an upload in memory; the type comes from its bytes, never its name or Content-Type."""
    from llavarad.io.images import ImageReadError, detect_format, read_cxr

    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    if detect_format(data[:512]) is None:
        try:  # read_cxr names what the bytes are (a PDF, a text file, ...)
            read_cxr(io.BytesIO(data[:512]), max_pixels=max_pixels)
        except ImageReadError as exc:
            raise ApiError(415, "unsupported_media_type", f"the file {exc.problem}; send PNG, JPEG or DICOM") from exc
        raise ApiError(415, "unsupported_media_type", "the file is not a PNG, JPEG or DICOM radiograph")
    try:
        return read_cxr(io.BytesIO(data), max_pixels=max_pixels)
    except ImageReadError as exc:
        if "max_pixels" in exc.problem or "decompression bomb" in exc.problem:
            raise ApiError(413, "too_many_pixels", f"the image has more than {max_pixels} pixels (server option "
                           "--max-pixels) or is a decompression bomb") from exc
        if "smaller than" in exc.problem:
            raise ApiError(422, "image_too_small", "the image is smaller than 32 px on a side: not a radiograph") from exc
        if exc.problem.startswith("DICOM: no pixel data"):
            raise ApiError(422, "dicom_without_pixels", "the DICOM file has no pixel data (a report or presentation "
                           "state, not an image)") from exc
        raise ApiError(422, "unreadable_image", f"the image could not be decoded: {_plain(exc.problem)}") from exc
    except (MemoryError, OverflowError, RecursionError) as exc:
        raise ApiError(413, "too_many_pixels", "the image is too large to decode in memory") from exc


def _plain(problem: str) -> str:
    """A reader message without the wrapped library text in parentheses (it may quote file content)."""
    return re.sub(r"\s*\([^)]*\)", "", problem)[:200]


def check_indication(text: str | None, tokenizer: Any, max_tokens: int) -> str | None:
    """Strip the indication; refuse it with control characters or past ``max_tokens`` tokens (counted
    by :func:`llavarad.generate.cap_indication`, which bounds the work on huge texts)."""
    from llavarad.generate import (
        GenerationSettings,
        IndicationTooLongError,
        cap_indication,
    )

    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\x7f" in text:
        raise ApiError(400, "invalid_text", "the indication contains control characters")
    try:
        cap_indication(tokenizer, text, GenerationSettings(max_indication_tokens=max_tokens, long_indication="error"))
    except IndicationTooLongError as exc:
        raise ApiError(413, "indication_too_long", f"the indication is longer than {max_tokens} tokens "
                       "(server option --max-indication-tokens)") from exc
    return text
