"""What a request does between the door and the model: body, image, queue, deadline, report.

:class:`DraftService` is shared by the HTTP routes (``/v1/reports``, the OpenAI-compatible chat
endpoint and the page). It holds the :class:`~llavarad.serve.worker.BatchingWorker`, the rule
labeler and the limits; nothing it touches is written to disk or logged beyond ids and timings.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from llavarad.serve.limits import (
    check_bearer,
    check_indication,
    parse_multipart,
    read_body,
    read_image,
)
from llavarad.serve.schemas import ApiError
from llavarad.serve.worker import BatchingWorker, Job, QueueFull

if TYPE_CHECKING:
    from PIL import Image
    from starlette.requests import Request

    from llavarad.generate import ReportGenerator
    from llavarad.io.images import CxrImage
    from llavarad.serve.config import ServeConfig
    from llavarad.serve.limits import FormData
    from llavarad.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)

__all__ = ["DraftService", "png_data_uri"]


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of a PIL image (built in memory)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class DraftService:
    """The model behind a queue, plus every check a request passes before and after it."""

    def __init__(self, config: ServeConfig, generator: ReportGenerator, metrics: ServeMetrics, *,
                 model_id: str = "llavarad"):
        from llavarad.evaluate.rule_labeler import RuleLabeler

        self.config = config
        self.metrics = metrics
        self.model_id = config.model_id or model_id
        self.bundle = generator.bundle
        self.worker = BatchingWorker(generator, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                                     max_queue=config.max_queue, max_new_tokens=config.max_new_tokens,
                                     max_indication_tokens=config.max_indication_tokens,
                                     torch_threads=config.torch_threads,
                                     on_batch=metrics.observe_batch, on_depth=metrics.set_depth)
        self.labeler = RuleLabeler()
        self._uploads = asyncio.Semaphore(config.max_concurrent_uploads)
        self._last_batch_s = 1.0
        param = next(self.bundle.model.parameters())
        self.settings = {**{k: v for k, v in asdict(generator.settings).items() if k != "batch_size"},
                         "prompt_format": self.bundle.prompt_format, "decoding": "greedy",
                         "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device),
                         "max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                         "labeler": f"{self.labeler.name} {self.labeler.version}"}

    # -- the door ----------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.config.api_keys)

    def deadline(self, t0: float) -> float:
        return t0 + self.config.request_timeout_s

    async def read_body(self, request: Request, t0: float) -> bytes:
        """The body, read under the upload-concurrency bound and the request's deadline."""
        wait = self.deadline(t0) - time.perf_counter()
        try:
            await asyncio.wait_for(self._uploads.acquire(), max(wait, 0.001))
        except TimeoutError as exc:
            raise self._deadline_error("waiting to upload") from exc
        try:
            return await read_body(request, self.config.max_upload_bytes, self.config.upload_timeout_s)
        finally:
            self._uploads.release()

    async def read_form(self, request: Request, t0: float, file_field: str = "image") -> FormData:
        body = await self.read_body(request, t0)
        return parse_multipart(body, request.headers.get("content-type"), file_field=file_field,
                               max_field_bytes=self.config.max_field_bytes)

    async def decode(self, data: bytes) -> CxrImage:
        return await asyncio.to_thread(read_image, data, self.config.max_pixels)

    def indication(self, text: str | None) -> str | None:
        return check_indication(text, self.bundle.tokenizer, self.config.max_indication_tokens)

    # -- the model ---------------------------------------------------------------------------------
    async def draft(self, request: Request, image: Image.Image, indication: str | None, t0: float, *,
                    explain: bool = False) -> tuple[Any, Job]:
        """Queue one image and wait for its findings (or Explanation): 503 when the queue is full,
        504 past the deadline; a client that disconnects gives its slot back."""
        if not self.worker.ready:
            raise ApiError(503, "not_ready", "the model is still loading; retry shortly", {"Retry-After": "5"})
        # Preprocess here, on the request's thread, so the model's thread only generates (explain
        # takes the PIL image: it runs its own forward passes).
        model_input = image if explain else await asyncio.to_thread(self.worker.generator.prepare, image)
        job = Job(image=model_input, indication=indication, explain=explain)
        try:
            future = self.worker.submit(job)
        except QueueFull as exc:
            retry = 1 + int(self.worker.depth * self._last_batch_s / self.config.max_batch_size)
            raise ApiError(503, "queue_full", f"{exc}; retry after {retry} s", {"Retry-After": str(retry)}) from exc
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({future, watcher}, timeout=max(self.deadline(t0) - time.perf_counter(), 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if future in done:
            if job.started is not None and job.finished is not None:
                self._last_batch_s = job.finished - job.started
            try:
                return future.result(), job
            except Exception as exc:
                logger.error("generation failed for a request: %s", type(exc).__name__)
                raise ApiError(500, "generation_failed", "the model failed on this image; the server stays up") from exc
        self.worker.cancel(job)
        future.cancel()
        if watcher in done:
            self.metrics.cancelled.labels(reason="disconnect").inc()
            raise ApiError(400, "client_closed", "the client closed the connection before the draft was ready")
        self.metrics.cancelled.labels(reason="deadline").inc()
        raise self._deadline_error("waiting for the model")

    def _deadline_error(self, where: str) -> ApiError:
        return ApiError(504, "deadline_exceeded", f"no answer within {self.config.request_timeout_s:g} s ({where}); "
                        "the server is busy, retry later", {"Retry-After": "5"})

    # -- the answer --------------------------------------------------------------------------------
    def warnings(self, cxr: CxrImage, findings: str) -> list[dict[str, Any]]:
        """Lateral view and prior-comparison sentences (the model never sees a prior study)."""
        from llavarad.evaluate.priors import find_prior_mentions

        out: list[dict[str, Any]] = []
        if cxr.is_frontal is False:
            out.append({"code": "lateral_view", "message": f"view {cxr.view}: the model was trained on frontal (PA/AP) "
                        "images, so this draft may be poor", "sentence": None, "cues": []})
        for m in find_prior_mentions(findings):
            out.append({"code": "prior_comparison", "message": "this sentence refers to a prior study or a change "
                        "over time, which the model cannot know: check or remove it", "sentence": m.sentence,
                        "cues": m.cues})
        return out

    def report(self, rid: str, cxr: CxrImage, findings: str, job: Job, t0: float, t_read: float,
               words: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        t_label = time.perf_counter()
        labels = self.labeler.label([findings])[0]
        warnings = self.warnings(cxr, findings)
        now = time.perf_counter()
        ms = 1000.0
        timings = {"read_ms": (t_read - t0) * ms, "queue_ms": ((job.started or now) - job.enqueued) * ms,
                   "generate_ms": ((job.finished or now) - (job.started or now)) * ms,
                   "label_ms": (now - t_label) * ms, "total_ms": (now - t0) * ms, "batch_size": float(job.batch_size)}
        return {"id": rid, "findings": findings, "labels": labels, "warnings": warnings,
                "model": {"id": self.model_id, "preset": self.bundle.preset.name},
                "settings": {**self.settings, "explain": words is not None},
                "timings": {k: round(v, 2) for k, v in timings.items()}, "words": words}

    def heat_words(self, expl: Any, image: Image.Image) -> list[dict[str, Any]]:
        """Each word of an Explanation: its grid and a PNG overlay on the image the model saw."""
        from llavarad._attention_render import overlay

        shown = image.convert("RGB")
        shown.thumbnail((self.config.explain_image_size, self.config.explain_image_size))
        out, cursor = [], 0
        for i, w in enumerate(expl.words):
            start = expl.text.find(w["word"], cursor)
            start = start if start >= 0 else cursor
            cursor = start + len(w["word"])
            grid = expl.word_maps[i]
            out.append({"text": w["word"], "start": start, "end": cursor, "grid": grid.round(5).tolist(),
                        "overlay": png_data_uri(overlay(shown, grid, box=expl.image_box))})
        return out


async def _wait_disconnect(request: Request) -> None:
    """Return when the client hangs up (polled: Starlette exposes no disconnect event)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)
