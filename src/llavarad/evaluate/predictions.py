"""Reading the predictions file of the generation stage into scorable pairs, never dropping a row silently.

Rows with ``error`` set are generation failures (counted and listed, not scored); malformed rows
(bad JSON, missing or non-string fields, empty reference, repeated id) are listed with file, line
and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Pair", "PredictionSet", "read_predictions"]


@dataclass
class Pair:
    """One scorable (reference, prediction) pair."""

    id: str
    reference: str
    prediction: str
    line: int


@dataclass
class PredictionSet:
    """Predictions file split into scorable pairs, generation failures and malformed rows."""

    pairs: list[Pair] = field(default_factory=list)
    generation_errors: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    n_rows: int = 0
    model: str | None = None
    generation_settings: dict[str, Any] | None = None


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a predictions JSONL file; never raises on a bad row, records it instead.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    from llavarad.io.text import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file (the JSONL output of `llavarad generate`)")
    out = PredictionSet()
    seen: dict[str, int] = {}
    for item in iter_jsonl(path):  # BOM, lone surrogates, deep nesting, NUL: one line-numbered problem each
        out.n_rows += 1
        if item.error is not None:
            out.problems.append({"line": item.line, "id": None, "error": item.error})
        else:
            _add_row(out, seen, path, item.line, item.value)
    return out


def _add_row(out: PredictionSet, seen: dict[str, int], path: Path, lineno: int, obj: Any) -> None:
    """Sort one decoded row into a pair, a generation error or a problem."""

    def bad(reason: str, rid: str | None = None) -> None:
        out.problems.append({"line": lineno, "id": rid, "error": f"{path}:{lineno}: {reason}"})

    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid).strip() == "":
        return bad(f"field 'id' is missing or not a string/integer ({rid!r})")
    rid = str(rid)
    if rid in seen:
        return bad(f"duplicate id {rid!r} (first on line {seen[rid]}); only the first is scored", rid)
    seen[rid] = lineno
    if out.model is None and isinstance(obj.get("model"), str):
        out.model = obj["model"]
    if out.generation_settings is None and isinstance(obj.get("settings"), dict):
        out.generation_settings = obj["settings"]
    if obj.get("error") not in (None, "", False):  # "error": false is a success, as other tools write it
        out.generation_errors.append({"line": lineno, "id": rid, "error": str(obj["error"])})
        return None
    ref, pred = obj.get("reference"), obj.get("prediction")
    if not isinstance(ref, str) or not ref.strip():
        return bad(f"field 'reference' is {'empty' if isinstance(ref, str) else repr(ref)}: nothing to score "
                   "against; give each row its reference report", rid)
    if not isinstance(pred, str):
        return bad(f"field 'prediction' is {pred!r}, not a string (use '' for an empty report)", rid)
    out.pairs.append(Pair(rid, ref, pred, lineno))
    return None
