"""CheXprompt stage: an LLM counts six kinds of factual error in each generated report.

Entry function: :func:`run_chexprompt` (``llavarad chexprompt PREDS.jsonl``). It reads a
predictions JSONL (``id``, ``reference``, ``prediction``, ``error``), asks the judge about every
usable pair through the shared :class:`llavarad.llm.LLMClient`, writes one result row per report
to ``<out>/chexprompt_results.jsonl`` as soon as it is known (with every raw reply), and resumes
after a kill: finished rows judged with the same settings are kept, failed ones are asked again
(the new row is appended; the last row of an id wins). A stored row is reused only when its
reference and prediction texts (a SHA-256 in the row) and the judge settings both match, as
``evaluate`` does; a lock file keeps two runs out of one output folder. Aggregation lives in
:mod:`llavarad.chexprompt.aggregate`.

Two judge prompts (``ChexpromptConfig.prompt``): ``llavarad`` (our wording, strict JSON answers,
:mod:`llavarad.prompts.chexprompt`) and ``release`` (the paper's prompt, read at run time from
Microsoft's ``chexprompt`` package, :mod:`llavarad.chexprompt.release`).

A report is *failed*, never "zero errors", when its input is unusable (``error`` set, no
reference, a prediction that is not text) or when any of its judge samples never gave a parsable
answer. An empty prediction ("") is judged like any other report, as ``evaluate`` scores it: a
model that wrote nothing made every omission, and dropping it would flatter the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llavarad.errors import LlavaradError
from llavarad.io.manifest import JsonlWriter, read_jsonl
from llavarad.llm import ChatRequest, ChatResult, LLMClient, LLMConfig
from llavarad.prompts.chexprompt import (
    COUNT_COLUMNS,
    PROMPT_VERSION,
    build_messages,
    parse_answer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RESULTS_FILE",
    "ChexpromptConfig",
    "ChexpromptError",
    "JudgePair",
    "JudgePrompt",
    "judge_pairs",
    "judge_with_stats",
    "locked_output",
    "pending_pairs",
    "read_predictions",
    "read_results",
    "row_totals",
]

RESULTS_FILE = "chexprompt_results.jsonl"
LOCK_FILE = ".chexprompt.lock"

PromptName = Literal["llavarad", "release"]


class ChexpromptError(LlavaradError, RuntimeError):
    """A CheXprompt run that cannot proceed (empty input, an output folder in use, ...); the message
    names the file and the fix."""


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: how to build the messages of a pair, how to parse a reply into the 12
    counts, the LLM settings the prompt fixes, and where it came from (recorded with the results)."""

    name: str
    version: str
    build: Callable[[str, str], list[dict[str, str]]]
    parse: Callable[[str], dict[str, int]]
    llm_settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def _llavarad_prompt() -> JudgePrompt:
    return JudgePrompt("llavarad", PROMPT_VERSION, build_messages, parse_answer,
                       provenance={"module": "llavarad.prompts.chexprompt"})


def _release_prompt() -> JudgePrompt:
    from llavarad.chexprompt.release import load_release_prompt, parse_release_reply

    rel = load_release_prompt()
    st = rel.settings
    # the release re-sends the same prompt when a reply is unreadable (max_retries re-asks, no feedback turn)
    llm = {"temperature": float(st["temperature"]), "top_p": float(st["top_p"]), "max_tokens": int(st["max_tokens"]),
           "max_parse_retries": int(st["max_retries"]), "parse_retry_feedback": False}
    return JudgePrompt("release", rel.prompt_version, rel.build_messages, parse_release_reply, llm, rel.provenance())


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
    prompt: PromptName = "llavarad"
    n_samples: int = 1
    sample_temperature: float = 0.7
    bootstrap: int = 500
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        problems = []
        if self.prompt not in ("llavarad", "release"):
            problems.append(f"prompt={self.prompt!r} is not one of llavarad, release")
        if self.prompt == "release" and self.n_samples != 1:
            problems.append(f"n_samples={self.n_samples}: the release prompt asks once at temperature 0; use n_samples: 1")
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

    def judge_prompt(self) -> JudgePrompt:
        """The prompt ``self.prompt`` names (``release`` reads the installed chexprompt package and
        raises :class:`llavarad.chexprompt.release.ReleasePromptError` when it is missing)."""
        return _release_prompt() if self.prompt == "release" else _llavarad_prompt()

    def effective_llm(self, prompt: JudgePrompt | None = None) -> LLMConfig:
        """The LLM settings with those the prompt fixes (the release's temperature, top_p, ...)."""
        prompt = prompt or self.judge_prompt()
        return dataclasses.replace(self.llm, **prompt.llm_settings) if prompt.llm_settings else self.llm

    def temperature_for(self, prompt: JudgePrompt) -> float:
        return self.sample_temperature if self.n_samples > 1 else self.effective_llm(prompt).temperature

    @property
    def temperature(self) -> float:
        return self.temperature_for(self.judge_prompt())

    def judge_signature(self, prompt: JudgePrompt | None = None) -> dict[str, Any]:
        """What must match (besides the texts) for a stored result row to be reused on resume."""
        prompt = prompt or self.judge_prompt()
        llm = self.effective_llm(prompt)
        return {"model": llm.model_id, "prompt": prompt.name, "prompt_version": prompt.version,
                "n_samples": self.n_samples, "temperature": self.temperature_for(prompt), "top_p": llm.top_p,
                "max_tokens": llm.max_tokens}


@dataclass
class JudgePair:
    """One (reference, candidate) pair to judge."""

    id: str
    reference: str
    prediction: str

    @property
    def input_sha256(self) -> str:
        """Digest of the two texts: a stored judgment is reused only for the same texts."""
        return hashlib.sha256(f"{self.reference}\0{self.prediction}".encode()).hexdigest()


def read_predictions(path: str | Path) -> tuple[list[JudgePair], list[dict[str, Any]]]:
    """Usable pairs and failed inputs (``{"id", "error"}``) of a predictions JSONL, in file order.

    Lines that are not JSON objects (also: nested too deeply, text that is not valid Unicode), rows
    without a string/integer id, rows whose ``error`` is set, rows without reference text and rows
    whose prediction is not a string become failed inputs (named by id, or ``line:N`` when there is
    no id). An empty prediction is a usable pair (see the module doc). Duplicate ids are an error:
    results are keyed by id. A file without any row raises :class:`ChexpromptError`.
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
        where = f"{path}:{lineno}"
        try:
            row = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            failed.append({"id": f"line:{lineno}", "error": f"input: {where} is not valid JSON ({type(exc).__name__})"})
            continue
        rid = row.get("id") if isinstance(row, dict) else None
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip() or not _is_unicode(str(rid)):
            failed.append({"id": f"line:{lineno}", "error": f"input: {where} has no string or integer 'id' "
                           "(expected an object with id, reference, prediction)"})
            continue
        rid = str(rid)
        if rid in seen:
            raise ChexpromptError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]}); ids must be unique")
        seen[rid] = lineno
        if row.get("error") not in (None, "", False):
            failed.append({"id": rid, "error": "input: the prediction row records a generation error"})
            continue
        ref, pred = row.get("reference"), row.get("prediction")
        problem = None
        if not isinstance(ref, str) or not ref.strip():
            problem = f"{where} has no text in reference (nothing to judge against)"
        elif not isinstance(pred, str):
            problem = f"{where}: prediction is {type(pred).__name__}, not a string (use \"\" for an empty report)"
        elif not _is_unicode(ref) or not _is_unicode(pred):
            problem = f"{where}: reference or prediction holds a lone surrogate escape (not valid Unicode text)"
        if problem:
            failed.append({"id": rid, "error": f"input: {problem}"})
            continue
        pairs.append(JudgePair(rid, ref, pred))
    if not pairs and not failed:
        raise ChexpromptError(f"{path} has no rows; give the predictions JSONL written by `llavarad generate` "
                              "(one object with id, reference, prediction per line)")
    return pairs, failed


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def _result_row(pair: JudgePair, results: list[ChatResult], signature: dict[str, Any]) -> dict[str, Any]:
    """Combine the samples of one report into its result row (failed if any sample failed)."""
    results = sorted(results, key=lambda r: r.key)
    ok = all(r.ok for r in results)
    row: dict[str, Any] = {
        "id": pair.id,
        "input_sha256": pair.input_sha256,
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


def pending_pairs(pairs: Iterable[JudgePair], cfg: ChexpromptConfig, results_path: str | Path,
                  prompt: JudgePrompt | None = None) -> list[JudgePair]:
    """The pairs without a successful row in ``results_path`` judged with the same settings on the
    same texts (a row from an older llavarad without ``input_sha256`` is judged again)."""
    signature = cfg.judge_signature(prompt)
    previous = read_results(results_path)

    def done(p: JudgePair) -> bool:
        row = previous.get(p.id) or {}
        return bool(row.get("ok")) and row.get("judge") == signature and row.get("input_sha256") == p.input_sha256

    return [p for p in pairs if not done(p)]


@contextlib.contextmanager
def locked_output(out_dir: str | Path) -> Iterator[None]:
    """Hold ``<out_dir>/.chexprompt.lock`` for a run, so that two runs never append to one results
    file (they would judge every report twice); a second run fails at once with
    :class:`ChexpromptError`. The lock is released when the process ends, even on a kill."""
    from filelock import FileLock, Timeout

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ChexpromptError(f"another run is writing to {out} (it holds {out / LOCK_FILE}); wait for it to finish, "
                              "or give this run another --out") from None
    try:
        yield
    finally:
        lock.release()


def judge_pairs(
    pairs: Iterable[JudgePair],
    cfg: ChexpromptConfig,
    results_path: str | Path,
    client: LLMClient | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    prompt: JudgePrompt | None = None,
) -> dict[str, dict[str, Any]]:
    """Judge the pairs not yet judged in ``results_path`` (same settings and texts), appending each
    report's row as soon as all its samples are in. Returns the rows written by this call, by id.

    ``on_row`` is called after each row is written (e.g. to advance a progress bar). A
    :class:`llavarad.llm.FatalError` (bad key) propagates after the rows finished so far are written.
    """
    prompt = prompt or cfg.judge_prompt()
    signature = cfg.judge_signature(prompt)
    todo = pending_pairs(pairs, cfg, results_path, prompt)
    written: dict[str, dict[str, Any]] = {}
    if not todo:
        return written
    own_client = client is None
    client = client or LLMClient(cfg.effective_llm(prompt))
    n = cfg.n_samples
    temperature = cfg.temperature_for(prompt)
    by_id = {p.id: p for p in todo}
    requests = []
    for p in todo:
        messages = prompt.build(p.reference, p.prediction)
        for s in range(n):
            requests.append(ChatRequest(key=f"{p.id}#{s:04d}", messages=messages, prompt_version=prompt.version,
                                        parse=prompt.parse, temperature=temperature, sample=s if n > 1 else 0))
    pending: dict[str, list[ChatResult]] = {}
    try:
        with JsonlWriter(results_path, key="id", resume=True) as writer:
            def collect(res: ChatResult) -> None:
                pid = res.key.rsplit("#", 1)[0]  # the sample index has no "#"
                bucket = pending.setdefault(pid, [])
                bucket.append(res)
                if len(bucket) == n:
                    row = _result_row(by_id[pid], pending.pop(pid), signature)
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
    prompt: JudgePrompt | None = None,
) -> dict[str, Any]:
    """:func:`judge_pairs` for the stage entry points: returns the client's request/token/cost
    statistics ({} when nothing was pending) and closes a client it had to create."""
    if not todo:
        return {}
    prompt = prompt or cfg.judge_prompt()
    own = client is None
    client = client or LLMClient(cfg.effective_llm(prompt))
    try:
        judge_pairs(todo, cfg, results_path, client=client, on_row=on_row, prompt=prompt)
        return client.stats.as_dict()
    finally:
        if own:
            client.close()
