"""How good can the demo's image tower get in the stage-1 budget? A label-trained ceiling.

Trains a fresh image tower of the demo's exact shape and preprocessing (read from a finished demo
folder's ``stage1/image_encoder``) directly on the phantoms' labels: one logistic output per
CheXpert observation on the maximum (or mean) over the patch tokens. This is a diagnostic, not
stage 1 (which is contrastive, as in the paper): it bounds what a tower of this size learns from
scratch in this time. Prints the tower's own held-out micro-F1 and F1 per observation.

It also writes ``OUT/stage1`` (the demo's stage-1 folder with this tower's weights) next to links
to the demo's phantoms and language model, so stages 2-3 can run on top of it unchanged:

    python benchmarks/phantom_label_tower.py --demo runs/phantom_learning/images --out runs/label_tower
    llavarad demo --out runs/label_tower/demo shared_from=runs/label_tower stage3_epochs=3

(docs/training.md, "A label-trained tower and a longer stage 3", lists what that gave.)
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        return
    try:
        dst.symlink_to(src.resolve(), target_is_directory=True)
    except OSError:  # no symlinks here (some file systems): copy instead
        shutil.copytree(src, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a finished demo folder (phantoms/, lm/, stage1/)")
    ap.add_argument("--out", type=Path, required=True, help="folder for stage1/ and the links")
    ap.add_argument("--epochs", type=int, default=5, help="passes over the training phantoms (demo stage 1: 5)")
    ap.add_argument("--pool", choices=("max", "mean"), default="max")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model

    from llavarad.io.manifest import (
        CHEXPERT_OBSERVATIONS,
        read_manifest,
        resolve_image_path,
    )

    tower_dir = args.demo / "stage1" / "image_encoder"
    manifest = args.demo / "phantoms" / "manifest.jsonl"
    for need in (tower_dir / "config.json", manifest, args.demo / "lm"):
        if not need.exists():
            print(f"phantom_label_tower: {need} does not exist; run `llavarad demo --out {args.demo}` first",
                  file=sys.stderr)
            return 2
    torch.manual_seed(args.seed)
    records = read_manifest(manifest)
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    observations = [o for o in CHEXPERT_OBSERVATIONS if any(r.labels.get(o) == 1.0 for r in train)]
    processor = AutoImageProcessor.from_pretrained(tower_dir)

    def pixels(recs) -> torch.Tensor:
        chunks = []
        for i in range(0, len(recs), 256):
            images = [Image.open(resolve_image_path(r.image, manifest)).convert("RGB") for r in recs[i:i + 256]]
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
        return torch.cat(chunks)

    def targets(recs) -> torch.Tensor:
        return torch.tensor([[float(r.labels.get(o) == 1.0) for o in observations] for r in recs])

    t0 = time.perf_counter()
    x_train, x_test, y_train, y_test = pixels(train), pixels(test), targets(train), targets(test)
    print(f"{len(train)} training and {len(test)} test phantoms read in {time.perf_counter() - t0:.1f} s; "
          f"{len(observations)} observations present")

    tower = Dinov2Model(Dinov2Config.from_pretrained(tower_dir))
    head = torch.nn.Linear(tower.config.hidden_size, len(observations))

    def pooled(x: torch.Tensor) -> torch.Tensor:
        skip = 1 + int(getattr(tower.config, "num_register_tokens", 0) or 0)
        tokens = tower(pixel_values=x).last_hidden_state[:, skip:]
        return tokens.amax(dim=1) if args.pool == "max" else tokens.mean(dim=1)

    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(x_train) / args.batch)
    warmup = max(1, int(0.1 * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train))
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled(x_train[idx])), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} ({time.perf_counter() - t_train:.0f} s)", flush=True)
    train_s = time.perf_counter() - t_train

    tower.eval()
    with torch.no_grad():
        pred = torch.cat([(head(pooled(x_test[i:i + 128])) > 0).float() for i in range(0, len(x_test), 128)])
    tp, fp, fn = (pred * y_test).sum(0), (pred * (1 - y_test)).sum(0), ((1 - pred) * y_test).sum(0)
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).numpy()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))
    for name, value in zip(observations, f1):
        print(f"  {name:28s} F1 {value:.3f}")

    stage1 = args.out / "stage1"
    if stage1.exists():
        shutil.rmtree(stage1)
    shutil.copytree(args.demo / "stage1", stage1, ignore=shutil.ignore_patterns("checkpoints"))
    tower.save_pretrained(stage1 / "image_encoder", safe_serialization=True)
    (stage1 / "LABEL_TRAINED.txt").write_text(
        f"image_encoder/ was trained on the phantom labels by benchmarks/phantom_label_tower.py "
        f"({args.pool} pool, {args.epochs} epochs), not by stage 1; the text tower and heads are the demo's.\n",
        encoding="utf-8")
    for name in ("phantoms", "lm"):
        _link_or_copy(args.demo / name, args.out / name)
    print(f"label-trained tower written to {stage1}; stages 2-3 on top of it:")
    print(f"  llavarad demo --out {args.out / 'demo'} shared_from={args.out} stage3_epochs=3")
    print(f"RESULT label_tower_micro_f1 {micro:.3f} fraction goal=report(tower_ceiling)")
    print(f"RESULT label_tower_train_s {train_s:.0f} s goal=report(demo_stage1_time)")
    print(f"RESULT label_tower_min_f1 {float(np.min(f1)):.3f} fraction goal=report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
