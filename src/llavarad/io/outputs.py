"""Output safety shared by every verb that writes: never over an input, never into someone's folder.

:func:`check_output` is called by each verb before it writes anything. It refuses an output that
is one of the verb's inputs, however spelled (so ``merge-lora
--out`` equal to ``--base`` or ``label --out`` equal to its input fail before a byte is written),
and a non-empty output folder unless the user passed ``--overwrite``. :func:`atomic_write` writes
a file through a temporary sibling that is renamed into place on success and removed on failure,
so an interrupted or failed write leaves neither a half file nor a ``.tmp`` behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

from llavarad.errors import OutputError

__all__ = ["atomic_write", "check_output"]


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *,
                 kind: Literal["file", "dir"] = "file", overwrite: bool = False,
                 flag: str = "--out", resumable: bool = False) -> Path:
    """Check that writing ``out`` destroys nothing; return it. Raise :class:`OutputError` otherwise.

    ``inputs`` are the files and folders the verb reads (``None`` entries are ignored).
    ``kind="dir"``: ``out`` is a folder the verb fills; a non-empty one is refused unless
    ``overwrite`` (or ``resumable``: the verb resumes its own earlier output there).
    ``kind="file"``: an existing ``out`` that is a folder is refused.
    """
    target = _real(out)
    for item in inputs:
        if item is None:
            continue
        source = _real(item)
        if target == source:  # also through symlinks and ./.. spellings: both are resolved
            raise OutputError(f"{flag} {out} is the input {item}: writing there would destroy it; "
                              f"choose another {flag}")
    path = Path(out)
    if kind == "file" and path.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name")
    if kind == "dir" and path.exists():
        if not path.is_dir():
            raise OutputError(f"{flag} {out} is a file, not a folder; choose a folder name")
        if not (overwrite or resumable) and any(path.iterdir()):
            raise OutputError(f"{flag} {out} exists and is not empty: choose a new folder, or pass --overwrite "
                              "to write into it")
    if kind == "file" and path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{flag} {out}: {path.parent} is a file, not a folder")
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: Literal["w", "wb"] = "w", **open_kwargs: object) -> Iterator[IO]:
    """Open ``path + '.tmp'`` for writing; rename it onto ``path`` on success, remove it on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
