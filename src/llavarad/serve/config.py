"""Settings of the report drafting service, validated before anything starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServeConfig", "ServeConfigError", "is_loopback", "read_api_keys"]


class ServeConfigError(ValueError):
    """Settings the server refuses to start with; the message lists every problem and its fix."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as public


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """The bearer keys in ``path``: one per line, blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeConfigError(f"cannot read the API key file {p}: {exc}") from exc
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ServeConfigError(f"the API key file {p} holds no key; put one secret (>= 16 characters) per line")
    short = [i for i, k in enumerate(keys, 1) if len(k) < 16]
    if short:
        raise ServeConfigError(f"the API key file {p}: key(s) number {short} are shorter than 16 characters; "
                               "use long random secrets (e.g. the output of `openssl rand -base64 32`)")
    return keys


@dataclass
class ServeConfig:
    """How ``llavarad serve`` runs. Defaults are the safe ones: loopback only, no CORS, caps on.

    Every limit is per request unless it says otherwise. ``max_queue`` counts decoded requests
    waiting for the model (beyond it: 503 + Retry-After); ``max_concurrent_uploads`` bounds how many
    bodies are read into memory at once (others wait, within their deadline), so memory stays below
    about ``max_concurrent_uploads * max_upload_bytes`` plus the queue of decoded images.
    ``torch_threads`` sets the model thread's intra-op threads (None: torch's default, every core);
    on a CPU shared with image decoding, fewer threads avoid oversubscription.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 120.0
    upload_timeout_s: float = 30.0
    max_upload_bytes: int = 64 * 1024 * 1024
    max_concurrent_uploads: int = 8
    max_pixels: int = 50_000_000
    max_indication_tokens: int = 256
    max_field_bytes: int = 64 * 1024
    max_new_tokens: int = 256
    explain_image_size: int = 192
    torch_threads: int | None = None
    api_key_file: str | None = None
    cors_origins: tuple[str, ...] = ()
    model_id: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self.cors_origins = tuple(self.cors_origins)
        problems = []
        positive = ("port", "max_batch_size", "max_queue", "max_upload_bytes", "max_concurrent_uploads", "max_pixels",
                    "max_indication_tokens", "max_field_bytes", "max_new_tokens", "explain_image_size")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append(f"torch_threads={self.torch_threads} must be >= 1 (or None: torch's default)")
        if not 0 < self.port < 65536:
            problems.append(f"port={self.port} must be in 1..65535")
        for name in ("max_wait_ms",):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("request_timeout_s", "upload_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        if "*" in self.cors_origins and not self.api_key_file:
            problems.append("cors_origins='*' lets any web page call the model; name the origins or set an api_key_file")
        if self.api_key_file and not self.api_keys:
            try:
                self.api_keys = read_api_keys(self.api_key_file)
            except ServeConfigError as exc:
                problems.append(str(exc))
        if not is_loopback(self.host) and not self.api_keys:
            problems.append(f"host={self.host!r} is reachable from other machines: refusing to start without "
                            "--api-key-file (bearer keys, one per line), or bind 127.0.0.1")
        if problems:
            raise ServeConfigError("; ".join(problems))

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)
