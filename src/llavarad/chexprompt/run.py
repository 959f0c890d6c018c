"""Entry function of the CheXprompt stage: predictions JSONL in, judged rows and aggregates out."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llavarad.chexprompt.aggregate import summarize, write_report_table, write_summary
from llavarad.chexprompt.judge import (
    RESULTS_FILE,
    ChexpromptConfig,
    JudgePair,
    JudgePrompt,
    judge_with_stats,
    locked_output,
    pending_pairs,
    read_predictions,
    read_results,
)
from llavarad.config import config_to_dict
from llavarad.io.manifest import JsonlWriter
from llavarad.llm import LLMClient

logger = logging.getLogger(__name__)

__all__ = ["package_versions", "run_chexprompt"]


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``llavarad``, Python and the named packages (absent ones are skipped)."""
    out = {"python": platform.python_version()}
    for name in ("llavarad", *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def run_chexprompt(
    predictions: str | Path,
    out_dir: str | Path,
    cfg: ChexpromptConfig,
    client: LLMClient | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Judge every usable pair of ``predictions`` and write, under ``out_dir``:

    - ``chexprompt_results.jsonl``: one row per report (12 counts, totals, raw replies, error),
      appended as each is judged; a rerun resumes (see :mod:`llavarad.chexprompt.judge`);
    - ``chexprompt_reports.csv``: the final per-report table;
    - ``chexprompt.json`` / ``.csv`` / ``.md`` / ``.png``: aggregates with bootstrap CIs.

    ``on_start(n_total, n_to_judge)`` is called once the work is known; ``on_row`` after each row.
    Returns the result dict written to ``chexprompt.json``; ``result["n_failed"] > 0`` means some
    reports (listed in ``result["failed"]``) could not be judged. Raises
    :class:`llavarad.chexprompt.judge.ChexpromptError` for an empty input or a folder another run
    holds, and :class:`llavarad.llm.FatalError` once for a bad key (rows judged before stay).
    """
    pairs, failed_inputs = read_predictions(predictions)
    prompt = cfg.judge_prompt()
    with locked_output(out_dir):
        return _judge_and_summarize(predictions, Path(out_dir), cfg, prompt, pairs, failed_inputs, client, on_start, on_row)


def _judge_and_summarize(predictions: str | Path, out: Path, cfg: ChexpromptConfig, prompt: JudgePrompt,
                         pairs: list[JudgePair], failed_inputs: list[dict[str, Any]], client: LLMClient | None,
                         on_start: Callable[[int, int], None] | None,
                         on_row: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The body of :func:`run_chexprompt`, run while the output folder's lock is held."""
    results_path = out / RESULTS_FILE
    todo = pending_pairs(pairs, cfg, results_path, prompt)
    if on_start is not None:
        on_start(len(pairs) + len(failed_inputs), len(todo))
    stats = judge_with_stats(todo, cfg, results_path, client=client, on_row=on_row, prompt=prompt)
    # failed inputs are result rows too, so the results file accounts for every input line
    previous = read_results(results_path)
    with JsonlWriter(results_path, key="id", resume=True) as writer:
        for f in failed_inputs:
            old = previous.get(f["id"])
            if old is None or old.get("ok") or old.get("error") != f["error"]:
                writer.write({"id": f["id"], "ok": False, "error": f["error"], "counts": None, "raw_replies": [], "judge": None})
    final = read_results(results_path)
    order = [p.id for p in pairs] + [f["id"] for f in failed_inputs]
    rows = [final[i] for i in order]
    write_report_table(out / "chexprompt_reports.csv", rows)
    ok_rows = [r for r in rows if r.get("ok")]
    failed = [{"id": r["id"], "error": r.get("error") or "unknown"} for r in rows if not r.get("ok")]
    llm_settings = config_to_dict(cfg.effective_llm(prompt))
    result: dict[str, Any] = {
        "n": len(ok_rows),
        "n_inputs": len(rows),
        "n_failed": len(failed),
        "metrics": summarize(ok_rows, cfg.bootstrap, cfg.seed, cfg.confidence),
        "settings": {
            "predictions": str(predictions),
            "judge": cfg.judge_signature(prompt),
            "prompt": prompt.name,
            "prompt_version": prompt.version,
            "prompt_source": prompt.provenance,
            "n_samples": cfg.n_samples,
            "bootstrap": cfg.bootstrap,
            "seed": cfg.seed,
            "confidence": cfg.confidence,
            "llm": llm_settings,
        },
        "versions": package_versions("openai", "aiolimiter", "numpy",
                                     *(("chexprompt",) if prompt.name == "release" else ()),
                                     *(("torch", "transformers") if cfg.llm.backend == "transformers" else ())),
        "usage": {
            "this_run": stats,
            "total_tokens_recorded": {k: sum(int((r.get("usage") or {}).get(k, 0)) for r in rows)
                                      for k in ("prompt_tokens", "completion_tokens")},
        },
        "failed": failed,
    }
    write_summary(out, result)
    if failed:
        logger.warning("%d of %d reports could not be judged; see %s", len(failed), len(rows), out / "chexprompt.json")
    return result
