"""Before / after: two prediction files of the same test set, side by side, with paired differences.

``compare(before, after, out_dir)`` answers "is the fine-tuned model better, by how much, and for
which observations". Both files are scored on the reports they share (same id, same reference);
every metric is computed for both models on the *same* bootstrap resamples, so the difference
after - before has a paired interval (far narrower than the two separate intervals suggest when
the models agree on most reports). Reported per metric: both models' values and intervals, the
difference with its interval, and the share of resamples in which the after model is not better
(``p_not_better``, a one-sided bootstrap figure: below 0.025 the improvement's 95% interval
excludes zero).

The metrics are the evaluation stage's own computations (:mod:`.chexbert_f1` cells, :mod:`.lexical`
BLEU statistics and ROUGE-L, :mod:`.bootstrap` resamples, :mod:`.statistics` headline convention),
over the CheXbert-style micro/macro F1-14/F1-5 under both uncertainty policies, BLEU-1, BLEU-4,
ROUGE-L, and per-observation F1. Outputs: ``compare.json``, ``compare.md``, ``compare.csv`` and
``compare.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llavarad import __version__
from llavarad.config import ConfigError, config_to_dict
from llavarad.errors import LlavaradError
from llavarad.evaluate._cache import label_all
from llavarad.evaluate.bootstrap import (
    RELEASE_SEED,
    bootstrap_median,
    percentile_interval,
    resample_counts,
)
from llavarad.evaluate.chexbert_f1 import (
    OBSERVATIONS_5,
    OBSERVATIONS_14,
    binarize,
    confusion_cells,
    f1_from_cells,
)
from llavarad.evaluate.lexical import bleu_from_stats, bleu_stats, rouge_l_scores
from llavarad.evaluate.predictions import Pair, read_predictions
from llavarad.evaluate.statistics import metric_entry, setting_problems

logger = logging.getLogger(__name__)

__all__ = ["COMPARE_METRICS", "CompareConfig", "CompareError", "compare"]

#: Metrics of the comparison, in table order.
COMPARE_METRICS: tuple[str, ...] = (
    "Micro-F1-14", "Micro-F1-5", "Macro-F1-14", "Macro-F1-5", "Micro-F1-14+", "Micro-F1-5+", "Macro-F1-14+",
    "Macro-F1-5+", "BLEU-1", "BLEU-4", "ROUGE-L")
_BOOTSTRAPPED_HEADLINE = {"Micro-F1-14", "Micro-F1-5", "Macro-F1-14", "Macro-F1-5", "Micro-F1-14+", "Micro-F1-5+",
                          "Macro-F1-14+", "Macro-F1-5+", "ROUGE-L"}


class CompareError(LlavaradError, ValueError):
    """The two prediction files share no scorable report (the message gives the counts)."""


@dataclass
class CompareConfig:
    """Settings of one comparison (recorded in ``compare.json``).

    labeler / chexbert_weights: as :class:`llavarad.evaluate.run.EvaluateConfig`.
    statistic: what heads each value: "release" (bootstrap median for F1 and ROUGE-L, as the
        paper's table) or "full" (value on all shared reports); differences follow the same rule.
    bootstrap / seed / confidence: the shared paired resamples, ``RandomState(seed)``.
    names: display names of the two models (default: their ``model`` field or file name).
    """

    labeler: Literal["rules", "chexbert"] = "rules"
    chexbert_weights: str | None = None
    statistic: Literal["release", "full"] = "release"
    bootstrap: int = 500
    seed: int = RELEASE_SEED
    confidence: float = 0.95
    before_name: str | None = None
    after_name: str | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        problems = setting_problems(labeler=self.labeler, chexbert_weights=self.chexbert_weights,
                                    statistic=self.statistic, bootstrap=self.bootstrap, seeds={"seed": self.seed},
                                    confidence=self.confidence, min_resamples=2)
        if problems:
            raise ConfigError(problems, "CompareConfig")


def _shared_pairs(before: Any, after: Any) -> tuple[list[Pair], list[Pair], list[dict[str, Any]]]:
    """Pairs of the ids both files scored with the same reference, in the before file's order."""
    problems: list[dict[str, Any]] = []
    after_by_id = {p.id: p for p in after.pairs}
    before_ids = {p.id for p in before.pairs}
    b_out, a_out = [], []
    for p in before.pairs:
        q = after_by_id.get(p.id)
        if q is None:
            problems.append({"id": p.id, "side": "after", "error": "no scorable row with this id in the after file"})
        elif " ".join(q.reference.split()) != " ".join(p.reference.split()):
            problems.append({"id": p.id, "side": "both", "error": "the two files give different references; "
                                                                  "compare predictions of the same test set"})
        else:
            b_out.append(p)
            a_out.append(q)
    problems += [{"id": q.id, "side": "before", "error": "no scorable row with this id in the before file"}
                 for q in after.pairs if q.id not in before_ids]
    return b_out, a_out, problems


def _entry(full: float, reps: np.ndarray, confidence: float, headline: str) -> dict[str, Any]:
    low, high = percentile_interval(reps, confidence)
    return metric_entry(full, low, high, bootstrap_median(reps), headline)


def _f1_replicates(ref: list[dict], pred: list[dict], counts: np.ndarray) -> dict[str, Any]:
    """Full-sample values and replicates (0-100) of the eight summary F1s and the per-observation F1s."""
    idx5 = [OBSERVATIONS_14.index(o) for o in OBSERVATIONS_5]
    out: dict[str, Any] = {"per_observation": {}}
    for policy, suffix in (("negative", ""), ("positive", "+")):
        y_true, y_pred = binarize(ref, policy), binarize(pred, policy)  # type: ignore[arg-type]
        tp, fp, fn = confusion_cells(y_true, y_pred)
        sums = (tp.sum(0), fp.sum(0), fn.sum(0))
        reps = (counts @ tp, counts @ fp, counts @ fn)
        for subset, cols in (("14", list(range(14))), ("5", idx5)):
            per_full, micro_full, macro_full = f1_from_cells(*(s[cols] for s in sums))
            per_rep, micro_rep, macro_rep = f1_from_cells(*(r[:, cols] for r in reps))
            out[f"Micro-F1-{subset}{suffix}"] = (100 * float(micro_full), 100 * micro_rep)
            out[f"Macro-F1-{subset}{suffix}"] = (100 * float(macro_full), 100 * macro_rep)
            if subset == "14":
                out["per_observation"][policy] = (100 * per_full, 100 * per_rep, y_true.sum(0), y_pred.sum(0))
    return out


def _lexical_replicates(refs: list[str], hyps: list[str], counts: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    st = bleu_stats(refs, hyps).stats
    resampled = counts @ st.astype(np.float64)
    total = st.sum(axis=0)
    out = {f"BLEU-{o}": (bleu_from_stats(total, o), np.array([bleu_from_stats(np.rint(r), o) for r in resampled]))
           for o in (1, 4)}
    rouge = rouge_l_scores(refs, hyps)
    out["ROUGE-L"] = (100 * float(rouge.mean()), 100 * (counts @ rouge) / len(refs))
    return out


def _difference(b: tuple[float, np.ndarray], a: tuple[float, np.ndarray], confidence: float,
                headline: str) -> dict[str, Any]:
    diff = a[1] - b[1]
    entry = _entry(a[0] - b[0], diff, confidence, headline)
    entry["p_not_better"] = float(np.mean(diff[np.isfinite(diff)] <= 0)) if np.isfinite(diff).any() else float("nan")
    return entry


def _name(config_name: str | None, data: Any, path: str | Path, fallback: str) -> str:
    return config_name or data.model or Path(path).stem or fallback


def compare(before: str | Path, after: str | Path, out_dir: str | Path, config: CompareConfig | None = None,
            labeler: Any | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Score ``before`` and ``after`` (predictions JSONL) on their shared reports; write and return the result.

    ``progress(stage, done, total)`` is called while the reports are labeled ("labels before" /
    "labels after"); labels are cached in ``out_dir``, so a rerun is quick.

    Raises:
        FileNotFoundError: a predictions file is missing.
        CompareError: no report is scorable in both files.
    """
    cfg = config or CompareConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_b, data_a = read_predictions(before), read_predictions(after)
    pairs_b, pairs_a, problems = _shared_pairs(data_b, data_a)
    if labeler is None:
        from llavarad.evaluate.labelers import get_labeler

        opts = {"weights": cfg.chexbert_weights} if cfg.labeler == "chexbert" and cfg.chexbert_weights else {}
        labeler = get_labeler(cfg.labeler, **opts)
    failed: list[dict[str, Any]] = []
    def stage(name: str) -> Callable[[str, int, int], None] | None:
        return None if progress is None else (lambda _s, done, total: progress(name, done, total))

    kept_b, ref_b, pred_b = label_all(labeler, pairs_b, out / "labels_before.jsonl", stage("labels before"), failed)
    kept_a, _ref_a, pred_a = label_all(labeler, pairs_a, out / "labels_after.jsonl", stage("labels after"), failed)
    lab_b = {p.id: (p, r, lb) for p, r, lb in zip(kept_b, ref_b, pred_b)}
    lab_a = {p.id: (p, la) for p, la in zip(kept_a, pred_a)}
    ids = [p.id for p in kept_b if p.id in lab_a]
    problems += [{"id": f["id"], "side": "labeling", "error": f["error"]} for f in failed]
    if not ids:
        raise CompareError(f"{before} and {after} share no scorable report: {len(data_b.pairs)} and "
                           f"{len(data_a.pairs)} scorable rows, {len(problems)} problems (first: "
                           f"{problems[0]['error'] if problems else 'none'})")
    n = len(ids)
    counts = resample_counts(n, cfg.bootstrap, cfg.seed, generator="legacy")  # shared by both: paired
    refs = [lab_b[i][0].reference for i in ids]
    ref_labels = [lab_b[i][1] for i in ids]
    f1_b = _f1_replicates(ref_labels, [lab_b[i][2] for i in ids], counts)
    f1_a = _f1_replicates(ref_labels, [lab_a[i][1] for i in ids], counts)
    lex_b = _lexical_replicates(refs, [lab_b[i][0].prediction for i in ids], counts)
    lex_a = _lexical_replicates(refs, [lab_a[i][0].prediction for i in ids], counts)
    result = _result(cfg, n, f1_b, f1_a, lex_b, lex_a, problems)
    result.update({"before": {"name": _name(cfg.before_name, data_b, before, "before"), "predictions": str(before),
                              "n_rows": data_b.n_rows, "generation_errors": len(data_b.generation_errors)},
                   "after": {"name": _name(cfg.after_name, data_a, after, "after"), "predictions": str(after),
                             "n_rows": data_a.n_rows, "generation_errors": len(data_a.generation_errors)}})
    if result["before"]["name"] == result["after"]["name"]:
        result["before"]["name"], result["after"]["name"] = "before", "after"
    result["settings"]["labeler"] = {"name": labeler.name, "version": str(getattr(labeler, "version", "?"))}
    from llavarad.evaluate._compare_report import write_compare_outputs

    write_compare_outputs(result, out, cfg.plot)
    return result


def _result(cfg: CompareConfig, n: int, f1_b: dict, f1_a: dict, lex_b: dict, lex_a: dict,
            problems: list[dict[str, Any]]) -> dict[str, Any]:
    boot = "bootstrap median" if cfg.statistic == "release" else "full sample"
    metrics: dict[str, Any] = {}
    for key in COMPARE_METRICS:
        b, a = (lex_b[key], lex_a[key]) if key.startswith(("BLEU", "ROUGE")) else (f1_b[key], f1_a[key])
        headline = boot if key in _BOOTSTRAPPED_HEADLINE else "full sample"
        metrics[key] = {"before": _entry(b[0], b[1], cfg.confidence, headline),
                        "after": _entry(a[0], a[1], cfg.confidence, headline),
                        "difference": _difference(b, a, cfg.confidence, headline)}
    per_obs: dict[str, Any] = {}
    for policy in ("negative", "positive"):
        full_b, rep_b, support, pred_pos_b = f1_b["per_observation"][policy]
        full_a, rep_a, _, pred_pos_a = f1_a["per_observation"][policy]
        per_obs[policy] = {obs: {"support": int(support[j]), "predicted_before": int(pred_pos_b[j]),
                                 "predicted_after": int(pred_pos_a[j]),
                                 "before": _entry(float(full_b[j]), rep_b[:, j], cfg.confidence, "full sample"),
                                 "after": _entry(float(full_a[j]), rep_a[:, j], cfg.confidence, "full sample"),
                                 "difference": _difference((float(full_b[j]), rep_b[:, j]),
                                                           (float(full_a[j]), rep_a[:, j]), cfg.confidence,
                                                           "full sample")}
                           for j, obs in enumerate(OBSERVATIONS_14)}
    return {"n": n, "metrics": metrics, "per_observation": per_obs, "problems": problems,
            "settings": {"config": config_to_dict(cfg), "statistic": cfg.statistic,
                         "bootstrap": {"n_resamples": cfg.bootstrap, "seed": cfg.seed, "confidence": cfg.confidence,
                                       "paired": "both models and their difference on the same resamples",
                                       "rng": "numpy.random.RandomState(seed).randint(0, n, (n_resamples, n))",
                                       "p_not_better": "share of resamples with after - before <= 0"}},
            "versions": {"llavarad": __version__}}
