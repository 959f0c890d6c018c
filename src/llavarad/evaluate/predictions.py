"""Reading the predictions file of the generation stage into scorable pairs, never dropping a row silently.

Rows with ``error`` set are generation failures (counted and listed, not scored); malformed rows
(bad JSON, missing or non-string fields, empty reference, repeated id) are listed with file, line
and reason.
"""

from __future__ import annotations

import json
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file (the JSONL output of `llavarad generate`)")
    out = PredictionSet()
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            out.n_rows += 1

            def bad(reason: str, rid: str | None = None) -> None:
                out.problems.append({"line": lineno, "id": rid, "error": f"{path}:{lineno}: {reason}"})

            try:
                obj = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                bad(f"not valid JSON ({exc.__class__.__name__}); fix or remove the line")
                continue
            if not isinstance(obj, dict):
                bad(f"expected a JSON object, got {type(obj).__name__}")
                continue
            rid = obj.get("id")
            if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid).strip() == "":
                bad(f"field 'id' is missing or not a string/integer ({rid!r})")
                continue
            rid = str(rid)
            if rid in seen:
                bad(f"duplicate id {rid!r} (first on line {seen[rid]}); only the first is scored", rid)
                continue
            seen[rid] = lineno
            if out.model is None and isinstance(obj.get("model"), str):
                out.model = obj["model"]
            if out.generation_settings is None and isinstance(obj.get("settings"), dict):
                out.generation_settings = obj["settings"]
            if obj.get("error") not in (None, ""):
                out.generation_errors.append({"line": lineno, "id": rid, "error": str(obj["error"])})
                continue
            ref, pred = obj.get("reference"), obj.get("prediction")
            if not isinstance(ref, str) or not ref.strip():
                bad(f"field 'reference' is {'empty' if isinstance(ref, str) else repr(ref)}: nothing to score against; "
                    "give each row its reference report", rid)
                continue
            if not isinstance(pred, str):
                bad(f"field 'prediction' is {pred!r}, not a string (use '' for an empty report)", rid)
                continue
            out.pairs.append(Pair(rid, ref, pred, lineno))
    return out
