"""CheXprompt stage: an LLM counts six kinds of factual error in each generated report.

Entry function: :func:`run_chexprompt` (``llavarad chexprompt PREDS.jsonl``). It reads a
predictions JSONL (``id``, ``reference``, ``prediction``, ``error``), asks the judge about every
usable pair through the shared :class:`llavarad.llm.LLMClient`, writes one result row per report
to ``<out>/chexprompt_results.jsonl`` as soon as it is known (with every raw reply), and resumes
after a kill: finished rows judged with the same settings are kept, failed ones are asked again
(the new row is appended; the last row of an id wins). Aggregation lives in
:mod:`llavarad.chexprompt.aggregate`.

A report is *failed*, never "zero errors", when its input is unusable (``error`` set, missing
prediction or reference) or when any of its judge samples never gave a parsable answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad.io.manifest import JsonlWriter, read_jsonl
from llavarad.llm import ChatRequest, ChatResult, LLMClient, LLMConfig
from llavarad.prompts.chexprompt import COUNT_COLUMNS, PROMPT_VERSION, build_messages, parse_answer

logger = logging.getLogger(__name__)

__all__ = [
    "RESULTS_FILE",
    "ChexpromptConfig",
    "JudgePair",
    "judge_pairs",
    "judge_with_stats",
    "pending_pairs",
    "read_predictions",
    "read_results",
    "row_totals",
]

RESULTS_FILE = "chexprompt_results.jsonl"


def _default_llm() -> LLMConfig:
    return LLMConfig(backend="openai", model="gpt-4o", cache_path="chexprompt_cache.sqlite")


@dataclass
class ChexpromptConfig:
    """Settings of a CheXprompt run (YAML/JSON-loadable with :func:`llavarad.config.load_config`).

    ``n_samples`` > 1 asks the judge that many times per report at ``sample_temperature`` and
    averages the 12 counts (the paper's setting is one greedy answer: ``n_samples: 1`` at the
    LLM's temperature, 0 by default).
    """

    llm: LLMConfig = field(default_factory=_default_llm)
    n_samples: int = 1
    sample_temperature: float = 0.7
    bootstrap: int = 500
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        problems = []
        if self.n_samples < 1:
            problems.append(f"n_samples={self.n_samples} must be >= 1")
        if self.n_samples > 1 and not (0.0 < self.sample_temperature <= 2.0):
            problems.append(f"sample_temperature={self.sample_temperature} must be in (0, 2] when n_samples > 1 (repeated greedy answers are identical)")
        if self.bootstrap < 1:
            problems.append(f"bootstrap={self.bootstrap} must be >= 1 (the paper uses 500)")
        if not 0.0 < self.confidence < 1.0:
            problems.append(f"confidence={self.confidence} must be a fraction in (0, 1), e.g. 0.95")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def temperature(self) -> float:
        return self.sample_temperature if self.n_samples > 1 else self.llm.temperature

    def judge_signature(self) -> dict[str, Any]:
        """What must match for a stored result row to be reused on resume."""
        return {"model": self.llm.model_id, "prompt_version": PROMPT_VERSION, "n_samples": self.n_samples,
                "temperature": self.temperature}


@dataclass
class JudgePair:
    """One (reference, candidate) pair to judge."""

    id: str
    reference: str
    prediction: str


def read_predictions(path: str | Path) -> tuple[list[JudgePair], list[dict[str, Any]]]:
    """Usable pairs and failed inputs (``{"id", "error"}``) of a predictions JSONL, in file order.

    Lines that are not JSON objects, rows without an id, rows whose ``error`` is set and rows
    without a non-empty ``prediction`` or ``reference`` become failed inputs (named by id, or
    ``line:N`` when there is no id). Duplicate ids are an error: results are keyed by id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    pairs: list[JudgePair] = []
    failed: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        raw_lines = fh.read().split(b"\n")
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            failed.append({"id": f"line:{lineno}", "error": f"input: {path}:{lineno} is not valid JSON ({type(exc).__name__})"})
            continue
        if not isinstance(row, dict) or row.get("id") in (None, ""):
            failed.append({"id": f"line:{lineno}", "error": f"input: {path}:{lineno} has no 'id' (expected an object with id, reference, prediction)"})
            continue
        rid = str(row["id"])
        if rid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]}); ids must be unique")
        seen[rid] = lineno
        if row.get("error"):
            failed.append({"id": rid, "error": "input: the prediction row records a generation error"})
            continue
        problems = [name for name in ("prediction", "reference") if not isinstance(row.get(name), str) or not row[name].strip()]
        if problems:
            failed.append({"id": rid, "error": f"input: {path}:{lineno} has no text in {' and '.join(problems)}"})
            continue
        pairs.append(JudgePair(rid, row["reference"], row["prediction"]))
    return pairs, failed


def read_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Last result row per id of a results JSONL (later rows replace earlier ones); {} if absent."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for _, row in read_jsonl(path):
        if isinstance(row, dict) and "id" in row:
            out[str(row["id"])] = row
    return out


def row_totals(counts: dict[str, float]) -> tuple[float, float, float]:
    """(total, significant, insignificant) errors of one report's 12 counts."""
    sig = sum(float(v) for k, v in counts.items() if k.endswith("_significant"))
    insig = sum(float(v) for k, v in counts.items() if k.endswith("_insignificant"))
    return sig + insig, sig, insig


def _result_row(pair_id: str, results: list[ChatResult], signature: dict[str, Any]) -> dict[str, Any]:
    """Combine the samples of one report into its result row (failed if any sample failed)."""
    results = sorted(results, key=lambda r: r.key)
    ok = all(r.ok for r in results)
    row: dict[str, Any] = {
        "id": pair_id,
        "ok": ok,
        "error": None if ok else "; ".join(f"sample {i}: {r.error}" for i, r in enumerate(results) if not r.ok),
        "counts": None,
        "raw_replies": [r.raw_replies for r in results],
        "cached": all(r.cached for r in results),
        "attempts": sum(r.attempts for r in results),
        "usage": {k: sum(r.usage.get(k, 0) for r in results) for k in ("prompt_tokens", "completion_tokens")},
        "judge": signature,
    }
    if ok:
        samples = [r.value for r in results]
        n = len(samples)
        counts = {c: sum(s[c] for s in samples) / n for c in COUNT_COLUMNS}
        if n == 1:
            counts = {c: int(v) for c, v in counts.items()}
        totals = [row_totals(s) for s in samples]
        total, sig, insig = row_totals(counts)
        if n == 1:
            total, sig, insig = int(total), int(sig), int(insig)
        row.update(
            counts=counts,
            total=total,
            significant=sig,
            insignificant=insig,
            # share of samples free of (significant) errors; 0/1 for a single answer
            error_free=sum(t[0] == 0 for t in totals) / n,
            significant_error_free=sum(t[1] == 0 for t in totals) / n,
        )
        if n > 1:
            row["samples"] = samples
    return row


def pending_pairs(pairs: Iterable[JudgePair], cfg: ChexpromptConfig, results_path: str | Path) -> list[JudgePair]:
    """The pairs without a successful row judged with the same settings in ``results_path``."""
    signature = cfg.judge_signature()
    previous = read_results(results_path)
    return [p for p in pairs if not (previous.get(p.id, {}).get("ok") and previous[p.id].get("judge") == signature)]


def judge_pairs(
    pairs: Iterable[JudgePair],
    cfg: ChexpromptConfig,
    results_path: str | Path,
    client: LLMClient | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Judge the pairs not yet judged in ``results_path`` (same settings), appending each report's
    row as soon as all its samples are in. Returns the rows written by this call, by id.

    ``on_row`` is called after each row is written (e.g. to advance a progress bar).
    """
    signature = cfg.judge_signature()
    todo = pending_pairs(pairs, cfg, results_path)
    written: dict[str, dict[str, Any]] = {}
    if not todo:
        return written
    own_client = client is None
    client = client or LLMClient(cfg.llm)
    n = cfg.n_samples
    requests = []
    for p in todo:
        messages = build_messages(p.reference, p.prediction)
        for s in range(n):
            requests.append(ChatRequest(key=f"{p.id}\x00{s:04d}", messages=messages, prompt_version=PROMPT_VERSION,
                                        parse=parse_answer, temperature=cfg.temperature, sample=s if n > 1 else 0))
    pending: dict[str, list[ChatResult]] = {}
    try:
        with JsonlWriter(results_path, key="id", resume=True) as writer:
            def collect(res: ChatResult) -> None:
                pid = res.key.rsplit("\x00", 1)[0]
                bucket = pending.setdefault(pid, [])
                bucket.append(res)
                if len(bucket) == n:
                    row = _result_row(pid, pending.pop(pid), signature)
                    # flush always survives a killed process; fsync (power loss) only for rows that cost
                    # an LLM call: a cached row is free to recompute, and 200 fsyncs dominate a cached rerun
                    writer.fsync = not row["cached"]
                    writer.write(row)
                    written[pid] = row
                    if on_row is not None:
                        on_row(row)

            client.run(requests, on_result=collect)
    finally:
        if own_client:
            client.close()
    assert not pending, "every report's samples were collected"
    return written


def judge_with_stats(
    todo: list[JudgePair],
    cfg: ChexpromptConfig,
    results_path: str | Path,
    client: LLMClient | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`judge_pairs` for the stage entry points: returns the client's request/token/cost
    statistics ({} when nothing was pending) and closes a client it had to create."""
    if not todo:
        return {}
    own = client is None
    client = client or LLMClient(cfg.llm)
    try:
        judge_pairs(todo, cfg, results_path, client=client, on_row=on_row)
        return client.stats.as_dict()
    finally:
        if own:
            client.close()
