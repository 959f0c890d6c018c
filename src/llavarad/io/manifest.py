"""Manifest records: the one schema for every image-text pair, validated reading, safe writing.

A manifest is JSON Lines, one record per line (see DESIGN.md, "Manifest record"). Image paths may
be relative to the manifest's folder. Reading validates each line and names the file, line and
field of any problem. Writing is append-only and crash-safe: every line is flushed and fsynced as a
whole, and a torn last line left by ``kill -9`` is detected and cut off on resume, so a batch job
never loses finished work and never leaves a broken file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.errors import LlavaradError

logger = logging.getLogger(__name__)

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "SPLITS",
    "TEXT_SOURCES",
    "ManifestError",
    "ManifestRecord",
    "JsonlWriter",
    "read_jsonl",
    "read_manifest",
    "iter_manifest",
    "resolve_image_path",
    "write_manifest",
]

#: The 14 CheXpert observations, in the labeler's column order.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

SPLITS: tuple[str, ...] = ("train", "validate", "test")
TEXT_SOURCES: tuple[str, ...] = ("original", "rule_based", "llm_structured", "label_template", "translated")
TextSource = Literal["original", "rule_based", "llm_structured", "label_template", "translated"]

_REQUIRED = ("id", "image", "dataset", "split")
_OPTIONAL_STR = ("patient_id", "study_id", "view", "indication", "findings", "impression")


class ManifestError(LlavaradError, ValueError):
    """A manifest line that does not follow the schema; the message names file, line and field."""

    def __init__(self, path: str | Path, line: int, field_name: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field_name
        where = f"{path}:{line}" + (f" field {field_name!r}" if field_name else "")
        super().__init__(f"{where}: {message}")


@dataclass
class ManifestRecord:
    """One image-text record. ``extra`` keeps unknown fields so that round trips lose nothing."""

    id: str
    image: str
    dataset: str
    split: str
    patient_id: str | None = None
    study_id: str | None = None
    view: str | None = None
    indication: str | None = None
    findings: str | None = None
    impression: str | None = None
    labels: dict[str, float | None] = field(default_factory=dict)
    text_source: str = "original"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "dataset": self.dataset,
            "split": self.split,
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "view": self.view,
            "indication": self.indication,
            "findings": self.findings,
            "impression": self.impression,
            "labels": dict(self.labels),
            "text_source": self.text_source,
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path = "<dict>", line: int = 0) -> ManifestRecord:
        """Validate one decoded JSON object; raise :class:`ManifestError` on the first bad field."""
        if not isinstance(data, dict):
            raise ManifestError(path, line, None, f"expected a JSON object, got {type(data).__name__}")
        for name in _REQUIRED:
            value = data.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ManifestError(path, line, name, "required field is missing or empty")
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ManifestError(path, line, name, f"expected a string, got {value!r}")
        split = str(data["split"])
        if split not in SPLITS:
            raise ManifestError(path, line, "split", f"{split!r} is not one of {', '.join(SPLITS)}")
        for name in _OPTIONAL_STR:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("patient_id", "study_id"):
                    continue
                raise ManifestError(path, line, name, f"expected a string or null, got {value!r}")
        labels = data.get("labels") or {}
        if not isinstance(labels, dict):
            raise ManifestError(path, line, "labels", f"expected an object {{observation: 1, 0, -1 or null}}, got {labels!r}")
        for obs, value in labels.items():
            if value is not None and (isinstance(value, bool) or value not in (1, 0, -1)):
                raise ManifestError(path, line, f"labels.{obs}", f"{value!r} is not one of 1, 0, -1, null")
        text_source = data.get("text_source", "original")
        if text_source not in TEXT_SOURCES:
            raise ManifestError(path, line, "text_source", f"{text_source!r} is not one of {', '.join(TEXT_SOURCES)}")
        known = set(_REQUIRED) | set(_OPTIONAL_STR) | {"labels", "text_source"}
        return cls(
            id=str(data["id"]),
            image=str(data["image"]),
            dataset=str(data["dataset"]),
            split=split,
            patient_id=None if data.get("patient_id") is None else str(data["patient_id"]),
            study_id=None if data.get("study_id") is None else str(data["study_id"]),
            view=data.get("view"),
            indication=data.get("indication"),
            findings=data.get("findings"),
            impression=data.get("impression"),
            labels={k: (None if v is None else float(v)) for k, v in labels.items()},
            text_source=text_source,
            extra={k: v for k, v in data.items() if k not in known},
        )


def read_jsonl(path: str | Path, *, skip_torn_tail: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    A final line without a newline that does not parse (a write torn by a kill) is skipped with a
    warning when ``skip_torn_tail``; any other unreadable line (see :func:`llavarad.io.text.iter_jsonl`)
    raises :class:`ManifestError`. Verbs that must go on past a bad line use ``iter_jsonl`` itself.
    """
    from llavarad.io.text import check_regular_file, iter_jsonl

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such file")
    check_regular_file(path)
    for item in iter_jsonl(path):
        if item.error is not None:
            # Only the final line can lack its newline; that is what an interrupted write leaves.
            if skip_torn_tail and not item.complete:
                logger.warning("%s:%d: ignoring an incomplete last line (interrupted write)", path, item.line)
                return
            raise ManifestError(path, item.line, None, item.error.split(": ", 1)[-1])
        yield item.line, item.value


def iter_manifest(path: str | Path) -> Iterator[ManifestRecord]:
    """Stream validated records from a JSONL manifest (constant memory)."""
    for line, obj in read_jsonl(path):
        yield ManifestRecord.from_dict(obj, path, line)


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Read and validate a whole JSONL manifest; duplicate ids are an error."""
    records: list[ManifestRecord] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        rec = ManifestRecord.from_dict(obj, path, line)
        if rec.id in seen:
            raise ManifestError(path, line, "id", f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = line
        records.append(rec)
    return records


def resolve_image_path(image: str, manifest_path: str | Path | None) -> Path:
    """Image paths in a manifest may be relative to the manifest's folder."""
    p = Path(image)
    if p.is_absolute() or manifest_path is None:
        return p
    return Path(manifest_path).resolve().parent / p


class JsonlWriter:
    """Append-only, crash-safe JSONL writer that supports resuming.

    On open, an existing file is scanned: a torn last line is truncated away and the values of
    ``key`` already present are available as :attr:`done`, so callers skip finished work. Each
    :meth:`write` emits one complete line, flushes and (by default) fsyncs it. ``key=None`` keeps
    no :attr:`done` set (constant memory for files of millions of rows whose callers track
    progress on disk).
    """

    def __init__(self, path: str | Path, key: str | None = "id", *, resume: bool = True, fsync: bool = True):
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._repair_and_scan()
        elif self.path.exists():
            self.path.unlink()
        self._fh = self.path.open("ab")

    def _repair_and_scan(self) -> None:
        good_end = 0
        bad_line: int | None = None
        with self.path.open("rb") as fh:  # streamed: resuming a huge output needs no big buffer
            for number, raw in enumerate(fh, start=1):
                if bad_line is not None:
                    if raw.strip():  # damage before the end is not an interrupted write: never cut good rows
                        raise ManifestError(self.path, bad_line, None, "not valid JSON; repair or remove this line to resume")
                    continue
                if not raw.endswith(b"\n"):
                    break  # torn tail: no newline
                if raw.strip():
                    try:
                        obj = json.loads(raw.decode("utf-8"))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        bad_line = number
                        continue
                    if self.key is not None and isinstance(obj, dict) and self.key in obj:
                        self.done.add(str(obj[self.key]))
                good_end += len(raw)
        size = self.path.stat().st_size
        if good_end < size:
            logger.warning("%s: dropping %d bytes of an interrupted write", self.path, size - good_end)
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)

    def write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        if self.key is not None and self.key in obj:
            self.done.add(str(obj[self.key]))

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_manifest(records: Iterable[ManifestRecord | dict[str, Any]], path: str | Path) -> int:
    """Write records to a new JSONL manifest atomically (temp file + rename); return the count."""
    from llavarad.io.outputs import atomic_write

    n = 0
    with atomic_write(path) as fh:  # a failure while records are produced leaves no .tmp and no half file
        for rec in records:
            obj = rec.to_dict() if isinstance(rec, ManifestRecord) else rec
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n
