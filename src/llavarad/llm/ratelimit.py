"""Token buckets for request-per-minute and token-per-minute limits, shared by worker threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket", "estimate_tokens"]


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """A conservative pre-request token estimate: ~4 characters per prompt token plus the
    completion budget (what providers count against a tokens-per-minute limit)."""
    chars = sum(len(str(m.get("content", ""))) + 8 for m in messages)
    return chars // 4 + 1 + max_tokens


class TokenBucket:
    """Refills at ``per_minute / 60`` units per second up to ``capacity`` (default: one second's
    worth, at least 1). :meth:`acquire` blocks until the units are available; a request larger than
    the capacity waits for a full bucket and then drives it negative, so it is never starved."""

    def __init__(self, per_minute: float, capacity: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if per_minute <= 0:
            raise ValueError(f"per_minute={per_minute} must be > 0")
        self.rate = per_minute / 60.0
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate)
        self._level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` units, sleeping as needed; return the seconds waited."""
        need = min(float(amount), self.capacity)
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._level >= need:
                    self._level -= float(amount)
                    return waited
                delay = (need - self._level) / self.rate
            self._sleep(delay)
            waited += delay

    def adjust(self, delta: float) -> None:
        """Give back (``delta`` > 0) or take more (``delta`` < 0) once the true usage is known."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level + delta)
