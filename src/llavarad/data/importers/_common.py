"""Helpers shared by the dataset importers: CSV reading with line numbers, label values, views."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llavarad.errors import LlavaradError
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS, ManifestRecord
from llavarad.io.text import iter_csv_rows, read_csv_header

__all__ = [
    "ImportProblem",
    "DatasetLayoutError",
    "chexpert_labels",
    "find_file",
    "good_rows",
    "iter_csv",
    "label_value",
    "normalize_view",
    "record_or_problem",
]


@dataclass
class ImportProblem:
    """A row or file an importer could not turn into a clean record; ``where`` is file:line."""

    where: str
    message: str
    id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"where": self.where, "id": self.id, "error": self.message}


class DatasetLayoutError(LlavaradError, ValueError):
    """A dataset folder that does not have the layout of the official release (names the fix)."""


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """Return the first of ``names`` (relative to ``root``, ``.gz`` accepted) that exists."""
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise DatasetLayoutError(
        f"{root}: no {what} found (looked for {', '.join(names)}); pass the folder of the official "
        f"release or give the file's path explicitly"
    )


def iter_csv(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, str] | ImportProblem]]:
    """Stream ``(line_number, row)`` from a CSV (plain or .gz); check the required columns first.

    Read through :func:`llavarad.io.text.iter_csv_rows`: a row that cannot be read (short or long,
    an unclosed quote, an oversized cell, a NUL) comes back as ``(line, ImportProblem)``, never as a
    row with missing cells (which would read as "not mentioned"); a damaged .gz raises InputError.
    """
    rows = iter_csv_rows(path, width=0)
    columns = read_csv_header(rows, path, required, error=DatasetLayoutError,
                              hint="Is this the official release's file?")
    for row in rows:
        if row.fields is None:
            yield row.line, ImportProblem(f"{path}:{row.line}", row.error or f"{path}:{row.line}: unreadable row")
        else:
            yield row.line, dict(zip(columns, row.fields))


def good_rows(rows: Iterator[tuple[int, dict[str, str] | ImportProblem]],
              problems: list[ImportProblem]) -> Iterator[tuple[int, dict[str, str]]]:
    """The readable rows of :func:`iter_csv`; the unreadable ones go to ``problems`` (for lookup tables)."""
    for line, row in rows:
        if isinstance(row, ImportProblem):
            problems.append(row)
        else:
            yield line, row


def label_value(raw: str | None, where: str, column: str) -> float | None:
    """Parse a label cell: 1 / 0 / -1 (also "1.0"), blank or NaN -> None; anything else raises."""
    if raw is None:
        return None
    text = raw.strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"{where}: column {column!r} has {raw!r}; expected 1, 0, -1 or blank") from exc
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"{where}: column {column!r} has {raw!r}; expected 1, 0, -1 or blank")
    return value


def chexpert_labels(row: dict[str, str], where: str) -> dict[str, float | None]:
    """The 14 CheXpert observations of a CheXpert-style row (columns named as the labeler names them)."""
    return {obs: label_value(row.get(obs), where, obs) for obs in CHEXPERT_OBSERVATIONS if obs in row}


_VIEWS = {
    "PA": "PA", "POSTEROANTERIOR": "PA", "AP": "AP", "ANTEROPOSTERIOR": "AP", "AP_HORIZONTAL": "AP",
    "AP SUPINE": "AP", "LATERAL": "LATERAL", "LL": "LATERAL", "RL": "LATERAL", "L": "LATERAL",
    "LAT": "LATERAL", "LATERAL LEFT": "LATERAL", "LEFT LATERAL": "LATERAL", "RIGHT LATERAL": "LATERAL",
}


def normalize_view(raw: str | None) -> str | None:
    """Map a dataset's view code onto PA / AP / LATERAL; other codes are kept upper-cased."""
    if raw is None:
        return None
    text = str(raw).strip().upper()
    if not text or text in ("NAN", "NONE", "UNKNOWN"):
        return None
    return _VIEWS.get(text, text)


def record_or_problem(make: Callable[[], ManifestRecord], where: str, rid: str | None) -> ManifestRecord | ImportProblem:
    """Call ``make()``; a ``ValueError`` becomes an :class:`ImportProblem` naming the row."""
    try:
        return make()
    except ValueError as exc:
        msg = str(exc)
        return ImportProblem(where, msg if msg.startswith(where) else f"{where}: {msg}", rid)
