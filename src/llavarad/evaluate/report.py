"""Result files of the evaluation stage: the table (Supplementary Table 1 layout), CSVs, the plot.

``table.csv`` / ``table.md`` (one row, every column with its interval; the caption of ``table.md``
says which statistic heads each column), ``per_observation.csv``, ``per_observation_f1.png``,
``per_report.csv``, ``prior_mentions.csv`` and ``metrics.json``, each written whole (temp file
then rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.evaluate.chexbert_f1 import OBSERVATIONS_14, per_pair_f1
from llavarad.evaluate.lexical import bleu_from_stats
from llavarad.evaluate.predictions import Pair
from llavarad.evaluate.statistics import statistic_caption

__all__ = ["TABLE_COLUMNS", "table_markdown", "write_outputs"]

#: Columns of Supplementary Table 1, in order: (metric key, group, sub-header), then ReXrank's
#: combined RadGraph score as an extra column.
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
    ("RadGraph-combined", "ReXrank (extra)", "RadGraph"),
)


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


def table_markdown(result: dict[str, Any]) -> str:
    m, name = result["metrics"], result["model"]
    boot = result["settings"]["bootstrap"]
    lines = [f"# Evaluation of {name} ({result['n']} reports)", "",
             f"Layout of LLaVA-Rad Supplementary Table 1 (plus ReXrank's combined RadGraph score); values x100 (0-100) "
             f"with {round(100 * boot['confidence'])}% bootstrap intervals. {statistic_caption(result['settings'])} "
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
        lines += ["", f"F1-RadGraph and RadGraph-combined not computed: {skipped}"]
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



def write_outputs(result: dict[str, Any], out: Path, pairs: list[Pair], lex: Any, ref_labels: list[dict],
                  pred_labels: list[dict], radgraph: dict[str, np.ndarray] | None, priors: Any, plot: bool) -> None:
    """Write every result file of one evaluation into ``out``; ``metrics.json`` last."""
    m = result["metrics"]
    header = ["model", "n"] + [c for key, _, _ in TABLE_COLUMNS for c in (key, f"{key} ci_low", f"{key} ci_high")]
    row: list[Any] = [result["model"], result["n"]]
    for key, _, _ in TABLE_COLUMNS:
        row += ["", "", ""] if m[key] is None else [round(m[key][k], 4) for k in ("value", "ci_low", "ci_high")]
    _write_atomic(out / "table.csv", _csv_text(header, [row]))
    _write_atomic(out / "table.md", table_markdown(result))
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
                   *(["", "", "", ""] if radgraph is None else
                     [round(float(radgraph[k][i]), 6) for k in ("partial", "entity", "relation", "combined")]),
                   int(priors.flagged[i])]
                  for i, p in enumerate(pairs)]
    _write_atomic(out / "per_report.csv", _csv_text(
        ["id", "sentence_bleu1", "sentence_bleu4", "rougeL", "chexbert_f1_14", "chexbert_f1_14_plus", "radgraph_f1",
         "radgraph_entity_f1", "radgraph_relation_f1", "radgraph_combined", "prior_mention"], per_report))
    _write_atomic(out / "prior_mentions.csv", _csv_text(
        ["id", "sentence", "cues", "categories"],
        [[pairs[mn.report].id, mn.sentence, "; ".join(mn.cues), "; ".join(mn.categories)] for mn in priors.mentions]))
    if plot:
        _plot(result, out / "per_observation_f1.png")
    else:  # an old run's plot in the same folder would no longer match these numbers
        (out / "per_observation_f1.png").unlink(missing_ok=True)
    _write_atomic(out / "metrics.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
