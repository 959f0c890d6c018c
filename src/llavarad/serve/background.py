"""Run the service in a background thread on a free loopback port (tests, notebooks, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["BackgroundServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """``with BackgroundServer(app) as srv: httpx.get(srv.url + "/healthz")``: uvicorn in a thread,
    started on a free 127.0.0.1 port, ready (model warmed) on entry, always stopped on exit."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 120.0):
        import uvicorn

        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self.timeout_s = timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self.server.run, name="llavarad-uvicorn", daemon=True)
        self._thread.start()
        end = time.monotonic() + self.timeout_s
        while not self.server.started:  # uvicorn sets it after the lifespan (model warm-up) finished
            if not self._thread.is_alive() or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start within {self.timeout_s:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
