"""The labeler's files: reports read from a CSV or JSONL file, labels written as the CheXpert labeler's CSV.

Reading goes through :mod:`llavarad.io.text`, so encodings, delimiters, unclosed quotes, oversized
cells and damaged JSON lines are handled as everywhere else: every row comes back with its
``file:line`` and either its text or the reason it cannot be labeled, and nothing is dropped.

Which column holds the report: ``text_column`` when given (``a+b`` joins columns with a space),
else the first of :data:`DEFAULT_COLUMNS` present. A CSV of one column and no known header is the
original labeler's input (no header, one report per row). A CSV of several columns and no known
one is refused with the list of its columns, never guessed.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llavarad.io.manifest import CHEXPERT_OBSERVATIONS
from llavarad.io.outputs import atomic_write
from llavarad.io.text import iter_csv_rows, iter_jsonl, pick_column

__all__ = ["DEFAULT_COLUMNS", "ReportRow", "read_reports", "write_labels"]

#: Columns tried, in order, when no text column is given.
DEFAULT_COLUMNS: tuple[str, ...] = ("Reports", "report", "text", "findings+impression", "prediction", "reference")


@dataclass
class ReportRow:
    """One input row: where it is (``file:line``), its report text, or the reason it cannot be labeled."""

    where: str
    text: str | None
    error: str | None = None


def _pick(row: dict, column: str) -> tuple[str | None, str | None]:
    """Text of ``column`` ("a+b" joins columns with a space) in ``row``, or an error message."""
    parts, nulls = [], []
    names = column.split("+")
    for name in names:
        if name not in row:
            return None, f"no column {name!r} (columns: {', '.join(map(str, row))})"
        value = row[name]
        if value is None:
            nulls.append(name)
            continue
        if not isinstance(value, str):
            return None, f"column {name!r} holds {type(value).__name__} {value!r:.40}, not text"
        parts.append(value.strip())
    if len(nulls) == len(names):  # null is "no report", not an empty one: labeling it would say No Finding
        return None, f"column {column!r} is null: no report to label (use \"\" for an empty report)"
    return " ".join(p for p in parts if p), None


def _read_jsonl(path: Path, text_column: str | None) -> tuple[str, list[ReportRow]]:
    lines = list(iter_jsonl(path))
    column = text_column
    if column is None:
        first = next((x.value for x in lines if x.error is None and isinstance(x.value, dict)), {})
        column = pick_column(path, list(first), None, DEFAULT_COLUMNS)
    rows = []
    for item in lines:
        where = f"{path}:{item.line}"
        if item.error is not None:
            rows.append(ReportRow(where, None, item.error.removeprefix(f"{where}: ")))
        elif not isinstance(item.value, dict):
            rows.append(ReportRow(where, None, f"expected a JSON object, got {type(item.value).__name__}"))
        else:
            rows.append(ReportRow(where, *_pick(item.value, column)))
    return column, rows


def _read_csv(path: Path, text_column: str | None) -> tuple[str, list[ReportRow]]:
    records = iter_csv_rows(path, width=0)
    first = next(records, None)
    if first is None:
        return text_column or "Reports", []
    if first.fields is None:
        from llavarad.errors import InputError

        raise InputError(f"{first.error}: the first row cannot be read")
    header = first.fields
    if text_column is None and len(header) == 1 and header[0] not in DEFAULT_COLUMNS:
        # the original labeler's format: no header, one report per row
        rows = [ReportRow(f"{path}:{first.line}", header[0])]
        rows += [ReportRow(f"{path}:{r.line}", r.fields[0] if r.fields else None,
                           None if r.fields else _strip_where(r.error, path, r.line)) for r in records]
        return "Reports", rows
    column = pick_column(path, header, text_column, DEFAULT_COLUMNS)
    rows = []
    for r in records:
        if r.fields is None:
            rows.append(ReportRow(f"{path}:{r.line}", None, _strip_where(r.error, path, r.line)))
        else:
            rows.append(ReportRow(f"{path}:{r.line}", *_pick(dict(zip(header, r.fields)), column)))
    return column, rows


def _strip_where(error: str | None, path: Path, line: int) -> str:
    return (error or "unreadable").removeprefix(f"{path}:{line}: ")


def read_reports(path: str | Path, text_column: str | None = None) -> tuple[str, list[ReportRow]]:
    """Read the reports of a CSV or JSONL file: ``(column, rows)``, one :class:`ReportRow` per input row.

    Raises:
        llavarad.errors.InputError: the file cannot be read at all, or has no such column (the
            message lists the columns it has).
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_jsonl(path, text_column)
    return _read_csv(path, text_column)


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def write_labels(path: str | Path, column: str, texts: Sequence[str],
                 labels: Sequence[dict[str, float | None]]) -> None:
    """Write the labels CSV (the text column, then the 14 observations) atomically, as the CheXpert labeler does."""
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # as pandas writes it
        writer.writerow([column, *CHEXPERT_OBSERVATIONS])
        for text, lab in zip(texts, labels, strict=True):
            writer.writerow([text, *(_format(lab[obs]) for obs in CHEXPERT_OBSERVATIONS)])
