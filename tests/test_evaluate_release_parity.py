"""The default table equals what the release's evaluation (llava/eval/rrg_eval) computes, to the digit.

``_release_table`` is a small reimplementation of rrg_eval's statistics written from its code:
CheXbert micro/macro F1 and F1-RadGraph through ``scipy.stats.bootstrap`` (percentile, 500
resamples, ``random_state=3``, median of the distribution), ROUGE-L through rouge_score's
``BootstrapAggregator`` after ``numpy.random.seed(3)``, BLEU through sacrebleu's
``corpus_score(n_bootstrap=500)``. The labels and RadGraph annotations are the same for both sides
(a keyword labeler and a word-level annotator defined here), so any difference is statistics.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from llavarad.evaluate.radgraph import RadGraphScorer, partial_reward
from llavarad.evaluate.run import TABLE_COLUMNS, EvaluateConfig, evaluate
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

N = 60
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
WORDS = (("effusion", "Pleural Effusion"), ("cardiomegaly", "Cardiomegaly"), ("edema", "Edema"),
         ("atelectasis", "Atelectasis"), ("opacity", "Lung Opacity"), ("consolidation", "Consolidation"),
         ("pneumothorax", "Pneumothorax"), ("enlarged", "Enlarged Cardiomediastinum"))


class KeywordLabeler:
    name, version, settings = "keywords", "1", {}

    def label(self, texts):
        out = []
        for text in texts:
            t = text.lower()
            row = dict.fromkeys(CHEXPERT_OBSERVATIONS)
            for word, obs in WORDS:
                if f"no {word}" in t or f"no pleural {word}" in t:
                    row[obs] = 0.0
                elif any(f"{cue} {word}" in t for cue in ("possible", "may", "likely", "mild")):
                    row[obs] = -1.0
                elif word in t:
                    row[obs] = 1.0
            if not any(v in (1.0, -1.0) for v in row.values()):
                row["No Finding"] = 1.0
            out.append(row)
        return out


def annotate(texts):
    """Word-level stand-in for RadGraph: one entity per word, each related to the next one."""
    out = []
    for text in texts:
        words = [w.strip(".,;:").lower() for w in text.split()][:40]
        ents = {}
        for i, w in enumerate(words, start=1):
            label = "Observation::definitely absent" if i > 1 and words[i - 2] == "no" else "Anatomy::definitely present"
            ents[str(i)] = {"tokens": w, "label": label, "relations": [["modify", str(i + 1)]] if i % 3 == 0 and
                            i < len(words) else []}
        out.append({"text": text, "entities": ents})
    return out


@pytest.fixture(scope="module")
def pairs(shared_data):
    path = shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r["findings"].strip()][: N + 7]
    return [(f"r{i}", texts[i], texts[i + 7]) for i in range(N)]


def _write(path, pairs):
    path.write_text("".join(json.dumps({"id": i, "reference": r, "prediction": p, "error": None}) + "\n"
                            for i, r, p in pairs), encoding="utf-8")
    return path


def _scipy_bootstrap(n, statistic):
    from scipy.stats import bootstrap

    bs = bootstrap(data=(list(range(n)),), statistic=statistic, method="percentile", paired=False, vectorized=False,
                   confidence_level=0.95, random_state=3, n_resamples=500)
    return float(np.median(bs.bootstrap_distribution)), bs.confidence_interval.low, bs.confidence_interval.high


def _release_table(refs, hyps):
    """rrg_eval's numbers (0-1 for F1s and ROUGE-L, 0-100 for BLEU, as it prints them)."""
    from rouge_score import rouge_scorer, scoring
    from sacrebleu.metrics import BLEU
    from sklearn.metrics import precision_recall_fscore_support

    lab = KeywordLabeler()
    ref_rows, hyp_rows = lab.label(refs), lab.label(hyps)
    table = {}
    for suffix, positive in (("", {1.0}), ("+", {1.0, -1.0})):  # map_to_binary "rrg" and "rrg+"
        for subset, obs in (("14", CHEXPERT_OBSERVATIONS), ("5", FIVE)):
            y_pred = [[int(r[o] in positive) for o in obs] for r in hyp_rows]
            y_true = [[int(r[o] in positive) for o in obs] for r in ref_rows]
            for key in ("micro", "macro"):
                def stat(idx, key=key, y_pred=y_pred, y_true=y_true):
                    return precision_recall_fscore_support(y_pred=[y_pred[i] for i in idx],
                                                           y_true=[y_true[i] for i in idx], average=key)[2]
                table[f"{key.capitalize()}-F1-{subset}{suffix}"] = _scipy_bootstrap(len(refs), stat)
    ann_h, ann_r = annotate(hyps), annotate(refs)
    rewards = [partial_reward(h, r) if h["entities"] and r["entities"] else 0.0 for h, r in zip(ann_h, ann_r)]
    table["F1-RadGraph"] = _scipy_bootstrap(len(refs), lambda idx: np.mean([rewards[i] for i in idx]))
    for key, order in (("BLEU-1", 1), ("BLEU-4", 4)):
        ret = BLEU(max_ngram_order=order).corpus_score(hypotheses=hyps, references=[refs], n_bootstrap=500)
        table[key] = (ret.score, ret._mean - ret._ci, ret._mean + ret._ci)
    np.random.seed(3)  # rrg_eval seeds numpy at import; nothing else draws from it before ROUGE
    scorer = rouge_scorer.RougeScorer(rouge_types=["rougeL"], use_stemmer=False)
    agg = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=500)
    for r, h in zip(refs, hyps):
        agg.add_scores(scorer.score(r, h))
    res = agg.aggregate()["rougeL"]
    table["ROUGE-L"] = (res.mid.fmeasure, res.low.fmeasure, res.high.fmeasure)
    return table


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_default_table_equals_rrg_eval(tmp_path, pairs):
    refs, hyps = [r for _, r, _ in pairs], [p for _, _, p in pairs]
    result = evaluate(_write(tmp_path / "p.jsonl", pairs), tmp_path / "eval", EvaluateConfig(plot=False),
                      labeler=KeywordLabeler(), radgraph_scorer=RadGraphScorer(annotator=annotate))
    release = _release_table(refs, hyps)
    md = (tmp_path / "eval" / "table.md").read_text()
    for key, (value, low, high) in release.items():
        scale = 1.0 if key.startswith("BLEU") else 100.0
        got = result["metrics"][key]
        assert (got["value"], got["ci_low"], got["ci_high"]) == pytest.approx(
            (scale * value, scale * low, scale * high), abs=1e-9), key
        assert f"{got['value']:.1f} [{got['ci_low']:.1f}, {got['ci_high']:.1f}]" == \
            f"{scale * value:.1f} [{scale * low:.1f}, {scale * high:.1f}]", key
        assert f"{scale * value:.1f} [{scale * low:.1f}, {scale * high:.1f}]" in md, key
    # the medians really differ from the full-sample values somewhere, so the test has teeth
    assert any(abs(result["metrics"][k]["value"] - result["metrics"][k]["full_sample"]) > 1e-6 for k in release)


def test_full_convention_is_the_value_on_all_reports(tmp_path, pairs):
    from sklearn.metrics import f1_score

    cfg = EvaluateConfig(statistic="full", plot=False)
    result = evaluate(_write(tmp_path / "p.jsonl", pairs), tmp_path / "eval", cfg, labeler=KeywordLabeler(),
                      radgraph_scorer=RadGraphScorer(annotator=annotate))
    lab = KeywordLabeler()
    y_true = [[int(r[o] == 1.0) for o in CHEXPERT_OBSERVATIONS] for r in lab.label([r for _, r, _ in pairs])]
    y_pred = [[int(r[o] == 1.0) for o in CHEXPERT_OBSERVATIONS] for r in lab.label([p for _, _, p in pairs])]
    assert result["metrics"]["Micro-F1-14"]["value"] == pytest.approx(100 * f1_score(y_true, y_pred, average="micro"))
    for key, _, _ in TABLE_COLUMNS:
        m = result["metrics"][key]
        assert m["value"] == m["full_sample"] and m["headline"] == "full sample", key
    assert result["settings"]["statistic"]["convention"] == "full"
    assert "Full-sample convention" in (tmp_path / "eval" / "table.md").read_text()


def test_release_convention_needs_95_percent():
    from llavarad.config import ConfigError

    with pytest.raises(ConfigError, match="statistic 'full'"):
        EvaluateConfig(confidence=0.9)
    assert EvaluateConfig(confidence=0.9, statistic="full").confidence == 0.9
    with pytest.raises(ConfigError, match="statistic"):
        EvaluateConfig(statistic="median")
