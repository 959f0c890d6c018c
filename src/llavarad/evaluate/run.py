"""The evaluation stage: predictions JSONL -> the metric table of Supplementary Table 1.

``evaluate(preds, out_dir, config)`` reads the generation output (``id, reference, prediction,
error, model, settings``), labels references and predictions with a CheXpert-style labeler, and
computes CheXbert-style micro/macro F1-14/F1-5 (uncertain as negative and as positive),
F1-RadGraph, BLEU-1, BLEU-4 and ROUGE-L, each with a 95% percentile interval from the same
bootstrap resamples (500, fixed seed), plus the share of predictions that mention a prior study.

Rows with ``error`` set are counted and listed, not scored; malformed rows (bad JSON, missing or
non-string fields, empty reference, repeated id) are listed with file, line and reason. Labels and
RadGraph scores are cached in the output folder as they are computed (append-only JSONL), so a
killed run resumes without redoing them. Outputs, written atomically at the end:

``metrics.json`` (n, metrics, per_observation, prior_mentions, problems, settings, versions),
``table.csv`` / ``table.md`` (Supplementary Table 1 layout), ``per_observation.csv``,
``per_observation_f1.png``, ``per_report.csv`` and ``prior_mentions.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llavarad import __version__
from llavarad.config import ConfigError, config_to_dict
from llavarad.errors import LlavaradError
from llavarad.evaluate.bootstrap import bootstrap_mean_ci, bootstrap_median, resample_counts
from llavarad.evaluate.chexbert_f1 import OBSERVATIONS_14, chexbert_f1, chexbert_f1_settings, per_pair_f1
from llavarad.evaluate.lexical import bleu_from_stats, lexical_metrics, lexical_settings
from llavarad.evaluate.priors import detect_prior_mentions
from llavarad.evaluate.radgraph import RadGraphScorer, RadGraphUnavailable, radgraph_settings
from llavarad.io.manifest import JsonlWriter

logger = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "EvaluationError", "Pair", "PredictionSet", "TABLE_COLUMNS", "evaluate", "read_predictions"]

#: Columns of Supplementary Table 1, in order: (metric key, group, sub-header).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Micro-F1-14", "CheXbert, uncertain as negative", "Micro F1-14"),
    ("Micro-F1-5", "CheXbert, uncertain as negative", "Micro F1-5"),
    ("Macro-F1-14", "CheXbert, uncertain as negative", "Macro F1-14"),
    ("Macro-F1-5", "CheXbert, uncertain as negative", "Macro F1-5"),
    ("Micro-F1-14+", "CheXbert, uncertain as positive", "Micro F1-14"),
    ("Micro-F1-5+", "CheXbert, uncertain as positive", "Micro F1-5"),
    ("Macro-F1-14+", "CheXbert, uncertain as positive", "Macro F1-14"),
    ("Macro-F1-5+", "CheXbert, uncertain as positive", "Macro F1-5"),
    ("F1-RadGraph", "RadGraph", "F1"),
    ("BLEU-1", "BLEU", "(1)"),
    ("BLEU-4", "BLEU", "(4)"),
    ("ROUGE-L", "ROUGE", "-L"),
)
_CHUNK = 256
Progress = Callable[[str, int, int], None]


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
        bootstrap: number of bootstrap resamples; seed: their seed; confidence: interval coverage.
        name: model name for the table (default: the predictions' ``model`` field, else file name).
        plot: write ``per_observation_f1.png``.
    """

    labeler: Literal["rules", "chexbert"] = "rules"
    chexbert_weights: str | None = None
    radgraph: Literal["auto", "on", "off"] = "auto"
    radgraph_weights: str | None = None
    bootstrap: int = 500
    seed: int = 0
    confidence: float = 0.95
    name: str | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.labeler not in ("rules", "chexbert"):
            problems.append(f"labeler: {self.labeler!r} is not one of 'rules', 'chexbert'")
        if self.chexbert_weights and self.labeler != "chexbert":
            problems.append("chexbert_weights is set but labeler is not 'chexbert'; add --labeler chexbert")
        if self.radgraph not in ("auto", "on", "off"):
            problems.append(f"radgraph: {self.radgraph!r} is not one of 'auto', 'on', 'off'")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 1:
            problems.append(f"bootstrap: {self.bootstrap!r} must be a positive number of resamples (e.g. 500)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed: {self.seed!r} must be a non-negative integer")
        if not isinstance(self.confidence, (int, float)) or not 0 < self.confidence < 1:
            problems.append(f"confidence: {self.confidence!r} must be a fraction in (0, 1), e.g. 0.95")
        if problems:
            raise ConfigError(problems, "EvaluateConfig")


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


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _cached_rows(path: Path, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of a cache file made with the same ``identity`` (labeler/model); other rows are ignored."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for raw in path.read_bytes().split(b"\n"):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn last line: JsonlWriter cuts it off when it reopens the file
        if isinstance(obj, dict) and obj.get("identity") == identity and "key" in obj:
            rows[obj["key"]] = obj
    return rows


def _label_all(labeler: Any, pairs: list[Pair], cache: Path, progress: Progress | None,
               problems: list[dict[str, Any]]) -> tuple[list[Pair], list[dict], list[dict]]:
    """Label references and predictions (cached); pairs whose labeling fails move to ``problems``."""
    identity = {"name": str(getattr(labeler, "name", type(labeler).__name__)),
                "version": str(getattr(labeler, "version", "unknown"))}
    cached = _cached_rows(cache, identity)
    todo = [(f"{side}:{p.id}", text) for p in pairs for side, text in (("ref", p.reference), ("pred", p.prediction))
            if f"{side}:{p.id}" not in cached or cached[f"{side}:{p.id}"]["hash"] != _text_hash(text)]
    failed: dict[str, str] = {}
    total, done = 2 * len(pairs), 2 * len(pairs) - len(todo)
    with JsonlWriter(cache, key="key", fsync=False) as writer:
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start:start + _CHUNK]
            try:
                results: list[Any] = list(labeler.label([t for _, t in chunk]))
                if len(results) != len(chunk):
                    raise RuntimeError(f"labeler returned {len(results)} rows for {len(chunk)} reports")
            except Exception as exc:  # noqa: BLE001 - isolate the failing report(s), keep the rest
                logger.warning("labeling a chunk of %d reports failed (%s); retrying one by one", len(chunk), exc)
                results = []
                for key, text in chunk:
                    try:
                        results.append(labeler.label([text])[0])
                    except Exception as item_exc:  # noqa: BLE001 - recorded as a problem of that pair
                        results.append(None)
                        failed[key] = f"{type(item_exc).__name__}: {item_exc}"
            for (key, text), row in zip(chunk, results):
                if row is None:
                    continue
                if not isinstance(row, dict):
                    failed[key] = f"labeler returned {type(row).__name__}, expected {{observation: value}}"
                    continue
                rec = {"key": key, "identity": identity, "hash": _text_hash(text),
                       "labels": {o: row.get(o) for o in OBSERVATIONS_14}}
                writer.write(rec)
                cached[key] = rec
            done += len(chunk)
            if progress:
                progress("labels", done, total)
    kept, ref_rows, pred_rows = [], [], []
    for p in pairs:
        errs = [f"{side} report: {failed[f'{side}:{p.id}']}" for side in ("ref", "pred") if f"{side}:{p.id}" in failed]
        if errs:
            problems.append({"line": p.line, "id": p.id, "error": f"labeling failed ({'; '.join(errs)})"})
            continue
        kept.append(p)
        ref_rows.append(cached[f"ref:{p.id}"]["labels"])
        pred_rows.append(cached[f"pred:{p.id}"]["labels"])
    return kept, ref_rows, pred_rows


def _radgraph_scores(scorer: RadGraphScorer, pairs: list[Pair], cache: Path, progress: Progress | None) -> np.ndarray:
    identity = {"model_type": scorer.model_type, "version": scorer.version, "reward": "partial"}
    cached = _cached_rows(cache, identity)
    todo = [p for p in pairs if p.id not in cached or cached[p.id]["hash"] != _text_hash(p.reference + "\0" + p.prediction)]
    done = len(pairs) - len(todo)
    with JsonlWriter(cache, key="key", fsync=False) as writer:
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            scores = scorer.score([p.reference for p in chunk], [p.prediction for p in chunk])
            for p, s in zip(chunk, scores):
                rec = {"key": p.id, "identity": identity, "hash": _text_hash(p.reference + "\0" + p.prediction),
                       "f1": float(s)}
                writer.write(rec)
                cached[p.id] = rec
            done += len(chunk)
            if progress:
                progress("radgraph", done, len(pairs))
    return np.array([cached[p.id]["f1"] for p in pairs], dtype=np.float64)


def _versions(labeler: Any) -> dict[str, str | None]:
    out: dict[str, str | None] = {"llavarad": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "sacrebleu", "rouge_score", "scikit-learn", "matplotlib", "radgraph", "f1chexbert"):
        try:
            out[pkg] = _pkg_version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["labeler"] = f"{getattr(labeler, 'name', '?')} {getattr(labeler, 'version', '?')}"
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table_markdown(result: dict[str, Any]) -> str:
    m, name = result["metrics"], result["model"]
    boot = result["settings"]["bootstrap"]
    lines = [f"# Evaluation of {name} ({result['n']} reports)", "",
             f"Layout of LLaVA-Rad Supplementary Table 1; values x100 (0-100) with {round(100 * boot['confidence'])}% "
             f"bootstrap intervals ({boot['n_resamples']} resamples, seed {boot['seed']}). "
             f"Labeler: {result['settings']['labeler']}.", ""]
    groups = " | ".join(g if i == 0 or TABLE_COLUMNS[i - 1][1] != g else "" for i, (_, g, _) in enumerate(TABLE_COLUMNS))
    lines += [f"| Model | {groups} |", "|---" * (len(TABLE_COLUMNS) + 1) + "|",
              "| | " + " | ".join(s for _, _, s in TABLE_COLUMNS) + " |"]
    cells = []
    for key, _, _ in TABLE_COLUMNS:
        v = m.get(key)
        cells.append("-" if v is None else f"{_fmt(v['value'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    skipped = result["settings"]["metrics"]["F1-RadGraph"].get("skipped")
    if skipped:
        lines += ["", f"F1-RadGraph not computed: {skipped}"]
    pm = result["prior_mentions"]
    lines += ["", f"Predictions mentioning a prior study or change over time: {pm['n_flagged']} of {pm['n']} "
              f"({_fmt(pm['share'])}% [{_fmt(pm['ci_low'])}, {_fmt(pm['ci_high'])}]); "
              f"references: {_fmt(pm['reference_share'])}%.",
              "", f"Rows: {result['n_rows']} read, {result['n']} scored, {len(result['generation_errors'])} generation errors, "
              f"{len(result['problems'])} malformed or unscorable.", "",
              "## Per-observation F1 (x100)", "",
              "| Observation | Support | F1 (unc. neg.) | 95% CI | F1 (unc. pos.) | 95% CI |", "|---|---|---|---|---|---|"]
    for obs in OBSERVATIONS_14:
        a, b = result["per_observation"]["negative"][obs], result["per_observation"]["positive"][obs]
        lines.append(f"| {obs} | {a['support']} | {_fmt(a['f1'])} | [{_fmt(a['f1_ci_low'])}, {_fmt(a['f1_ci_high'])}] | "
                     f"{_fmt(b['f1'])} | [{_fmt(b['f1_ci_low'])}, {_fmt(b['f1_ci_high'])}] |")
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = list(OBSERVATIONS_14)
    y = np.arange(len(obs))
    fig, ax = plt.subplots(figsize=(8, 6), dpi=120)
    for k, (policy, label) in enumerate((("negative", "uncertain as negative"), ("positive", "uncertain as positive"))):
        po = result["per_observation"][policy]
        f1 = np.array([po[o]["f1"] for o in obs])
        err = np.array([[po[o]["f1"] - po[o]["f1_ci_low"] for o in obs], [po[o]["f1_ci_high"] - po[o]["f1"] for o in obs]])
        ax.barh(y + (k - 0.5) * 0.4, f1, height=0.4, xerr=np.nan_to_num(np.clip(err, 0, None)), capsize=2, label=label)
    po_n, po_p = result["per_observation"]["negative"], result["per_observation"]["positive"]
    ax.set_yticks(y, [f"{o} (n={po_n[o]['support']}/{po_p[o]['support']})" for o in obs])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("F1 (x100), 95% bootstrap CI; n = reference positives (uncertain as negative/positive)")
    ax.set_title(f"Per-observation F1: {result['model']} ({result['settings']['labeler']} labeler, n={result['n']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


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
        config: settings (default :class:`EvaluateConfig`).
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
    if labeler is None:
        try:
            from llavarad.evaluate.labelers import get_labeler

            options = {"weights": config.chexbert_weights} if config.labeler == "chexbert" and config.chexbert_weights else {}
            labeler = get_labeler(config.labeler, **options)
        except Exception as exc:  # noqa: BLE001 - missing weights/packages surface as many types
            raise EvaluationError(f"the {config.labeler!r} labeler is unavailable: {type(exc).__name__}: {exc}") from exc
    pairs, ref_labels, pred_labels = _label_all(labeler, data.pairs, out / "labels_cache.jsonl", progress, problems)
    if not pairs:
        first = (problems or data.generation_errors or [{"error": "none"}])[0]["error"]
        raise EvaluationError(f"{predictions}: nothing to score: {data.n_rows} rows, {len(data.generation_errors)} with a "
                              f"generation error, {len(problems)} malformed or unscorable (first: {first})")
    problems.sort(key=lambda p: p["line"])
    n, bs = len(pairs), config.bootstrap
    refs, hyps = [p.reference for p in pairs], [p.prediction for p in pairs]
    counts = resample_counts(n, bs, config.seed)  # one resample matrix for every metric: paired CIs
    if progress:
        progress("lexical", 0, 1)
    lex = lexical_metrics(refs, hyps, counts=counts, confidence=config.confidence)
    if progress:
        progress("lexical", 1, 1)
    f1 = chexbert_f1(ref_labels, pred_labels, counts=counts, confidence=config.confidence)

    rg_scores: np.ndarray | None = None
    skipped = None
    scorer = radgraph_scorer
    if config.radgraph == "off" and scorer is None:
        skipped = "turned off (--no-radgraph)"
    else:
        try:
            scorer = scorer or RadGraphScorer(weights=config.radgraph_weights)
            rg_scores = _radgraph_scores(scorer, pairs, out / "radgraph_cache.jsonl", progress)
        except RadGraphUnavailable as exc:
            skipped = str(exc)
            scorer = None
            logger.info("F1-RadGraph skipped: %s", exc)

    metrics: dict[str, dict[str, float] | None] = {}
    for policy, suffix in (("negative", ""), ("positive", "+")):
        for subset in ("14", "5"):
            for average in ("micro", "macro"):
                v, lo, hi = f1.summary[policy][subset][average]
                metrics[f"{average.capitalize()}-F1-{subset}{suffix}"] = {
                    "value": v, "ci_low": lo, "ci_high": hi, "bootstrap_median": f1.medians[policy][subset][average]}
    if rg_scores is not None:
        v, lo, hi = bootstrap_mean_ci(rg_scores, counts=counts, n_resamples=bs, confidence=config.confidence)
        metrics["F1-RadGraph"] = {"value": 100 * v, "ci_low": 100 * lo, "ci_high": 100 * hi,
                                  "bootstrap_median": 100 * bootstrap_median(counts @ rg_scores / n)}
    else:
        metrics["F1-RadGraph"] = None
    for key, val in (("BLEU-1", lex.bleu1), ("BLEU-4", lex.bleu4), ("ROUGE-L", lex.rouge_l)):
        metrics[key] = {"value": val[0], "ci_low": val[1], "ci_high": val[2], "bootstrap_median": lex.medians[key]}

    priors = detect_prior_mentions(hyps)
    ref_priors = detect_prior_mentions(refs)
    pv, plo, phi = bootstrap_mean_ci(priors.flagged.astype(np.float64), counts=counts, n_resamples=bs,
                                     confidence=config.confidence)
    metrics["Prior-mentions"] = {"value": 100 * pv, "ci_low": 100 * plo, "ci_high": 100 * phi,
                                 "bootstrap_median": 100 * bootstrap_median(counts @ priors.flagged.astype(np.float64) / n)}

    metric_settings = {**{k: dict(chexbert_f1_settings(labeler.name, labeler.version, getattr(labeler, "settings", {})),
                                  metric=k) for k, _, _ in TABLE_COLUMNS[:8]},
                       "F1-RadGraph": radgraph_settings(scorer, skipped), **lexical_settings(),
                       "Prior-mentions": {"implementation": "llavarad.evaluate.priors (rules)", "version": __version__,
                                          "settings": {"unit": "% of predictions with >=1 prior-comparison sentence"}}}
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
        "settings": {"config": config_to_dict(config), "labeler": labeler.name,
                     "bootstrap": {"n_resamples": bs, "seed": config.seed, "confidence": config.confidence,
                                   "method": "percentile", "paired": "same resamples for every metric",
                                   "rng": "numpy.random.default_rng(seed).integers"},
                     "metrics": metric_settings, "generation": data.generation_settings},
        "versions": _versions(labeler),
    }
    _write_outputs(result, out, pairs, lex, ref_labels, pred_labels, rg_scores, priors, config)
    return result


def _write_outputs(result: dict[str, Any], out: Path, pairs: list[Pair], lex: Any, ref_labels: list[dict],
                   pred_labels: list[dict], rg_scores: np.ndarray | None, priors: Any, config: EvaluateConfig) -> None:
    m = result["metrics"]
    header = ["model", "n"] + [c for key, _, _ in TABLE_COLUMNS for c in (key, f"{key} ci_low", f"{key} ci_high")]
    row: list[Any] = [result["model"], result["n"]]
    for key, _, _ in TABLE_COLUMNS:
        row += ["", "", ""] if m[key] is None else [round(m[key][k], 4) for k in ("value", "ci_low", "ci_high")]
    _write_atomic(out / "table.csv", _csv_text(header, [row]))
    _write_atomic(out / "table.md", _table_markdown(result))
    obs_rows = []
    for policy in ("negative", "positive"):
        for obs in OBSERVATIONS_14:
            d = result["per_observation"][policy][obs]
            obs_rows.append([policy, obs, d["support"], d["predicted"]] +
                            [round(d[k], 4) for k in ("precision", "recall", "f1", "f1_ci_low", "f1_ci_high")])
    _write_atomic(out / "per_observation.csv", _csv_text(
        ["uncertain_as", "observation", "support", "predicted", "precision", "recall", "f1", "f1_ci_low", "f1_ci_high"],
        obs_rows))
    st = lex.bleu_stats.stats
    f1_neg, f1_pos = per_pair_f1(ref_labels, pred_labels, "negative"), per_pair_f1(ref_labels, pred_labels, "positive")
    per_report = [[p.id, round(bleu_from_stats(st[i], 1, True) / 100, 6), round(bleu_from_stats(st[i], 4, True) / 100, 6),
                   round(float(lex.rouge_l_per_report[i]), 6), round(f1_neg[i], 6), round(f1_pos[i], 6),
                   "" if rg_scores is None else round(float(rg_scores[i]), 6), int(priors.flagged[i])]
                  for i, p in enumerate(pairs)]
    _write_atomic(out / "per_report.csv", _csv_text(
        ["id", "sentence_bleu1", "sentence_bleu4", "rougeL", "chexbert_f1_14", "chexbert_f1_14_plus", "radgraph_f1",
         "prior_mention"], per_report))
    _write_atomic(out / "prior_mentions.csv", _csv_text(
        ["id", "sentence", "cues", "categories"],
        [[pairs[mn.report].id, mn.sentence, "; ".join(mn.cues), "; ".join(mn.categories)] for mn in priors.mentions]))
    if config.plot:
        _plot(result, out / "per_observation_f1.png")
    _write_atomic(out / "metrics.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
