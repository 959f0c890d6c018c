"""Safe readers for the text inputs of every verb: plain text, CSV and JSON Lines, plain or gzipped.

One place decides what a damaged or hostile input becomes, so every verb says the same thing:

- Only regular files are read: a FIFO, a device (``/dev/zero``), a folder or a symbolic-link loop
  is refused by name (:func:`check_regular_file`); whole-file reads are bounded (:func:`read_text`).
- Bytes are decoded line by line as UTF-8 (a BOM is dropped); a line that is not UTF-8 is read as
  Latin-1 and counted, and the count is logged once per file, naming the first such line.
- A truncated or garbage ``.gz`` raises :class:`~llavarad.errors.InputError` naming the archive,
  never ``EOFError`` (which the CLI framework would mistake for Ctrl-C).
- CSV: the delimiter is sniffed among ``, ; TAB |`` and kept only when the header and the rows
  agree on a field count; rows that cannot be read (unclosed quote, a cell over ``max_cell``
  characters, a NUL, a field count that is not the header's) become :class:`CsvRow` errors with
  their line number, and reading goes on.
- JSONL: each line becomes a :class:`JsonLine` holding an object or an error (not JSON, not
  UTF-8, a lone surrogate, nesting deeper than :data:`MAX_DEPTH`, a NUL character, a line over
  ``max_line`` bytes); one bad line never stops the file.
"""

from __future__ import annotations

import codecs
import csv
import errno
import gzip
import json
import logging
import os
import re
import stat
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavarad.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_CELL",
    "MAX_DEPTH",
    "MAX_LINE",
    "CsvRow",
    "CsvTable",
    "JsonLine",
    "check_regular_file",
    "iter_csv_rows",
    "iter_jsonl",
    "iter_lines",
    "pick_column",
    "read_csv",
    "read_csv_header",
    "read_text",
]

#: Longest CSV cell read (characters); longer means an unclosed quote or a file that is not a table.
MAX_CELL = 1 << 20
#: Longest JSONL line read (bytes).
MAX_LINE = 64 << 20
#: Deepest JSON nesting accepted (a manifest row is 2-3 deep).
MAX_DEPTH = 64
_DELIMITERS = (",", ";", "\t", "|")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` if it is a readable regular file; else raise :class:`InputError` saying what it is."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: a symbolic link loop (the link leads back to itself); fix the link") from exc
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise InputError(f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist") from exc
        if exc.errno == errno.ENOENT:
            raise InputError(f"{path}: no such {what}") from exc
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
            else "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else None)
    if kind is not None:
        article = "an" if what[:1] in "aeiou" else "a"
        raise InputError(f"{path}: is {kind}, not a regular {what}; give the path of {article} {what}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (cannot read the {what})")
    return path


def _gz_lines(path: Path, limit: int) -> Iterator[bytes]:
    try:
        with gzip.open(path, "rb") as fh:
            yield from _bounded_lines(fh, limit)
    except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise
        raise InputError(f"{path}: damaged gzip archive ({exc or 'truncated'}); re-download or re-copy it") from exc


def iter_lines(path: str | Path, *, limit: int = MAX_LINE) -> Iterator[bytes]:
    """Yield the raw lines (with their newline) of a regular file, plain or ``.gz``; a line is cut at ``limit`` bytes."""
    path = check_regular_file(path)
    if path.suffix.lower() == ".gz":
        yield from _gz_lines(path, limit)
        return
    with path.open("rb") as fh:
        yield from _bounded_lines(fh, limit)


def _bounded_lines(fh: Any, limit: int) -> Iterator[bytes]:
    """Lines of a binary file; one longer than ``limit`` is yielded cut to ``limit + 1`` bytes, its rest skipped."""
    while line := fh.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield line


def read_text(path: str | Path, *, limit: int = 16 << 20, what: str = "file") -> str:
    """The whole text of a regular file (UTF-8, else Latin-1), refused when over ``limit`` bytes."""
    path = check_regular_file(path, what)
    with path.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit:,} bytes; this {what} is not what was expected")
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        logger.warning("%s: not UTF-8 (byte %d); read as Latin-1", path, exc.start)
        return data.decode("latin-1")


class _Decoder:
    """Decodes lines as UTF-8, falling back per line to Latin-1; remembers how many lines needed it."""

    def __init__(self, path: Path):
        self.path, self.latin1, self.first_latin1 = path, 0, 0

    def __call__(self, raw: bytes, number: int) -> str:
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.latin1 += 1
            self.first_latin1 = self.first_latin1 or number
            return raw.decode("latin-1")

    def log(self) -> None:
        if self.latin1:
            logger.warning("%s: %d line(s) are not UTF-8 (first: line %d); read as Latin-1. Save the file as "
                           "UTF-8 if that is wrong", self.path, self.latin1, self.first_latin1)


@dataclass
class CsvRow:
    """One CSV record: ``fields`` (with ``line``, where the record starts) or an ``error`` saying why not."""

    line: int
    fields: list[str] | None
    error: str | None = None


def _sniff(sample: list[str]) -> str:
    """The delimiter on which the header and the sample rows agree on a field count of 2 or more."""
    best, best_score = ",", -1
    for delim in _DELIMITERS:
        try:
            rows = list(csv.reader(sample, delimiter=delim))
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        agree = sum(len(r) == width for r in rows[1:])
        if rows[1:] and agree < 0.9 * len(rows[1:]):  # the check: most rows must have the header's width
            continue
        score = agree * 100 + width
        if score > best_score:
            best, best_score = delim, score
    return best


def iter_csv_rows(path: str | Path, *, delimiter: str | None = None, max_cell: int = MAX_CELL,
                  width: int | None = None) -> Iterator[CsvRow]:
    """Yield every record of a CSV (plain or .gz) as a :class:`CsvRow`; bad records become errors.

    ``delimiter=None`` sniffs it from the first 50 lines. ``width`` (a field count) makes rows of
    another width errors; the first record (the header) sets it when ``width`` is 0.
    """
    path = Path(path)
    decode = _Decoder(path)
    lines = (decode(raw, n) for n, raw in enumerate(iter_lines(path, limit=max(max_cell * 4, MAX_LINE)), 1))
    head: list[str] = []
    for text in lines:
        head.append(text)
        if len(head) >= 50:
            break
    delim = delimiter or _sniff(head)
    if csv.field_size_limit() < max_cell + 1:
        csv.field_size_limit(max_cell + 1)

    def chained() -> Iterator[str]:
        yield from head
        yield from lines

    reader = csv.reader(chained(), delimiter=delim, strict=True)
    last, merged = 0, []
    while True:
        start = last + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            last = reader.line_num
            span = f" (lines {start}-{last} were read as one record)" if last > start else ""
            what = (f"a quote opened here is never closed{span}" if "end of data" in str(exc)
                    else f"a cell longer than {max_cell:,} characters (an unclosed quote?)" if "field limit" in str(exc)
                    else f"malformed CSV ({exc})")
            yield CsvRow(start, None, f"{path}:{start}: {what}; the record is skipped")
            continue
        last = reader.line_num
        if not fields or fields == [""]:
            continue
        if width == 0:
            width = len(fields)
        if last > start and width and width >= 2 and _holds_rows(fields, delim, width):
            merged.append((start, last))
        yield _check_row(path, start, fields, width, max_cell)
    decode.log()
    if merged:  # valid CSV, but maybe a quote closed far too late: say so rather than merge rows silently
        logger.warning("%s: %d record(s) hold line breaks with what look like whole rows inside a quoted cell "
                       "(first: lines %d-%d); if that is not intended, a quote is not closed there",
                       path, len(merged), *merged[0])


def _holds_rows(fields: list[str], delim: str, width: int) -> bool:
    """Whether a multi-line cell contains a line that parses as a whole row of ``width`` fields."""
    for cell in fields:
        for line in cell.split("\n")[1:]:
            if line.count(delim) == width - 1 and len(next(csv.reader([line], delimiter=delim), [])) == width:
                return True
    return False


def _check_row(path: Path, line: int, fields: list[str], width: int | None, max_cell: int) -> CsvRow:
    if width is not None and len(fields) != width:
        return CsvRow(line, None, f"{path}:{line}: {len(fields)} fields where the header has {width}; "
                                  "the record is skipped")
    for cell in fields:
        if len(cell) > max_cell:
            return CsvRow(line, None, f"{path}:{line}: a cell of {len(cell):,} characters (limit {max_cell:,})")
        if "\x00" in cell:
            return CsvRow(line, None, f"{path}:{line}: a NUL character in a cell (binary data?)")
    return CsvRow(line, fields)


@dataclass
class CsvTable:
    """A CSV read whole: its header, the good records as dicts (with line numbers) and the unreadable ones."""

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]
    problems: list[tuple[int, str]]


def read_csv(path: str | Path, *, required: Sequence[str] = (), delimiter: str | None = None,
             max_cell: int = MAX_CELL) -> CsvTable:
    """Read a CSV with a header; a missing ``required`` column raises :class:`InputError` naming the columns found."""
    rows_iter = iter_csv_rows(path, delimiter=delimiter, max_cell=max_cell, width=0)
    header = read_csv_header(rows_iter, path, required)
    table = CsvTable(Path(path), header, [], [])
    for row in rows_iter:
        if row.fields is None:
            table.problems.append((row.line, row.error or "unreadable"))
        else:
            table.rows.append((row.line, dict(zip(header, row.fields))))
    return table


def read_csv_header(rows: Iterator[CsvRow], path: str | Path, required: Sequence[str] = (), *,
                    error: type[Exception] = InputError, hint: str = "Is this the expected file?") -> list[str]:
    """Take the header row off ``rows`` (from :func:`iter_csv_rows`) and check the ``required`` columns;
    an unreadable header or a missing column raises ``error`` naming the columns found and ``hint``."""
    first = next(rows, None)
    if first is not None and first.fields is None:
        raise error(f"{first.error}: the header row cannot be read")
    header = list(first.fields) if first is not None else []
    missing = [c for c in required if c not in header]
    if missing:
        raise error(f"{path}: missing column(s), no column {', '.join(map(repr, missing))}; "
                    f"the header has {_columns(header)}. {hint}")
    return header


def _columns(header: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in header[:12])
    return (shown + (" ..." if len(header) > 12 else "")) if header else "no columns"


def pick_column(path: str | Path, header: Sequence[str], wanted: str | None, known: Sequence[str],
                flag: str = "--text-column") -> str:
    """The column to read: ``wanted`` if given (``a+b`` joins columns), else the first of ``known`` present.

    Raises :class:`InputError` naming the columns the file has and the flag that chooses one.
    """
    if wanted is not None:
        missing = [p for p in wanted.split("+") if p not in header]
        if missing:
            raise InputError(f"{path}: no column {', '.join(map(repr, missing))}; the file has {_columns(header)}. "
                             f"Choose one with {flag}")
        return wanted
    found = next((c for c in known if all(p in header for p in c.split("+"))), None)
    if found is None:
        raise InputError(f"{path}: none of the known columns ({', '.join(known)}) is present; the file has "
                         f"{_columns(header)}. Choose one with {flag}")
    return found


@dataclass
class JsonLine:
    """One non-blank JSONL line: the decoded ``value`` or an ``error`` (the message names file and line)."""

    line: int
    value: Any = None
    error: str | None = None
    complete: bool = True  # False for a last line without a newline (a write torn by a kill)


def _depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _has_bad_char(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character in a string"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone surrogate (\\ud800-\\udfff) in a string"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def decode_json_line(raw: bytes, where: str, *, first: bool = False) -> tuple[Any, str | None]:
    """Decode one JSONL line; return ``(value, None)`` or ``(None, message)``. Never raises."""
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
    if b"\x00" in raw:
        return None, f"{where}: a NUL byte in the line (binary data?); fix or remove the line"
    if (raw.count(b"[") + raw.count(b"{")) > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
        return None, f"{where}: JSON nested deeper than {MAX_DEPTH} levels; fix or remove the line"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"{where}: not UTF-8 (byte {exc.start}); JSON Lines must be UTF-8"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line"
    except RecursionError:
        return None, f"{where}: JSON nested too deeply; fix or remove the line"
    if b"\\u" in raw and (_SURROGATE_ESCAPE.search(raw) or b"\\u0000" in raw):
        bad = _has_bad_char(value)
        if bad:
            return None, f"{where}: {bad}; fix or remove the line"
    return value, None


def iter_jsonl(path: str | Path, *, limit: int = MAX_LINE) -> Iterator[JsonLine]:
    """Yield a :class:`JsonLine` for every non-blank line; never raises for a bad line (only for a bad file)."""
    path = Path(path)
    for number, raw in enumerate(iter_lines(path, limit=limit), 1):
        if len(raw) > limit:
            yield JsonLine(number, None, f"{path}:{number}: a line over {limit:,} bytes; fix or remove the line")
            continue
        if not raw.strip() or (number == 1 and raw.strip() == codecs.BOM_UTF8):
            continue
        value, error = decode_json_line(raw, f"{path}:{number}", first=number == 1)
        yield JsonLine(number, value, error, raw.endswith(b"\n"))
