"""The one inference worker: a thread that feeds the model dynamic batches from a bounded queue.

Requests that arrive within ``max_wait_ms`` of the first waiting one (and any that queued while the
model was busy) go to :meth:`ReportGenerator.generate_many` as one left-padded batch of up to
``max_batch_size`` images; batched and one-at-a-time answers are identical (generate.py's
contract, tested again here). Explain requests run alone through :func:`llavarad.attention.explain`.

Admission is bounded: at most ``max_queue`` jobs wait; :meth:`BatchingWorker.submit` raises
:class:`QueueFull` beyond that. A job whose client went away or whose deadline passed is cancelled:
it gives its queue slot back at once and the worker skips it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from llavarad.generate import ReportGenerator

logger = logging.getLogger(__name__)

__all__ = ["BatchingWorker", "Job", "QueueFull"]


class QueueFull(RuntimeError):
    """The wait queue holds ``max_queue`` jobs; the caller should answer 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request for the model. ``image`` is a PIL image or its :meth:`ReportGenerator.prepare` tensor
    (explain jobs need the PIL image). ``future`` resolves (in its event loop) to the findings text, or
    to an :class:`llavarad.attention.Explanation` when ``explain`` is set."""

    image: Image.Image | Any
    indication: str | None
    explain: bool = False
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    batch_size: int = 0
    cancelled: bool = False
    _released: bool = False


class BatchingWorker:
    """Owns the model: one thread, dynamic batches, bounded admission.

    ``on_batch(size, seconds)`` and ``on_depth(depth)`` report to the metrics.
    """

    def __init__(self, generator: ReportGenerator, *, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 max_queue: int = 64, max_new_tokens: int = 256, max_indication_tokens: int = 512,
                 torch_threads: int | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        from llavarad.generate import GenerationSettings

        self.generator = generator
        # The worker's own settings: batches as large as the largest dynamic batch, one model call each.
        self.generator.settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=max_batch_size,
                                                     max_indication_tokens=max_indication_tokens)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_new_tokens = max_new_tokens
        self.torch_threads = torch_threads
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._carry: deque[Job] = deque()
        self._lock = threading.Lock()
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self.ready = False
        self.batches_run = 0

    # -- admission (called from the event loop) --------------------------------------------------
    @property
    def depth(self) -> int:
        """Jobs admitted and not yet taken by the model (nor cancelled)."""
        return self._waiting

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job`` and return the future of its result; raises :class:`QueueFull`."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting (max_queue={self.max_queue})")
            self._waiting += 1
            depth = self._waiting
        self._on_depth(depth)
        self._queue.put(job)
        return job.future

    def cancel(self, job: Job) -> None:
        """The client left or its deadline passed: give the slot back now; the worker skips the job."""
        job.cancelled = True
        self._release(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            if job._released:
                return
            job._released = True
            self._waiting -= 1
            depth = self._waiting
        self._on_depth(depth)

    # -- lifecycle -------------------------------------------------------------------------------
    def warm_up(self) -> float:
        """Run one batch on a blank image so the first request does not pay for lazy set-up; seconds."""
        from PIL import Image as _Image

        size = int(self.generator.bundle.preset.image_size)
        start = time.perf_counter()
        self.generator.generate_many([_Image.new("L", (size, size), 128)], [None])
        self.ready = True
        return time.perf_counter() - start

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llavarad-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    # -- the worker thread -----------------------------------------------------------------------
    def _next(self, timeout: float | None) -> Job | None:
        if self._carry:
            return self._carry.popleft()
        if timeout is not None and timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _collect(self) -> list[Job] | None:
        """Block for a first job, then gather more within the wait window; None means stop."""
        first = self._next(None)
        if first is None:
            return None
        if first.explain:
            return [first]
        batch = [first]
        window_end = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                job = self._next(window_end - time.perf_counter())
            except queue.Empty:
                break
            if job is None:  # stop after this batch
                self._queue.put(None)
                break
            if job.cancelled:
                continue
            if job.explain:
                self._carry.append(job)
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        if self.torch_threads:  # per thread: OpenMP's thread count is a per-thread setting
            import torch

            torch.set_num_threads(self.torch_threads)
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [j for j in batch if not j.cancelled]
            for job in live:
                self._release(job)
            if not live:
                continue
            try:
                self._process(live)
            except Exception:
                logger.exception("inference worker: unexpected failure")

    def _process(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        for job in jobs:
            job.started, job.batch_size = start, len(jobs)
        if jobs[0].explain:
            results = [self._explain(jobs[0])]
        else:
            results = self._generate(jobs)
        seconds = time.perf_counter() - start
        self.batches_run += 1
        self._on_batch(len(jobs), seconds)
        for job, result in zip(jobs, results):
            job.finished = time.perf_counter()
            job.loop.call_soon_threadsafe(_resolve, job.future, result)

    def _explain(self, job: Job) -> Any:
        from llavarad.attention import explain

        try:
            return explain(self.generator.bundle, job.image, job.indication, max_new_tokens=self.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500
            return exc

    def _generate(self, jobs: list[Job]) -> list[Any]:
        images = [j.image for j in jobs]
        inds = [j.indication for j in jobs]
        try:
            return list(self.generator.generate_many(images, inds))
        except Exception as exc:  # noqa: BLE001 - isolate the failing item(s) one by one
            logger.warning("batch of %d failed (%s); retrying one at a time", len(jobs), type(exc).__name__)
        out: list[Any] = []
        for img, ind in zip(images, inds):
            try:
                out.append(self.generator.generate_many([img], [ind])[0])
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out


def _resolve(future: asyncio.Future, result: Any) -> None:
    if future.done():  # cancelled by a deadline or a disconnect meanwhile
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
