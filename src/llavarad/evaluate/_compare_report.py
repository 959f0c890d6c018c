"""The files of ``llavarad compare``: compare.json, compare.md, compare.csv and compare.png."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.evaluate.chexbert_f1 import OBSERVATIONS_14
from llavarad.io.outputs import atomic_write

__all__ = ["compare_markdown", "write_compare_outputs"]


def _f(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _cell(e: dict[str, Any], sign: bool = False) -> str:
    return f"{_f(e['value'], sign=sign)} [{_f(e['ci_low'], sign=sign)}, {_f(e['ci_high'], sign=sign)}]"


def _verdict(d: dict[str, Any]) -> str:
    if d["ci_low"] > 0:
        return "better"
    if d["ci_high"] < 0:
        return "worse"
    return "no clear change"


def compare_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown page: summary metrics, then per-observation F1."""
    b, a = result["before"]["name"], result["after"]["name"]
    boot = result["settings"]["bootstrap"]
    conf = round(100 * boot["confidence"])
    headline = ("bootstrap median for F1 and ROUGE-L (the release convention)"
                if result["settings"]["statistic"] == "release" else "the value on all shared reports")
    caption = (f"Values x100 with {conf}% bootstrap intervals; the difference ({a} - {b}) is paired: both models on "
               f"the same {boot['n_resamples']} resamples (seed {boot['seed']}). Headline: {headline}. "
               "p(not better) is the share of resamples where the difference is <= 0.")
    lines = [f"# {a} vs {b} ({result['n']} shared reports)", "", caption, "",
             f"| Metric | {b} | {a} | Difference | p(not better) | Verdict |", "|---|---|---|---|---|---|"]
    for key, m in result["metrics"].items():
        d = m["difference"]
        lines.append(f"| {key} | {_cell(m['before'])} | {_cell(m['after'])} | {_cell(d, sign=True)} | "
                     f"{_f(d['p_not_better'], 3)} | {_verdict(d)} |")
    lines += ["", "## Per-observation F1 (uncertain as negative)", "",
              f"| Observation | Support | {b} | {a} | Difference | p(not better) |", "|---|---|---|---|---|---|"]
    for obs in OBSERVATIONS_14:
        o = result["per_observation"]["negative"][obs]
        lines.append(f"| {obs} | {o['support']} | {_cell(o['before'])} | {_cell(o['after'])} | "
                     f"{_cell(o['difference'], sign=True)} | {_f(o['difference']['p_not_better'], 3)} |")
    rows = (f"Rows: {b} {result['before']['n_rows']} ({result['before']['generation_errors']} generation "
            f"errors), {a} {result['after']['n_rows']} ({result['after']['generation_errors']} generation errors); "
            f"{len(result['problems'])} reports not scored in both (listed in compare.json).")
    lines += ["", rows]
    return "\n".join(lines) + "\n"


def _csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "uncertain_as", "support", "model", "value", "ci_low", "ci_high", "p_not_better"])
    rows = [(k, "", "", m) for k, m in result["metrics"].items()]
    rows += [(f"F1 {obs}", policy, o["support"], o) for policy in ("negative", "positive")
             for obs, o in result["per_observation"][policy].items()]
    for key, policy, support, m in rows:
        for side in ("before", "after", "difference"):
            e = m[side]
            name = result[side]["name"] if side != "difference" else "difference"
            w.writerow([key, policy, support, name, *(round(e[k], 4) for k in ("value", "ci_low", "ci_high")),
                        round(e["p_not_better"], 4) if side == "difference" else ""])
    return buf.getvalue()


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6), dpi=110)
    for ax, items, title in (
        (ax1, list(result["metrics"].items()), "Summary metrics"),
        (ax2, [(f"{o} (n={v['support']})", v) for o, v in result["per_observation"]["negative"].items()],
         "Per-observation F1 (uncertain as negative)"),
    ):
        y = np.arange(len(items))
        d = [m["difference"] for _, m in items]
        val = np.array([e["value"] for e in d])
        err = np.array([[e["value"] - e["ci_low"] for e in d], [e["ci_high"] - e["value"] for e in d]])
        colors = ["tab:green" if e["ci_low"] > 0 else "tab:red" if e["ci_high"] < 0 else "tab:gray" for e in d]
        ax.barh(y, np.nan_to_num(val), xerr=np.nan_to_num(np.clip(err, 0, None)), color=colors, capsize=2)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [k for k, _ in items])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(f"{result['after']['name']} - {result['before']['name']} (x100, paired 95% CI)")
    fig.suptitle(f"{result['after']['name']} vs {result['before']['name']}: {result['n']} shared reports "
                 "(green: better, red: worse, grey: interval includes 0)")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def write_compare_outputs(result: dict[str, Any], out: Path, plot: bool = True) -> None:
    """Write compare.md, compare.csv, (compare.png) and compare.json (last: its presence means done)."""
    with atomic_write(out / "compare.md") as fh:
        fh.write(compare_markdown(result))
    with atomic_write(out / "compare.csv") as fh:
        fh.write(_csv(result))
    if plot:
        _plot(result, out / "compare.png")
    with atomic_write(out / "compare.json") as fh:
        fh.write(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=True) + "\n")
