"""LLM steps of data preparation: report structuring, PadChest translation, findings extraction.

Each step reads an imported manifest, makes one request per report (a study's images share one
report, so one request per study), sends them through the shared :class:`llavarad.llm.LLMClient`
(cache, retries, concurrency, rate limits, token counts) in bounded chunks, and appends one JSON
line per finished report to the output with :class:`~llavarad.io.manifest.JsonlWriter`::

    {"id": "mimic-cxr/50414267", "task": "structure", "text_source": "llm_structured",
     "sections": {"examination": ..., "indication": ..., "findings": ..., "impression": ...},
     "prompt_version": "structuring-v1", "model": "gpt-4o", "cached": false, "attempts": 1}

Reports whose reply never validated go to ``<out>.errors.jsonl`` with the error and every raw
reply, not to the output, so a rerun retries them (successful replies come from the cache and
cost nothing) and a killed run resumes where it stopped. The builders join these files to the
manifest by ``id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from llavarad.io.manifest import JsonlWriter, ManifestRecord
from llavarad.prompts.structuring import (
    FINDINGS_VERSION,
    STRUCTURING_VERSION,
    TRANSLATION_VERSION,
    findings_messages,
    parse_findings,
    parse_structuring,
    parse_translation,
    structuring_messages,
    translation_messages,
)

logger = logging.getLogger(__name__)

__all__ = ["TASKS", "LLMStepSummary", "Task", "report_key", "report_text", "run_llm_step"]

Task = Literal["structure", "translate", "findings"]
TASKS: tuple[str, ...] = ("structure", "translate", "findings")


@dataclass
class LLMStepSummary:
    """What one run of a step did; ``stats`` is the client's token / cost / retry totals."""

    task: str
    reports: int = 0
    already_done: int = 0
    not_applicable: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    unreadable: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def report_key(rec: ManifestRecord) -> str:
    """The id one report is known by: ``<dataset>/<study_id>`` (an image's own id if no study)."""
    return f"{rec.dataset}/{rec.study_id}" if rec.study_id else rec.id


def report_text(rec: ManifestRecord, task: Task) -> str:
    """The source text a step sends: the Spanish report for ``translate``, else the full report.

    Raises:
        ValueError: the record has no such text (names the record and the field looked at).
    """
    if task == "translate":
        text = rec.extra.get("report_es")
        if not text:
            raise ValueError(f"{rec.id}: no Spanish report (field 'report_es'); import PadChest with "
                             "'llavarad data import padchest'")
        return str(text)
    if rec.extra.get("report"):
        return str(rec.extra["report"])
    path = rec.extra.get("report_path")
    if not path:
        raise ValueError(f"{rec.id}: no report text (fields 'report' / 'report_path'); import MIMIC-CXR with its "
                         "reports folder")
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"{rec.id}: report {path} is not readable ({exc.strerror or exc})") from exc


def _applies(rec: ManifestRecord, task: Task) -> bool:
    if task == "translate":
        return bool(rec.extra.get("report_es"))
    if task == "findings":
        return not rec.findings and bool(rec.extra.get("report") or rec.extra.get("report_path"))
    return bool(rec.extra.get("report") or rec.extra.get("report_path"))


def _request_parts(task: Task, source: str, min_support: float) -> tuple[list[dict[str, str]], str, Callable[[str], Any], str]:
    if task == "structure":
        return structuring_messages(source), STRUCTURING_VERSION, partial(
            parse_structuring, source=source, min_support=min_support), "llm_structured"
    if task == "findings":
        return findings_messages(source), FINDINGS_VERSION, partial(
            parse_findings, source=source, min_support=min_support), "llm_structured"
    return translation_messages(source), TRANSLATION_VERSION, partial(parse_translation, source_es=source), "translated"


def _pending(records: Iterable[ManifestRecord], task: Task, writer: JsonlWriter,
             summary: LLMStepSummary) -> Iterator[tuple[str, ManifestRecord]]:
    """``(report key, first record)`` of each report the step still has to do, counting the others."""
    seen: set[str] = set()
    for rec in records:
        key = report_key(rec)
        if key in seen:
            continue
        seen.add(key)
        if not _applies(rec, task):
            summary.not_applicable += 1
            continue
        if key in writer.done:
            summary.already_done += 1
            continue
        yield key, rec


@dataclass
class _StepOutputs:
    """Where one step's finished reports go: the output (valid replies) or the errors file."""

    task: Task
    model: str | None
    writer: JsonlWriter
    errors: JsonlWriter
    summary: LLMStepSummary

    def record(self, res: Any, rec: ManifestRecord, source_kind: str, prompt_version: str) -> None:
        """Write one client result (a valid reply as a row, a failure with its raw replies) and count it."""
        base = {"id": res.key, "task": self.task, "dataset": rec.dataset, "study_id": rec.study_id,
                "prompt_version": prompt_version, "model": self.model,
                "cached": res.cached, "attempts": res.attempts}
        if res.ok:
            value = res.value
            row = {**base, "text_source": source_kind}
            if self.task == "structure":
                row["sections"] = value
            else:
                row["findings"] = value or None
            self.writer.write(row)
            self.summary.ok += 1
            self.summary.cached += bool(res.cached)
        else:
            self.errors.write({**base, "error": res.error, "raw_replies": res.raw_replies})
            self.summary.failed += 1


def run_llm_step(records: Iterable[ManifestRecord], out_path: str | Path, client: Any, task: Task = "structure",
                 *, min_support: float = 0.7, limit: int | None = None, chunk_size: int = 256,
                 on_progress: Callable[[int], None] | None = None) -> LLMStepSummary:
    """Run one LLM step over a manifest's reports, appending results to ``out_path`` (resumable).

    Args:
        records: manifest records (streamed; several images of one study make one request).
        out_path: output JSONL; finished ids already in it are skipped.
        client: a :class:`llavarad.llm.LLMClient` (or anything with its ``run``/``stats``).
        task: "structure" (Supplementary Table 6), "translate" (PadChest) or "findings"
            (only reports with no rule-based findings).
        min_support: fraction of a returned section's words that must occur in the source.
        limit: stop after this many new reports (a cost check before a full run).
        chunk_size: requests handed to the client at a time (bounds memory).
        on_progress: called with the number of reports finished in each chunk.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {', '.join(TASKS)}")
    out_path = Path(out_path)
    summary = LLMStepSummary(task=task)
    err_path = out_path.with_name(out_path.name.replace(".jsonl", "") + ".errors.jsonl")
    model = getattr(getattr(client, "cfg", None), "model", None)
    with JsonlWriter(out_path) as writer, JsonlWriter(err_path, resume=False) as errors:
        outputs = _StepOutputs(task, model, writer, errors, summary)
        batch: list[Any] = []
        meta: dict[str, tuple[ManifestRecord, str, str]] = {}

        def flush() -> None:
            if not batch:
                return
            client.run(list(batch), on_result=lambda res: outputs.record(res, *meta[res.key]))
            if on_progress is not None:
                on_progress(len(batch))
            batch.clear()
            meta.clear()

        from llavarad.llm import ChatRequest

        for key, rec in _pending(records, task, writer, summary):
            if limit is not None and summary.reports >= limit:
                break
            try:
                source = report_text(rec, task)
            except ValueError as exc:
                errors.write({"id": key, "task": task, "error": str(exc)})
                summary.unreadable += 1
                continue
            summary.reports += 1
            messages, version, parse, kind = _request_parts(task, source, min_support)
            batch.append(ChatRequest(key=key, messages=messages, prompt_version=version, parse=parse))
            meta[key] = (rec, kind, version)
            if len(batch) >= chunk_size:
                flush()
        flush()
    stats = getattr(client, "stats", None)
    summary.stats = stats.as_dict() if hasattr(stats, "as_dict") else {}
    if summary.failed or summary.unreadable:
        logger.warning("%s: %d report(s) failed and %d were unreadable; see %s", task, summary.failed,
                       summary.unreadable, err_path)
    return summary
