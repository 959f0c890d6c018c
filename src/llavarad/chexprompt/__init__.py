"""CheXprompt: LLM-judged factual errors of generated reports, and its validation against
radiologists (ReXVal).

- :func:`run_chexprompt` (``llavarad chexprompt``): judge a predictions JSONL, aggregate with CIs.
- :func:`validate_rexval` (``llavarad validate-rexval``): agreement of the judge and of other
  metrics with six radiologists' error counts.
The prompt and its strict answer parser are in :mod:`llavarad.prompts.chexprompt`; the paper's own
prompt (``prompt: release``) is read from Microsoft's ``chexprompt`` package by
:mod:`llavarad.chexprompt.release`.
"""

from llavarad.chexprompt.aggregate import HEADLINE_METRICS, summarize, write_summary
from llavarad.chexprompt.judge import (
    ChexpromptConfig,
    ChexpromptError,
    JudgePair,
    JudgePrompt,
    judge_pairs,
    read_predictions,
    read_results,
)
from llavarad.chexprompt.rexval import load_rexval, validate_rexval
from llavarad.chexprompt.run import run_chexprompt

__all__ = [
    "HEADLINE_METRICS",
    "ChexpromptConfig",
    "ChexpromptError",
    "JudgePair",
    "JudgePrompt",
    "judge_pairs",
    "load_rexval",
    "read_predictions",
    "read_results",
    "run_chexprompt",
    "summarize",
    "validate_rexval",
    "write_summary",
]
