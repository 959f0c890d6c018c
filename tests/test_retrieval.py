"""Cross-modal retrieval: exact ranks and chance levels, bootstrap metrics, cache, CLI, and a
stage-1 encoder trained briefly on phantoms that must beat a random ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llavarad.retrieval import chance_recall, compute_ranks, rank_metrics, run_retrieval


def _unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_ranks_by_hand():
    image = _unit([[1, 0], [0, 1], [1, 1], [1, -1]])
    text = _unit([[1, 0.1], [1, 0], [1, 1.2], [0, -1]])
    ranks = compute_ranks(image, text, ["a", "b", "c", "d"], positives="pair")
    # similarities (rows: images, columns: texts), rounded:
    #   [[ 0.995  1.     0.64   0.   ]
    #    [ 0.1    0.     0.768 -1.   ]
    #    [ 0.774  0.707  0.996 -0.707]
    #    [ 0.633  0.707 -0.091  0.707]]     row 3: a tie with text 1 counts against the query
    assert ranks["i2t"].tolist() == [2, 3, 1, 2]
    assert ranks["t2i"].tolist() == [1, 4, 1, 1]


def test_constant_encoder_gets_no_credit_and_identical_reports_count_as_matches():
    n = 6
    same = np.ones((n, 4), np.float32) / 2.0
    r = compute_ranks(same, same, [f"report {i}" for i in range(n)], positives="pair")
    assert r["i2t"].tolist() == [n] * n  # every tie counts against the query
    # two identical reports: finding either copy is a match under same_text, not under pair
    image = _unit([[1, 0], [1, 0.01], [0, 1]])
    text = _unit([[1, 0.01], [1, 0], [0, 1]])
    texts = ["No acute findings.", "no  acute findings.", "Right effusion."]
    assert compute_ranks(image, text, texts, positives="same_text")["i2t"].tolist() == [1, 1, 1]
    assert compute_ranks(image, text, texts, positives="pair")["i2t"].tolist() == [2, 2, 1]
    with pytest.raises(ValueError, match="positives"):
        compute_ranks(image, text, texts, positives="exact")


def test_chance_recall_formula_and_simulation():
    assert chance_recall([f"t{i}" for i in range(10)], 1) == pytest.approx(0.1)
    assert chance_recall([f"t{i}" for i in range(10)], 5) == pytest.approx(0.5)
    # two copies of "a" among 4: queries a: 1 - C(2,1)/C(4,1) = 0.5; b, c: 0.25
    assert chance_recall(["a", "a", "b", "c"], 1) == pytest.approx(0.375)
    texts = ["a", "a", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(400):
        emb_i, emb_t = _unit(rng.normal(size=(12, 8))), _unit(rng.normal(size=(12, 8)))
        hits.append((compute_ranks(emb_i, emb_t, texts)["i2t"] <= 3).mean())
    assert np.mean(hits) == pytest.approx(chance_recall(texts, 3), abs=0.03)


def test_rank_metrics_values_and_intervals():
    m = rank_metrics(np.array([1, 2, 3, 10, 20]), n_resamples=200, seed=1)
    assert m["R@1"]["value"] == pytest.approx(20.0)
    assert m["R@5"]["value"] == pytest.approx(60.0)
    assert m["R@10"]["value"] == pytest.approx(80.0)
    assert m["mean_rank"]["value"] == pytest.approx(7.2)
    assert m["median_rank"]["value"] == pytest.approx(3.0)
    for v in m.values():
        assert v["ci_low"] <= v["value"] <= v["ci_high"]


# ------------------------------ phantoms and a briefly trained encoder ------------------------------

def _train(manifest: Path, out: Path, steps: int, **kw) -> Path:
    from llavarad.config import config_from_dict
    from llavarad.train.stage1_encoder import Stage1Config, run_stage1

    cfg = config_from_dict(Stage1Config, dict(
        manifest=str(manifest), output_dir=str(out), splits=["train", "validate", "test"], preset="tiny", embed_dim=32,
        context_length=96, tokenizer_vocab_size=400, max_steps=steps, per_device_batch_size=32, lr=2e-3,
        warmup_steps=8, mixed_precision="no", augment=False, save_every_steps=10_000, log_every_steps=25, seed=0, **kw))
    return run_stage1(cfg)


def _random_encoder(manifest: Path, out: Path) -> Path:
    from llavarad.model.clip import init_clip, save_clip
    from llavarad.model.presets import load_preset
    from llavarad.train.stage1_encoder import load_pairs

    pairs, _ = load_pairs(manifest, None)
    rand = init_clip(image_size=56, vision_config=load_preset("tiny").vision, corpus=[p.text for p in pairs],
                     tokenizer_vocab_size=400, embed_dim=32, context_length=96, seed=1)
    return save_clip(rand, out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A stage-1 encoder after a few steps on 48 tiny phantoms (plumbing, not learning), and a random one."""
    from llavarad.phantom import PhantomConfig, generate_phantoms

    root = tmp_path_factory.mktemp("retrieval")
    generate_phantoms(PhantomConfig(n=48, size=56, seed=0, write_masks=False), root / "ph")
    manifest = root / "ph" / "manifest.jsonl"
    return {"enc": _train(manifest, root / "enc", 3), "random": _random_encoder(manifest, root / "random"),
            "manifest": manifest, "root": root}


def test_tables_side_by_side(trained, tmp_path):
    report = run_retrieval(trained["manifest"], [trained["enc"], trained["random"]], tmp_path, split=None,
                           device="cpu", dtype="float32", n_resamples=100, names=["stage1", "untrained"])
    assert report["n"] == 48 and list(report["encoders"]) == ["stage1", "untrained"]
    res = report["encoders"]["stage1"]
    assert set(res["metrics"]) == {f"{d}_{m}" for d in ("i2t", "t2i")
                                   for m in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")}
    assert res["chance"]["R@1"] == pytest.approx(100 * chance_recall(
        [json.loads(line)["findings"] or json.loads(line)["impression"]
         for line in trained["manifest"].read_text().splitlines()], 1), rel=1e-6)
    for name in ("retrieval.json", "retrieval.csv", "retrieval.md"):
        assert (tmp_path / name).is_file()
    md = (tmp_path / "retrieval.md").read_text()
    assert "| stage1 | image->text |" in md and "| untrained | text->image |" in md and "random ranking" in md
    header = (tmp_path / "retrieval.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["encoder", "direction", "n", "failed", "R@1"]
    assert len((tmp_path / "retrieval.csv").read_text().splitlines()) == 5


def test_embeddings_are_cached_by_encoder_and_manifest(trained, tmp_path):
    first = run_retrieval(trained["manifest"], [trained["enc"]], tmp_path, split=None, device="cpu", n_resamples=50)
    again = run_retrieval(trained["manifest"], [trained["enc"]], tmp_path, split=None, device="cpu", n_resamples=50)
    name = next(iter(first["encoders"]))
    assert not first["encoders"][name]["from_cache"] and again["encoders"][name]["from_cache"]
    assert again["encoders"][name]["metrics"] == first["encoders"][name]["metrics"]
    # another manifest content -> another cache entry
    rows = trained["manifest"].read_text().splitlines()
    other = tmp_path / "subset.jsonl"
    other.write_text("\n".join(rows[:20]) + "\n")
    (tmp_path / "images").symlink_to(trained["manifest"].parent / "images")
    sub = run_retrieval(other, [trained["enc"]], tmp_path, split=None, device="cpu", n_resamples=50)
    assert not sub["encoders"][name]["from_cache"] and sub["n"] == 20
    assert len(list((tmp_path / "embedding_cache").glob("*.npz"))) == 2


def test_cli_side_by_side_and_failures(trained, tmp_path):
    from llavarad.cli import main

    out = tmp_path / "table"
    code = main(["retrieval", str(trained["manifest"]), "--encoder", str(trained["enc"]), "--encoder",
                 str(trained["random"]), "--name", "ours", "--name", "random", "--out", str(out), "--split", "all",
                 "--n-resamples", "50", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "retrieval.json").read_text())
    assert list(report["encoders"]) == ["ours", "random"] and report["settings"]["n_resamples"] == 50
    # an unreadable image and a record without text: reported, left out, exit code 1
    rows = [json.loads(line) for line in trained["manifest"].read_text().splitlines()]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.png").write_bytes(b"")
    rows = [{**r, "image": str(trained["manifest"].parent / r["image"])} for r in rows[:12]]
    rows.append({**rows[0], "id": "empty", "image": "empty.png"})
    rows.append({**rows[1], "id": "textless", "findings": None, "impression": None})
    (bad_dir / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["retrieval", str(bad_dir / "m.jsonl"), "--encoder", str(trained["enc"]), "--out", str(bad_dir / "o"),
                 "--split", "all", "--n-resamples", "20", "--device", "cpu"])
    assert code == 1
    report = json.loads((bad_dir / "o" / "retrieval.json").read_text())
    res = next(iter(report["encoders"].values()))
    assert res["n"] == 12 and [f["id"] for f in res["failures"]] == ["empty"]
    assert [s["id"] for s in report["skipped_records"]] == ["textless"]
    # wrong inputs: clear messages, exit code 1
    assert main(["retrieval", str(trained["manifest"]), "--encoder", str(trained["enc"] / "image_encoder"),
                 "--out", str(tmp_path / "x"), "--split", "all"]) == 1
    train_only = tmp_path / "train_only.jsonl"
    train_only.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in rows[:12]))
    assert main(["retrieval", str(train_only), "--encoder", str(trained["enc"]), "--out", str(tmp_path / "y")]) == 1


# ~20 s on an idle 2-core machine (600 phantoms, 100 training steps); the headline check of the issue
def test_trained_encoder_beats_chance_by_a_wide_margin(tmp_path):
    """Held-out phantoms: Recall@10 at least twice a random ranking's in both directions, the whole
    95% interval of the mean rank below 80% of a random ranking's, and better than untrained."""
    from llavarad.phantom import PhantomConfig, generate_phantoms

    generate_phantoms(PhantomConfig(n=600, size=56, seed=0, write_masks=False), tmp_path / "train")
    generate_phantoms(PhantomConfig(n=64, size=56, seed=1, id_prefix="held", write_masks=False), tmp_path / "held")
    enc = _train(tmp_path / "train" / "manifest.jsonl", tmp_path / "enc", 100)
    rand = _random_encoder(tmp_path / "train" / "manifest.jsonl", tmp_path / "random")
    report = run_retrieval(tmp_path / "held" / "manifest.jsonl", [enc, rand], tmp_path / "out", split=None,
                           device="cpu", n_resamples=200, names=["stage1", "untrained"])
    res, untrained = report["encoders"]["stage1"], report["encoders"]["untrained"]
    chance_mean_rank = (report["n"] + 1) / 2
    for d in ("i2t", "t2i"):
        assert res["metrics"][f"{d}_R@10"]["value"] >= 2 * res["chance"]["R@10"], res["metrics"]
        assert res["metrics"][f"{d}_mean_rank"]["ci_high"] < 0.8 * chance_mean_rank, res["metrics"]
        assert res["metrics"][f"{d}_mean_rank"]["value"] < untrained["metrics"][f"{d}_mean_rank"]["value"]
