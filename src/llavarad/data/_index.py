"""A key -> JSON value table in a temporary SQLite file, for joins that must not hold a whole
dataset in memory (MIMIC-CXR's 377k split rows, 227k label rows, structured reports)."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["DiskIndex"]


class DiskIndex:
    """Write once with :meth:`put_many`, then :meth:`get` by key; the file is deleted on close."""

    def __init__(self, directory: str | Path | None = None):
        fd, name = tempfile.mkstemp(prefix="llavarad-index-", suffix=".sqlite", dir=directory)
        os.close(fd)
        self.path = Path(name)
        self._db = sqlite3.connect(name)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        self.size = 0

    def put_many(self, items: Iterable[tuple[str, Any]], chunk: int = 10_000) -> int:
        """Insert ``(key, value)`` pairs (a later duplicate key replaces the earlier); return the count."""
        batch: list[tuple[str, str]] = []
        n = 0
        for key, value in items:
            batch.append((key, json.dumps(value, ensure_ascii=False)))
            if len(batch) >= chunk:
                self._db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", batch)
                n += len(batch)
                batch.clear()
        if batch:
            self._db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", batch)
            n += len(batch)
        self._db.commit()
        self.size += n
        return n

    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> DiskIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
