"""The evaluation stage: predictions JSONL -> the metric table of Supplementary Table 1.

``evaluate(preds, out_dir, config)`` reads the generation output (``id, reference, prediction,
error, model, settings``; :mod:`llavarad.evaluate.predictions`), labels references and
predictions with a CheXpert-style labeler, and computes CheXbert-style micro/macro F1-14/F1-5
(uncertain as negative and as positive), F1-RadGraph, BLEU-1, BLEU-4 and ROUGE-L, plus ReXrank's
combined RadGraph score and the share of predictions that mention a prior study.

By default each column is what the release's evaluation reports (``statistic="release"``:
bootstrap medians with the release's seeds, BLEU with sacrebleu's own interval); the full-sample
convention is one setting away (:mod:`llavarad.evaluate.statistics`). Labels and RadGraph scores
are cached in the output folder as they are computed (:mod:`llavarad.evaluate._cache`), so a killed
run resumes without redoing them. The result files are described in :mod:`llavarad.evaluate.report`.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llavarad import __version__
from llavarad.config import ConfigError, config_to_dict
from llavarad.errors import LlavaradError
from llavarad.evaluate._cache import Progress, label_all, radgraph_scores
from llavarad.evaluate.bootstrap import (
    RELEASE_SEED,
    SACREBLEU_SEED,
    bootstrap_mean_ci,
    bootstrap_median,
    resample_counts,
)
from llavarad.evaluate.chexbert_f1 import chexbert_f1, chexbert_f1_settings
from llavarad.evaluate.lexical import (
    bleu_sacrebleu_bootstrap,
    lexical_metrics,
    lexical_settings,
)
from llavarad.evaluate.predictions import Pair, PredictionSet, read_predictions
from llavarad.evaluate.priors import detect_prior_mentions
from llavarad.evaluate.radgraph import (
    RadGraphScorer,
    RadGraphUnavailable,
    radgraph_settings,
)
from llavarad.evaluate.report import TABLE_COLUMNS, write_outputs
from llavarad.evaluate.statistics import setting_problems, statistic_settings, table_metrics

logger = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "EvaluationError", "Pair", "PredictionSet", "TABLE_COLUMNS", "evaluate", "read_predictions"]


class EvaluationError(LlavaradError, RuntimeError):
    """Nothing could be scored (e.g. every row failed); the message gives the counts."""


@dataclass
class EvaluateConfig:
    """Settings of one evaluation (recorded in ``metrics.json``).

    Attributes:
        labeler: CheXpert-style labeler ("rules": offline, no weights; "chexbert": model weights).
        chexbert_weights: local ``chexbert.pth`` (default ``$LLAVARAD_CHEXBERT_WEIGHTS``).
        radgraph: "auto" computes F1-RadGraph when the package and weights are there and records
            why not otherwise; "on" makes their absence a failure; "off" skips it.
        radgraph_weights: folder with RadGraph weights (default ``$LLAVARAD_RADGRAPH_WEIGHTS``).
        statistic: what heads each column: "release" (the release's rrg_eval: bootstrap medians,
            BLEU with sacrebleu's interval; the paper's table) or "full" (value on all reports).
        bootstrap: number of bootstrap resamples (the release: 500).
        seed: seed of the shared resamples, ``RandomState(seed)`` (the release: 3).
        bleu_seed: seed of sacrebleu's own BLEU bootstrap under "release" (sacrebleu's default 12345).
        confidence: interval coverage; the release convention is fixed at 0.95.
        name: model name for the table (default: the predictions' ``model`` field, else file name).
        plot: write ``per_observation_f1.png``.
    """

    labeler: Literal["rules", "chexbert"] = "rules"
    chexbert_weights: str | None = None
    radgraph: Literal["auto", "on", "off"] = "auto"
    radgraph_weights: str | None = None
    statistic: Literal["release", "full"] = "release"
    bootstrap: int = 500
    seed: int = RELEASE_SEED
    bleu_seed: int = SACREBLEU_SEED
    confidence: float = 0.95
    name: str | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        problems = setting_problems(labeler=self.labeler, chexbert_weights=self.chexbert_weights,
                                    statistic=self.statistic, bootstrap=self.bootstrap,
                                    seeds={"seed": self.seed, "bleu_seed": self.bleu_seed}, confidence=self.confidence)
        if self.radgraph not in ("auto", "on", "off"):
            problems.append(f"radgraph: {self.radgraph!r} is not one of 'auto', 'on', 'off'")
        if (isinstance(self.confidence, (int, float)) and 0 < self.confidence < 1 and self.statistic == "release"
                and self.confidence != 0.95):
            problems.append(f"confidence: {self.confidence!r} with statistic 'release': the release's intervals "
                            "(and sacrebleu's) are 95%; use 0.95 or statistic 'full'")
        if problems:
            raise ConfigError(problems, "EvaluateConfig")


def _versions(labeler: Any) -> dict[str, str | None]:
    out: dict[str, str | None] = {"llavarad": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "sacrebleu", "rouge_score", "scikit-learn", "matplotlib", "radgraph", "f1chexbert"):
        try:
            out[pkg] = _pkg_version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["labeler"] = f"{getattr(labeler, 'name', '?')} {getattr(labeler, 'version', '?')}"
    return out


def _get_labeler(config: EvaluateConfig) -> Any:
    try:
        from llavarad.evaluate.labelers import get_labeler

        options = {"weights": config.chexbert_weights} if config.labeler == "chexbert" and config.chexbert_weights else {}
        return get_labeler(config.labeler, **options)
    except Exception as exc:  # noqa: BLE001 - missing weights/packages surface as many types
        raise EvaluationError(f"the {config.labeler!r} labeler is unavailable: {type(exc).__name__}: {exc}") from exc


def _radgraph(config: EvaluateConfig, scorer: RadGraphScorer | None, pairs: list[Pair], out: Path,
              progress: Progress | None) -> tuple[dict[str, np.ndarray] | None, RadGraphScorer | None, str | None]:
    if config.radgraph == "off" and scorer is None:
        return None, None, "turned off (--no-radgraph)"
    try:
        scorer = scorer or RadGraphScorer(weights=config.radgraph_weights)
        return radgraph_scores(scorer, pairs, out / "radgraph_cache.jsonl", progress), scorer, None
    except RadGraphUnavailable as exc:
        logger.info("F1-RadGraph skipped: %s", exc)
        return None, None, str(exc)


def _metric_settings(labeler: Any, scorer: RadGraphScorer | None, skipped: str | None) -> dict[str, Any]:
    """How each metric of the table was computed (implementation, version, settings), for ``metrics.json``."""
    rg_settings = radgraph_settings(scorer, skipped)
    return {**{k: dict(chexbert_f1_settings(labeler.name, labeler.version, getattr(labeler, "settings", {})),
                       metric=k) for k, _, _ in TABLE_COLUMNS[:8]},
            "F1-RadGraph": rg_settings, **lexical_settings(),
            "RadGraph-combined": {**rg_settings, "implementation": (
                "radgraph package annotations + ReXrank's combined score (CXR-Report-Metric: mean of entity "
                "F1 and relation F1 per report)")},
            "Prior-mentions": {"implementation": "llavarad.evaluate.priors (rules)", "version": __version__,
                               "settings": {"unit": "% of predictions with >=1 prior-comparison sentence"}}}


def _run_settings(config: EvaluateConfig, labeler: Any, bs: int, metric_settings: dict[str, Any],
                  data: PredictionSet) -> dict[str, Any]:
    """The ``settings`` of ``metrics.json``: the config, the statistic, the bootstrap and each metric's settings."""
    return {"config": config_to_dict(config), "labeler": labeler.name,
            "statistic": statistic_settings(config.statistic, bs, config.seed, config.bleu_seed, config.confidence),
            "bootstrap": {"n_resamples": bs, "seed": config.seed, "confidence": config.confidence,
                          "method": "percentile", "paired": "same resamples for every metric",
                          "rng": "numpy.random.RandomState(seed).randint(0, n, (n_resamples, n))",
                          "bleu_seed": config.bleu_seed if config.statistic == "release" else None},
            "metrics": metric_settings, "generation": data.generation_settings}


def evaluate(
    predictions: str | Path,
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    labeler: Any | None = None,
    radgraph_scorer: RadGraphScorer | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a predictions JSONL file; write the result files into ``out_dir``; return the result.

    Args:
        predictions: JSONL with ``id``, ``reference``, ``prediction``, ``error`` per row.
        out_dir: output folder (created); also holds the label / RadGraph caches used to resume.
        config: settings (default :class:`EvaluateConfig`: the release's statistics).
        labeler: an object with ``label(texts) -> [{observation: 1.0|0.0|-1.0|None}]``, ``name``,
            ``version``, ``settings``; default ``get_labeler(config.labeler)``.
        radgraph_scorer: a ready :class:`RadGraphScorer`; default built from the config.
        progress: called as ``progress(stage, done, total)`` during long steps.

    Returns:
        The content of ``metrics.json``.

    Raises:
        EvaluationError: no row could be scored.
    """
    config = config or EvaluateConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_predictions(predictions)
    problems = list(data.problems)
    labeler = labeler if labeler is not None else _get_labeler(config)
    pairs, ref_labels, pred_labels = label_all(labeler, data.pairs, out / "labels_cache.jsonl", progress, problems)
    if not pairs:
        first = (problems or data.generation_errors or [{"error": "none"}])[0]["error"]
        raise EvaluationError(f"{predictions}: nothing to score: {data.n_rows} rows, {len(data.generation_errors)} with a "
                              f"generation error, {len(problems)} malformed or unscorable (first: {first})")
    problems.sort(key=lambda p: p["line"])
    n, bs = len(pairs), config.bootstrap
    refs, hyps = [p.reference for p in pairs], [p.prediction for p in pairs]
    # One resample matrix for every metric (paired intervals): the release's RandomState draws.
    counts = resample_counts(n, bs, config.seed, generator="legacy")
    if progress:
        progress("lexical", 0, 1)
    lex = lexical_metrics(refs, hyps, counts=counts, confidence=config.confidence)
    bleu_release = None
    if config.statistic == "release":
        bleu_release = {order: bleu_sacrebleu_bootstrap(lex.bleu_stats, order, bs, config.bleu_seed) for order in (1, 4)}
    if progress:
        progress("lexical", 1, 1)
    f1 = chexbert_f1(ref_labels, pred_labels, counts=counts, confidence=config.confidence)
    rg, scorer, skipped = _radgraph(config, radgraph_scorer, pairs, out, progress)
    metrics = table_metrics(f1, lex, rg, counts, config.statistic, config.confidence, bleu_release)

    priors = detect_prior_mentions(hyps)
    ref_priors = detect_prior_mentions(refs)
    flagged = priors.flagged.astype(np.float64)
    pv, plo, phi = bootstrap_mean_ci(flagged, counts=counts, n_resamples=bs, confidence=config.confidence)
    metrics["Prior-mentions"] = {"value": 100 * pv, "ci_low": 100 * plo, "ci_high": 100 * phi, "full_sample": 100 * pv,
                                 "bootstrap_median": 100 * bootstrap_median(counts @ flagged / n),
                                 "headline": "full sample"}

    metric_settings = _metric_settings(labeler, scorer, skipped)
    result: dict[str, Any] = {
        "model": config.name or data.model or Path(predictions).stem,
        "predictions": str(predictions),
        "n": n,
        "n_rows": data.n_rows,
        "metrics": metrics,
        "per_observation": f1.per_observation,
        "prior_mentions": {"n": priors.n, "n_flagged": priors.n_flagged, "share": 100 * pv, "ci_low": 100 * plo,
                           "ci_high": 100 * phi, "by_category": priors.by_category(),
                           "reference_share": 100 * ref_priors.share, "file": "prior_mentions.csv"},
        "generation_errors": data.generation_errors,
        "problems": problems,
        "settings": _run_settings(config, labeler, bs, metric_settings, data),
        "versions": _versions(labeler),
    }
    write_outputs(result, out, pairs, lex, ref_labels, pred_labels, rg, priors, config.plot)
    return result
