"""Validation of the CheXprompt judge against six radiologists (ReXVal), as in the paper's Fig. 4.

ReXVal (PhysioNet, credentialed) ships two CSV files, read here as they are:

- ``50_samples_gt_and_candidates.csv``: ``study_id``, ``gt_report`` and four candidate-report
  columns (one per metric that selected the candidate); 50 x 4 = 200 pairs. A leading unnamed
  index column, if present, is ignored.
- ``6_valid_raters_per_rater_error_categories.csv``: ``study_number`` (0-based row of the first
  file), ``candidate_type`` (a candidate column name), ``rater_index``, ``error_category`` (1-6,
  the judge's types (a)-(f) in order), ``clinically_significant`` (True/False), ``num_errors``.

A rater's total (significant) errors for a pair are the sum of ``num_errors`` over their rows
(significant rows only); a (pair, rater) without rows counts 0 and is reported in the result.

Computed, on the pairs the judge could score:
- Kendall's tau-b between each metric and the radiologists' mean total / significant errors, with
  bootstrap CIs. Similarity metrics (BLEU, ROUGE-L, labeler F1, RadGraph F1) are negated first,
  so for every row a higher tau means better agreement with the radiologists.
- Leave-one-rater-out: for each radiologist, the mean absolute difference (MAD) between them and
  the mean of the other five, against the judge's MAD to that same mean, with a paired t-test.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.chexprompt.judge import (
    ChexpromptConfig,
    JudgePair,
    judge_with_stats,
    locked_output,
    pending_pairs,
    read_results,
)
from llavarad.chexprompt.run import package_versions
from llavarad.config import config_to_dict
from llavarad.evaluate.bootstrap import percentile_interval, resample_counts
from llavarad.llm import LLMClient

logger = logging.getLogger(__name__)

__all__ = ["PAIRS_FILE", "RATERS_FILE", "RexvalData", "kendall_table", "leave_one_rater_out", "load_rexval",
           "similarity_scores", "tau_b_resampled", "validate_rexval"]

PAIRS_FILE = "50_samples_gt_and_candidates.csv"
RATERS_FILE = "6_valid_raters_per_rater_error_categories.csv"
_RATER_COLUMNS = ("study_number", "candidate_type", "rater_index", "error_category", "clinically_significant", "num_errors")
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclass
class RexvalData:
    """Pairs and rater counts. ``total`` / ``significant``: shape (n_pairs, n_raters)."""

    pairs: list[JudgePair]
    raters: list[str]
    total: np.ndarray
    significant: np.ndarray
    missing_rater_rows: int = 0
    empty_pairs: list[str] = field(default_factory=list)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the ReXVal file {path.name} (PhysioNet 'rexval' 1.0.0)")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def load_rexval(directory: str | Path) -> RexvalData:
    """Read and check both ReXVal CSV files; every problem names the file, line and value."""
    d = Path(directory)
    pairs_path, raters_path = d / PAIRS_FILE, d / RATERS_FILE
    cols, rows = _read_csv(pairs_path)
    cols = [c for c in cols if c and not c.startswith("Unnamed")]
    if cols[:2] != ["study_id", "gt_report"] or len(cols) < 3:
        raise ValueError(f"{pairs_path}: expected columns study_id, gt_report, then candidate columns; found {cols}")
    cand_types = cols[2:]
    pairs: list[JudgePair] = []
    empty: list[str] = []
    index: dict[tuple[int, str], int] = {}
    for i, row in enumerate(rows):
        for ct in cand_types:
            pid = f"{i}/{ct}"
            ref, cand = (row.get("gt_report") or "").strip(), (row.get(ct) or "").strip()
            if not ref or not cand:
                empty.append(pid)
            index[(i, ct)] = len(pairs)
            pairs.append(JudgePair(pid, ref, cand))
    _, rrows = _read_csv(raters_path)
    if rrows and (missing := [c for c in _RATER_COLUMNS if c not in rrows[0]]):
        raise ValueError(f"{raters_path}: missing columns {missing}; expected {', '.join(_RATER_COLUMNS)}")
    problems: list[str] = []
    parsed: list[tuple[int, str, bool, int]] = []
    raters: list[str] = []
    for line, r in enumerate(rrows, start=2):
        try:
            study = int(float(r["study_number"]))
            cat = int(float(r["error_category"]))
            n_err = float(r["num_errors"])
        except (TypeError, ValueError):
            problems.append(f"{raters_path}:{line}: study_number/error_category/num_errors must be numbers, got "
                            f"{r['study_number']!r}/{r['error_category']!r}/{r['num_errors']!r}")
            continue
        sig_raw = str(r["clinically_significant"]).strip().lower()
        if sig_raw not in _TRUE | _FALSE:
            problems.append(f"{raters_path}:{line}: clinically_significant={r['clinically_significant']!r} is not True/False")
            continue
        key = (study, str(r["candidate_type"]).strip())
        if key not in index:
            problems.append(f"{raters_path}:{line}: no pair for study_number={study} candidate_type={key[1]!r} "
                            f"(study_number is the 0-based row of {PAIRS_FILE}; candidate types: {', '.join(cand_types)})")
            continue
        if not 1 <= cat <= 6:
            problems.append(f"{raters_path}:{line}: error_category={cat} is not in 1-6")
            continue
        if n_err < 0 or not float(n_err).is_integer():
            problems.append(f"{raters_path}:{line}: num_errors={r['num_errors']!r} must be a non-negative integer")
            continue
        rater = str(r["rater_index"]).strip()
        if rater not in raters:
            raters.append(rater)
        parsed.append((index[key], rater, sig_raw in _TRUE, int(n_err)))
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the ReXVal rater file:\n  " + "\n  ".join(problems[:20]) + more)
    if len(raters) < 2:
        raise ValueError(f"{raters_path}: found {len(raters)} rater(s); leave-one-rater-out needs at least 2")
    raters = sorted(raters, key=lambda x: (not x.lstrip("-").isdigit(), int(x) if x.lstrip("-").isdigit() else 0, x))
    col = {r: j for j, r in enumerate(raters)}
    total = np.zeros((len(pairs), len(raters)))
    sig = np.zeros((len(pairs), len(raters)))
    seen = np.zeros((len(pairs), len(raters)), dtype=bool)
    for p, rater, is_sig, n_err in parsed:
        total[p, col[rater]] += n_err
        seen[p, col[rater]] = True
        if is_sig:
            sig[p, col[rater]] += n_err
    missing_rows = int((~seen).sum())
    if missing_rows:
        logger.warning("%d (pair, rater) combinations have no rows in %s; counted as 0 errors", missing_rows, raters_path.name)
    return RexvalData(pairs, raters, total, sig, missing_rows, empty)


def _labeler():
    try:
        from llavarad.evaluate.labelers import get_labeler  # type: ignore[attr-defined]

        return get_labeler("rules"), "llavarad rules labeler"
    except (ImportError, AttributeError, KeyError, ValueError):
        pass
    try:
        from llavarad.evaluate.rule_labeler import RuleLabeler

        return RuleLabeler(), "llavarad rule_labeler"
    except ImportError:
        return None, None


def similarity_scores(refs: list[str], hyps: list[str], radgraph_weights: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-pair BLEU-4, ROUGE-L, labeler F1 (14 observations) and, when available, F1-RadGraph.

    Returns ``({metric: scores (n_pairs,)}, {metric: note})``; a metric that cannot be computed
    here is absent from the scores and its reason is in the notes.
    """
    from llavarad.evaluate.lexical import per_report_scores

    notes: dict[str, str] = {}
    lex = per_report_scores(refs, hyps)
    scores = {"bleu4": np.asarray(lex["bleu4"]), "rougeL": np.asarray(lex["rougeL"])}
    labeler, name = _labeler()
    if labeler is None:
        notes["labeler_f1"] = "skipped: no rule-based labeler is importable"
    else:
        from llavarad.evaluate.chexbert_f1 import per_pair_f1

        scores["labeler_f1"] = np.asarray(per_pair_f1(labeler.label(list(refs)), labeler.label(list(hyps))))
        notes["labeler_f1"] = f"{name}, per-pair F1 over 14 observations, uncertain as negative"
    try:
        from llavarad.evaluate.radgraph import RadGraphScorer, RadGraphUnavailable
    except ImportError:
        notes["radgraph_f1"] = "skipped: llavarad.evaluate.radgraph is not available"
        return scores, notes
    try:
        scores["radgraph_f1"] = RadGraphScorer(weights=radgraph_weights).score(refs, hyps)
        notes["radgraph_f1"] = "radgraph partial reward"
    except RadGraphUnavailable as exc:
        notes["radgraph_f1"] = f"skipped: {str(exc).split('.')[0]}"
    return scores, notes


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: a statistic undefined on this data (e.g. constant counts) is None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _tau(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy.stats import kendalltau

    res = kendalltau(x, y, variant="b")
    return float(res.statistic), float(res.pvalue)


def tau_b_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Kendall tau-b of (x, y) on every bootstrap resample at once.

    ``counts`` (n_resamples, n_items) holds how often each item appears in each resample
    (:func:`llavarad.evaluate.bootstrap.resample_counts`); repeated items are ties, exactly as
    ``scipy.stats.kendalltau`` sees them on the resampled arrays. Returns shape (n_resamples,);
    NaN where x or y is constant on a resample. One quadratic form per term instead of a scipy
    call per resample: 500 resamples of 200 pairs take milliseconds.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    tx, ty = (x[:, None] == x[None, :]).astype(np.float64), (y[:, None] == y[None, :]).astype(np.float64)
    n = counts.sum(axis=1)

    def quad(m: np.ndarray) -> np.ndarray:
        return np.einsum("bi,ij,bj->b", counts, m, counts)

    s = 0.5 * quad(sx * sy)  # concordant minus discordant unordered pairs
    n0 = n * (n - 1) / 2.0
    n1 = 0.5 * (quad(tx) - n)  # unordered pairs tied in x (self-pairs removed)
    n2 = 0.5 * (quad(ty) - n)
    denom = np.sqrt((n0 - n1) * (n0 - n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), np.nan)


def kendall_table(methods: dict[str, np.ndarray], targets: dict[str, np.ndarray], n_resamples: int = 500, seed: int = 0,
                  confidence: float = 0.95) -> list[dict[str, Any]]:
    """Kendall tau-b of every method's per-pair errors against every target, with bootstrap CI.

    ``methods`` values are already oriented as "more = more errors" (similarities negated).
    """
    rows = []
    for target, y in targets.items():
        counts = resample_counts(len(y), n_resamples, seed)
        for method, x in methods.items():
            tau, p = _tau(x, y)
            low, high = percentile_interval(tau_b_resampled(x, y, counts), confidence)
            rows.append({"target": target, "method": method, "tau_b": _finite(tau), "p_value": _finite(p),
                         "ci_low": _finite(low), "ci_high": _finite(high), "n": int(len(y))})
    return rows


def leave_one_rater_out(raters: np.ndarray, judge: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """For each rater r (columns of ``raters``, shape (n_pairs, n_raters)): MAD of r and of the
    judge (shape (n_pairs,)) to the mean of the other raters, and a paired t-test of the two
    per-pair absolute differences (judge minus rater; negative t = judge closer)."""
    from scipy.stats import ttest_rel

    out = []
    for j, name in enumerate(names):
        others = np.delete(raters, j, axis=1).mean(axis=1)
        d_rater = np.abs(raters[:, j] - others)
        d_judge = np.abs(judge - others)
        if np.allclose(d_judge - d_rater, 0):
            t, p = 0.0, 1.0
        else:
            res = ttest_rel(d_judge, d_rater)
            t, p = float(res.statistic), float(res.pvalue)
        out.append({"rater": name, "n": int(len(judge)), "mad_left_out_rater": float(d_rater.mean()),
                    "mad_judge": float(d_judge.mean()), "t_statistic": _finite(t), "p_value": _finite(p),
                    "judge_closer": bool(d_judge.mean() < d_rater.mean())})
    return out


def validate_rexval(directory: str | Path, out_dir: str | Path, cfg: ChexpromptConfig, client: LLMClient | None = None,
                    radgraph_weights: str | None = None, on_start: Callable[[int, int], None] | None = None,
                    on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Judge the ReXVal pairs (resumable, ``<out>/chexprompt_results.jsonl``), compare with the
    radiologists and other metrics, and write ``rexval.json`` / ``.csv`` / ``.md`` / ``.png``."""
    data = load_rexval(directory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "chexprompt_results.jsonl"
    usable = [p for p in data.pairs if p.id not in set(data.empty_pairs)]
    prompt = cfg.judge_prompt()
    with locked_output(out):  # two runs on one folder would judge every pair twice
        todo = pending_pairs(usable, cfg, results_path, prompt)
        if on_start is not None:
            on_start(len(data.pairs), len(todo))
        stats = judge_with_stats(todo, cfg, results_path, client=client, on_row=on_row, prompt=prompt)
    judged = read_results(results_path)
    keep = [i for i, p in enumerate(data.pairs) if judged.get(p.id, {}).get("ok")]
    failed = [{"id": p.id, "error": "input: empty reference or candidate" if p.id in data.empty_pairs
               else (judged.get(p.id) or {}).get("error") or "not judged"}
              for i, p in enumerate(data.pairs) if i not in set(keep)]
    if len(keep) < 3:
        raise RuntimeError(f"the judge scored only {len(keep)} of {len(data.pairs)} pairs; see {results_path} for the errors")
    kept_pairs = [data.pairs[i] for i in keep]
    judge_total = np.array([float(judged[p.id]["total"]) for p in kept_pairs])
    judge_sig = np.array([float(judged[p.id]["significant"]) for p in kept_pairs])
    rad_total, rad_sig = data.total[keep], data.significant[keep]
    sims, notes = similarity_scores([p.reference for p in kept_pairs], [p.prediction for p in kept_pairs], radgraph_weights)
    # methods oriented as "more = more errors"; the judge is compared with the matching count
    targets = {"total_errors": rad_total.mean(axis=1), "significant_errors": rad_sig.mean(axis=1)}
    table = []
    for target, judge_vec in (("total_errors", judge_total), ("significant_errors", judge_sig)):
        methods = {"chexprompt": judge_vec, **{name: -s for name, s in sims.items()}}
        table += kendall_table(methods, {target: targets[target]}, cfg.bootstrap, cfg.seed, cfg.confidence)
    loro = {"total_errors": leave_one_rater_out(rad_total, judge_total, data.raters),
            "significant_errors": leave_one_rater_out(rad_sig, judge_sig, data.raters)}
    metrics: dict[str, dict[str, Any]] = {}
    for row in table:
        metrics[f"kendall_tau_b/{row['target']}/{row['method']}"] = {"value": row["tau_b"], "ci_low": row["ci_low"], "ci_high": row["ci_high"]}
    for target, rows in loro.items():
        for who, key in (("left_out_rater", "mad_left_out_rater"), ("chexprompt", "mad_judge")):
            metrics[f"mad/{target}/{who}"] = {"value": float(np.mean([r[key] for r in rows])), "ci_low": None, "ci_high": None}
    result = {
        "n": len(keep),
        "n_pairs": len(data.pairs),
        "n_failed": len(failed),
        "metrics": metrics,
        "kendall": table,
        "leave_one_rater_out": loro,
        "settings": {"rexval_dir": str(directory), "judge": cfg.judge_signature(prompt), "prompt_source": prompt.provenance, "n_samples": cfg.n_samples,
                     "bootstrap": cfg.bootstrap, "seed": cfg.seed, "confidence": cfg.confidence,
                     "raters": data.raters, "missing_rater_rows_counted_as_zero": data.missing_rater_rows,
                     "similarity_metrics_negated": True, "metric_notes": notes, "llm": config_to_dict(cfg.llm)},
        "versions": package_versions("scipy", "numpy", "sacrebleu", "rouge_score"),
        "usage": {"this_run": stats},
        "failed": failed,
    }
    _write(out, result)
    return result


def _write(out: Path, result: dict[str, Any]) -> None:
    (out / "rexval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out / "rexval.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "value", "ci_low", "ci_high"])
        for name, m in result["metrics"].items():
            w.writerow([name] + ["" if m[k] is None else f"{m[k]:.6g}" for k in ("value", "ci_low", "ci_high")])
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    g = lambda v: "n/a" if v is None else f"{v:.2g}"
    lines = [f"# ReXVal: judge vs radiologists ({result['n']} of {result['n_pairs']} pairs judged)", "",
             "## Kendall's tau-b with the radiologists' mean error count", "",
             "(similarity metrics negated: higher = better agreement for every row)", "",
             "| errors | method | tau-b | CI low | CI high | p |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['target']} | {r['method']} | {f(r['tau_b'])} | {f(r['ci_low'])} | {f(r['ci_high'])} | {g(r['p_value'])} |"
              for r in result["kendall"]]
    for target, rows in result["leave_one_rater_out"].items():
        lines += ["", f"## Leave-one-rater-out, {target.replace('_', ' ')}", "",
                  "| left-out rater | MAD rater | MAD judge | t (judge - rater) | p | judge closer |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {r['rater']} | {f(r['mad_left_out_rater'])} | {f(r['mad_judge'])} | {f(r['t_statistic'])} | {g(r['p_value'])} | "
                  f"{'yes' if r['judge_closer'] else 'no'} |" for r in rows]
    notes = result["settings"]["metric_notes"]
    if notes:
        lines += ["", "Notes: " + "; ".join(f"{k}: {v}" for k, v in notes.items())]
    if result["failed"]:
        lines += ["", f"{len(result['failed'])} pair(s) not judged: " + ", ".join(x["id"] for x in result["failed"][:30])]
    (out / "rexval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    methods = list(dict.fromkeys(r["method"] for r in result["kendall"]))
    x = np.arange(len(methods))
    for k, target in enumerate(("total_errors", "significant_errors")):
        vals = [next(r["tau_b"] for r in result["kendall"] if r["method"] == m and r["target"] == target) or 0.0 for m in methods]
        a1.bar(x + (k - 0.5) * 0.38, vals, width=0.38, label=target.replace("_", " "))
    a1.set_xticks(x)
    a1.set_xticklabels(methods, rotation=20, fontsize=8)
    a1.set_ylabel("Kendall tau-b vs radiologists")
    a1.legend(fontsize=8)
    rows = result["leave_one_rater_out"]["total_errors"]
    xr = np.arange(len(rows))
    a2.bar(xr - 0.19, [r["mad_left_out_rater"] for r in rows], width=0.38, label="left-out radiologist", color="#7f8c8d")
    a2.bar(xr + 0.19, [r["mad_judge"] for r in rows], width=0.38, label="CheXprompt judge", color="#2980b9")
    a2.set_xticks(xr)
    a2.set_xticklabels([str(r["rater"]) for r in rows])
    a2.set_xlabel("left-out rater")
    a2.set_ylabel("MAD to mean of other raters (total errors)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rexval.png")
    plt.close(fig)
