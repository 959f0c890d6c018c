"""Are the phantom findings readable from the pixels? A linear probe on downsampled images.

Draws phantoms at 112 px, downsamples them to 48 px, and fits one logistic regression per finding
category, plus one for the side of unilateral pleural effusions. Reports held-out ROC AUC. A linear
model cannot handle translation, so this is a lower bound on what a small vision model can read;
chance is 0.5. The blank baseline (all-gray images, same labels) is measured in the same run and
must stay at 0.5.

    python benchmarks/phantom_probe.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from llavarad.phantom import CATEGORIES, DEVICES, PhantomConfig, build_record, draw_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="phantoms (80%% train, 20%% held out)")
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    start = time.perf_counter()
    config = PhantomConfig(n=args.n, size=args.size, seed=123)
    pixels, targets, effusion_side = [], [], []
    for i in range(config.n):
        spec, _, _, rng = build_record(config, i)
        img, _ = draw_phantom(rng, spec, config.size)
        pixels.append(np.asarray(Image.fromarray(img).resize((48, 48), Image.BILINEAR), dtype=np.float32).ravel() / 255)
        names = set(spec.names())
        targets.append([bool(names & set(DEVICES)) if c == "support_devices" else c in names for c in CATEGORIES])
        eff = [f.side for f in spec.findings if f.finding == "pleural_effusion" and f.side in ("left", "right")]
        effusion_side.append(eff[0] if eff else None)
    x = np.array(pixels)
    y = np.array(targets)
    n_train = int(0.8 * len(x))
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-3)
    print(f"drew {config.n} phantoms at {config.size} px in {time.perf_counter() - start:.1f} s")

    def probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
        clf = LogisticRegression(C=0.05, max_iter=500).fit(features[train], labels[train])
        return float(roc_auc_score(labels[test], clf.decision_function(features[test])))

    train, test = np.arange(n_train), np.arange(n_train, len(x))
    blank = np.zeros_like(x)
    aucs, blank_aucs = {}, {}
    for j, cat in enumerate(CATEGORIES):
        aucs[cat] = probe(x, y[:, j], train, test)
        blank_aucs[cat] = probe(blank, y[:, j], train, test)
        print(f"  {cat:18s} prevalence {y[:, j].mean():.2f}  AUC {aucs[cat]:.3f}  (blank images {blank_aucs[cat]:.3f})")
    sided = np.array([i for i, s in enumerate(effusion_side) if s is not None])
    side_labels = np.array([effusion_side[i] == "left" for i in sided])
    k = int(0.8 * len(sided))
    side_auc = probe(x[sided], side_labels, np.arange(k), np.arange(k, len(sided)))
    print(f"  effusion side (left vs right, {len(sided)} images) AUC {side_auc:.3f}")
    print(f"total {time.perf_counter() - start:.1f} s")
    print(f"RESULT phantom_probe_mean_auc {np.mean(list(aucs.values())):.3f} auc goal=>=0.85")
    print(f"RESULT phantom_probe_min_auc {min(aucs.values()):.3f} auc goal=>=0.7")
    print(f"RESULT phantom_probe_blank_mean_auc {np.mean(list(blank_aucs.values())):.3f} auc goal=0.5")
    print(f"RESULT phantom_probe_effusion_side_auc {side_auc:.3f} auc goal=>=0.95")


if __name__ == "__main__":
    main()
