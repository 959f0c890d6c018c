"""Measure a labeler's positive mentions against the Open-I gold standard (NegBio's 14 labels).

The gold file (``openi_labels_dev.csv``: ``filename`` = ``CXR<uid>``, ChestX-ray14 labels and
``normal``, 0/1) maps onto 9 CheXpert observations; the 8 findings plus No Finding:

    Atelectasis, Cardiomegaly, Effusion -> Pleural Effusion, Pneumonia, Pneumothorax,
    Consolidation, Edema, Mass or Nodule -> Lung Lesion, normal -> No Finding.

The labeled text is the report's findings and impression joined by a space (the gold standard
was made from the whole report). A label counts as positive when it is 1.0, or also -1.0 with
``uncertain_as_positive``. F1 is scikit-learn's, ``zero_division=0``.

Rule work uses a fixed held-out fold of the dev part (:func:`in_held_out_fold`, 618 of the 3,080
reports): rules are written from errors seen in the other reports only, and the fold's score says
whether a fix generalises.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

__all__ = ["OPENI_TO_CHEXPERT", "FINDINGS_8", "in_held_out_fold", "load_openi", "positive_mention_f1"]

OPENI_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Pleural Effusion": ("Effusion",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Lung Lesion": ("Mass", "Nodule"),
    "No Finding": ("normal",),
}
FINDINGS_8: tuple[str, ...] = tuple(o for o in OPENI_TO_CHEXPERT if o != "No Finding")


def in_held_out_fold(uid: str) -> bool:
    """Whether the Open-I report ``uid`` is in the held-out fold: about one report in five, fixed
    by ``int(sha256("openi-dev-fold:" + uid).hexdigest(), 16) % 5 == 0``."""
    return int(hashlib.sha256(f"openi-dev-fold:{uid}".encode()).hexdigest(), 16) % 5 == 0


def load_openi(folder: str | Path) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Read ``openi_reports_dev.csv`` and ``openi_labels_dev.csv`` from ``folder``.

    Returns ``(uids, texts, gold)`` with ``gold[observation]`` a 0/1 list aligned with ``uids``.
    Raises ValueError naming the uid when a report has no gold row.
    """
    folder = Path(folder)
    with (folder / "openi_labels_dev.csv").open(newline="", encoding="utf-8") as fh:
        gold_rows = {row["filename"].removeprefix("CXR"): row for row in csv.DictReader(fh)}
    uids: list[str] = []
    texts: list[str] = []
    gold: dict[str, list[int]] = {obs: [] for obs in OPENI_TO_CHEXPERT}
    with (folder / "openi_reports_dev.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            uid = row["uid"]
            g = gold_rows.get(uid)
            if g is None:
                raise ValueError(f"{folder / 'openi_reports_dev.csv'}: report uid {uid} has no gold row CXR{uid}")
            uids.append(uid)
            texts.append(" ".join(p.strip() for p in (row["findings"] or "", row["impression"] or "") if p.strip()))
            for obs, cols in OPENI_TO_CHEXPERT.items():
                gold[obs].append(int(any(g[c] == "1" for c in cols)))
    return uids, texts, gold


def positive_mention_f1(
    labels: list[dict[str, float | None]], gold: dict[str, list[int]], *, uncertain_as_positive: bool = False
) -> dict[str, dict[str, float]]:
    """Per-observation precision/recall/F1/support, plus ``micro_8`` (findings) and ``micro_9`` (+ No Finding)."""
    from sklearn.metrics import precision_recall_fscore_support

    hit = (1.0, -1.0) if uncertain_as_positive else (1.0,)
    pred = {obs: [int(lab.get(obs) in hit) for lab in labels] for obs in gold}
    out: dict[str, dict[str, float]] = {}
    for obs in gold:
        p, r, f, _ = precision_recall_fscore_support(gold[obs], pred[obs], average="binary", zero_division=0)
        out[obs] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": float(sum(gold[obs]))}
    for name, group in (("micro_8", FINDINGS_8), ("micro_9", tuple(gold))):
        y = [v for obs in group for v in gold[obs]]
        yh = [v for obs in group for v in pred[obs]]
        p, r, f, _ = precision_recall_fscore_support(y, yh, average="binary", zero_division=0)
        out[name] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": float(sum(y))}
    return out
