"""SQLite cache of LLM replies that passed parsing, so reruns are free and killed runs resume.

Keyed by (model, prompt_version, sha256 of the canonical request). Only replies that the caller's
``parse`` accepted are stored; failures are never cached, so a rerun retries them. Each insert is
committed at once, so a run killed midway keeps everything finished before the kill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CachedReply", "ReplyCache", "request_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (model, prompt_version, request_sha256)
)
"""


def request_hash(messages: list[dict[str, str]], temperature: float, sample: int = 0) -> str:
    """sha256 of the messages (canonical JSON); temperature and sample index join the key when
    sampling, so repeated samples at temperature > 0 are cached as distinct replies."""
    payload: dict[str, Any] = {"messages": messages}
    if temperature > 0 or sample:
        payload["temperature"] = round(float(temperature), 6)
        payload["sample"] = int(sample)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    """A stored reply and the token usage it cost when it was first obtained."""

    reply: str
    prompt_tokens: int
    completion_tokens: int


class ReplyCache:
    """Thread-safe SQLite store of parsed-OK replies (one file, WAL journal)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)
            self._conn.commit()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"LLM cache {self.path} is not a usable SQLite file ({exc}); delete it or set cache_path to another file") from exc

    def get(self, model: str, prompt_version: str, digest: str) -> CachedReply | None:
        """The cached reply for this key, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT reply, prompt_tokens, completion_tokens FROM replies WHERE model=? AND prompt_version=? AND request_sha256=?",
                (model, prompt_version, digest),
            ).fetchone()
        return None if row is None else CachedReply(row[0], int(row[1]), int(row[2]))

    def put(self, model: str, prompt_version: str, digest: str, reply: str, usage: dict[str, int]) -> None:
        """Store (or replace) a reply that passed parsing; committed immediately."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, prompt_version, digest, reply, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), time.time()),
            )
            self._conn.commit()

    def delete(self, model: str, prompt_version: str, digest: str) -> None:
        """Forget one entry (used when a cached reply no longer passes the caller's parser)."""
        with self._lock:
            self._conn.execute(
                "DELETE FROM replies WHERE model=? AND prompt_version=? AND request_sha256=?", (model, prompt_version, digest)
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
