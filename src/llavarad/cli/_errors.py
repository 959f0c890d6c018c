"""How the CLI reports a failure: one clear line on stderr, a non-zero exit code, the traceback only with -v.

Library errors (:class:`llavarad.errors.LlavaradError` and the area errors deriving from it) carry
a message written for the user and are printed as they are. Operating-system errors name the file
and the reason. Damaged archives (``EOFError``, ``zlib.error``, ``tarfile.ReadError``, ...) are said
to be damaged input; they are never mistaken for Ctrl-C. Anything else is a bug or an unforeseen
input: it still gets one line, with the exception type, and the hint to rerun with ``-v``.
Ctrl-C alone exits 130.
"""

from __future__ import annotations

import errno
import logging
import re
import traceback
from dataclasses import dataclass

import click

from llavarad.errors import LlavaradError

__all__ = ["STATE", "SafeFormatter", "report", "safe_text"]

#: Longest message printed; a message quoting a 3 MB cell would bury the terminal.
_MAX_MESSAGE = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


@dataclass
class _State:
    verbose: int = 0


#: Set by the top-level group from ``-v``; read when an exception is reported.
STATE = _State()


def safe_text(text: str, limit: int = _MAX_MESSAGE) -> str:
    """``text`` with control characters (NUL, ESC, ...) and lone surrogates escaped, cut to ``limit``."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        text)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


class SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters, so a NUL or an escape sequence in an input never
    reaches a log line or a terminal raw."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), limit=20000)


def _is_damaged_archive(exc: BaseException) -> bool:
    import tarfile
    import zipfile
    import zlib

    return isinstance(exc, (EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile)) or (
        type(exc).__name__ == "BadGzipFile")


def _message(exc: BaseException) -> tuple[str, bool]:
    """The one line for ``exc`` and whether it is an unforeseen error (then -v is suggested)."""
    if isinstance(exc, LlavaradError) or type(exc).__module__.startswith("llavarad."):
        return str(exc), False  # raised on purpose by the library, with a message for the user
    if _is_damaged_archive(exc):
        return (f"damaged or truncated input ({type(exc).__name__}: {exc or 'unexpected end of data'}); "
                "re-download or re-copy the file"), False
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ELOOP:
            return f"{where}a symbolic link loop (the link points back at itself); fix the link", False
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on the device; free space or choose another --out", False
        reason = exc.strerror or str(exc)
        return f"{where}{reason}", False
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to read (RecursionError); check the file for damage", False
    if isinstance(exc, MemoryError):
        return "out of memory; an input is far larger than expected, or lower --batch-size", False
    return f"unexpected {type(exc).__name__}: {exc}", True


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (and the traceback with -v); return the exit code."""
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)) and not _is_damaged_archive(
            exc.__cause__ or exc.__context__ or exc):
        click.echo("Aborted.", err=True)
        return 130
    if isinstance(exc, click.exceptions.Abort):  # click turns EOFError into Abort: report the real cause
        exc = exc.__cause__ or exc.__context__ or exc
    text, unforeseen = _message(exc)
    if STATE.verbose:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    hint = " (rerun with -v for the traceback)" if unforeseen and not STATE.verbose else ""
    click.echo(f"Error: {safe_text(text)}{hint}", err=True)
    return 1

