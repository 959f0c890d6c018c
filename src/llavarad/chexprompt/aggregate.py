"""CheXprompt aggregates with bootstrap CIs, and the result files (JSON, CSV, Markdown, PNG).

Metrics over judged reports (failed reports are listed, never counted as error-free):
mean total / significant / insignificant errors per report, share of reports free of any error,
share free of clinically significant errors, and the mean count of each of the 12
(type x significance) cells. Intervals: percentile bootstrap over reports
(:mod:`llavarad.evaluate.bootstrap`, same resamples for every metric).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.evaluate.bootstrap import percentile_interval, resample_counts
from llavarad.prompts.chexprompt import COUNT_COLUMNS, ERROR_TYPES

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE_METRICS", "metric_label", "summarize", "write_report_table", "write_summary"]

HEADLINE_METRICS: tuple[str, ...] = (
    "mean_total_errors",
    "mean_significant_errors",
    "mean_insignificant_errors",
    "share_error_free",
    "share_significant_error_free",
)

_LABELS = {
    "mean_total_errors": "Mean total errors per report",
    "mean_significant_errors": "Mean clinically significant errors per report",
    "mean_insignificant_errors": "Mean clinically insignificant errors per report",
    "share_error_free": "Share of reports free of any error",
    "share_significant_error_free": "Share of reports free of significant errors",
}


def metric_label(name: str) -> str:
    """Human-readable name of a metric for tables and plots."""
    if name in _LABELS:
        return _LABELS[name]
    for key, letter, _ in ERROR_TYPES:
        for kind in ("significant", "insignificant"):
            if name == f"mean_{key}_{kind}":
                return f"({letter}) {key.replace('_', ' ')}, {kind} (mean per report)"
    return name


def _per_report_values(rows: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Names and an (n_reports, n_metrics) matrix of per-report values whose means are the metrics."""
    names = list(HEADLINE_METRICS) + [f"mean_{c}" for c in COUNT_COLUMNS]
    mat = np.zeros((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        counts = row["counts"]
        mat[i, :5] = [row["total"], row["significant"], row["insignificant"], row["error_free"], row["significant_error_free"]]
        mat[i, 5:] = [float(counts[c]) for c in COUNT_COLUMNS]
    return names, mat


def summarize(rows: Sequence[dict[str, Any]], n_resamples: int = 500, seed: int = 0,
              confidence: float = 0.95) -> dict[str, dict[str, float | None]]:
    """``{metric: {value, ci_low, ci_high}}`` over the judged (``ok``) rows; values are None when
    no report was judged."""
    ok_rows = [r for r in rows if r.get("ok")]
    names = list(HEADLINE_METRICS) + [f"mean_{c}" for c in COUNT_COLUMNS]
    if not ok_rows:
        return {n: {"value": None, "ci_low": None, "ci_high": None} for n in names}
    names, mat = _per_report_values(ok_rows)
    weights = resample_counts(len(ok_rows), n_resamples, seed)  # (n_resamples, n_reports)
    reps = weights @ mat / len(ok_rows)  # (n_resamples, n_metrics)
    values = mat.mean(axis=0)
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(names):
        low, high = percentile_interval(reps[:, j], confidence)
        out[name] = {"value": float(values[j]), "ci_low": low, "ci_high": high}
    return out


def _fmt(value: float | None, share: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}%" if share else f"{value:.3f}"


def write_summary(out_dir: str | Path, result: dict[str, Any], stem: str = "chexprompt") -> dict[str, Path]:
    """Write ``result`` (the evaluation-result contract: n, metrics, settings, versions, ...) as
    ``<stem>.json``, the metric table as ``<stem>.csv`` and ``<stem>.md``, and ``<stem>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{stem}.{k}" for k in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    metrics: dict[str, dict[str, Any]] = result["metrics"]
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "value", "ci_low", "ci_high"])
        for name, m in metrics.items():
            w.writerow([name] + ["" if m[k] is None else f"{m[k]:.6g}" for k in ("value", "ci_low", "ci_high")])
    conf = result.get("settings", {}).get("confidence", 0.95)
    lines = [
        f"# CheXprompt: {result['n']} reports judged, {result.get('n_failed', 0)} failed",
        "",
        f"Judge: `{result.get('settings', {}).get('judge', {}).get('model', '?')}`, prompt "
        f"`{result.get('settings', {}).get('judge', {}).get('prompt_version', '?')}`; "
        f"{int(100 * conf)}% bootstrap CI over reports ({result.get('settings', {}).get('bootstrap', '?')} resamples).",
        "",
        "| metric | value | CI low | CI high |",
        "|---|---:|---:|---:|",
    ]
    for name, m in metrics.items():
        share = name.startswith("share_")
        lines.append(f"| {metric_label(name)} | {_fmt(m['value'], share)} | {_fmt(m['ci_low'], share)} | {_fmt(m['ci_high'], share)} |")
    if result.get("failed"):
        lines += ["", f"Failed reports ({len(result['failed'])}): not judged and not counted above.", ""]
        lines += [f"- `{f['id']}`: {f['error']}" for f in result["failed"][:50]]
        if len(result["failed"]) > 50:
            lines.append(f"- ... and {len(result['failed']) - 50} more (see {stem}.json)")
    paths["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(metrics, paths["png"], result)
    return paths


def _plot(metrics: dict[str, dict[str, Any]], path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    x = np.arange(len(ERROR_TYPES))
    for k, (kind, color) in enumerate((("significant", "#c0392b"), ("insignificant", "#7f8c8d"))):
        vals, lo, hi = [], [], []
        for key, _, _ in ERROR_TYPES:
            m = metrics[f"mean_{key}_{kind}"]
            v = m["value"] if m["value"] is not None else 0.0
            vals.append(v)
            lo.append(max(0.0, v - m["ci_low"]) if m["ci_low"] is not None and not math.isnan(m["ci_low"]) else 0.0)
            hi.append(max(0.0, m["ci_high"] - v) if m["ci_high"] is not None and not math.isnan(m["ci_high"]) else 0.0)
        ax.bar(x + (k - 0.5) * 0.38, vals, width=0.38, yerr=[lo, hi], capsize=3, color=color, label=f"clinically {kind}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"({letter}) {key.replace('_', ' ')}" for key, letter, _ in ERROR_TYPES], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mean errors per report")
    tot = metrics["mean_total_errors"]["value"]
    sig = metrics["mean_significant_errors"]["value"]
    title = f"CheXprompt, n={result['n']}"
    if tot is not None:
        title += f": {tot:.2f} errors/report ({sig:.2f} significant)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.28)  # fixed layout: tight_layout costs ~0.3 s
    fig.savefig(path)
    plt.close(fig)


def write_report_table(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Per-report CSV: id, ok, the 12 counts, totals, and the error of failed reports."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "ok", *COUNT_COLUMNS, "total", "significant", "insignificant", "error"])
        for r in rows:
            counts = r.get("counts") or {}
            w.writerow([r["id"], int(bool(r.get("ok"))), *[counts.get(c, "") for c in COUNT_COLUMNS],
                        r.get("total", ""), r.get("significant", ""), r.get("insignificant", ""), r.get("error") or ""])
