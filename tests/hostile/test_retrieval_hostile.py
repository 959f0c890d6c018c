"""Hostile inputs for `llavarad retrieval` (issue 21): images changed under a cached table, and
repeated ids. Each case checks the message and that the table equals a clean run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavarad.retrieval import run_retrieval


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """12 tiny phantoms and a random tiny CLIP folder (plumbing only; nothing is trained)."""
    from llavarad.data.pairs import load_pairs
    from llavarad.model.clip import init_clip, save_clip
    from llavarad.model.presets import load_preset
    from llavarad.phantom import PhantomConfig, generate_phantoms

    root = tmp_path_factory.mktemp("retrieval_hostile")
    generate_phantoms(PhantomConfig(n=12, size=56, seed=0, write_masks=False), root / "ph")
    manifest = root / "ph" / "manifest.jsonl"
    pairs, _ = load_pairs(manifest, None)
    clip = init_clip(image_size=56, vision_config=load_preset("tiny").vision, corpus=[p.text for p in pairs],
                     tokenizer_vocab_size=300, embed_dim=16, context_length=64, seed=1)
    return {"manifest": manifest, "enc": save_clip(clip, root / "enc")}


def table(manifest: Path, enc: Path, out: Path, cache: Path | None = None) -> dict:
    return run_retrieval(manifest, [enc], out, split=None, device="cpu", dtype="float32", n_resamples=20,
                         cache_dir=cache, names=["enc"])["encoders"]["enc"]


def test_cache_follows_image_content_not_paths(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["manifest"].parent, data)
    manifest = data / "manifest.jsonl"
    cache = tmp_path / "cache"
    first = table(manifest, setup["enc"], tmp_path / "o1", cache)
    assert not first["from_cache"]
    # replace every image under the same path: the cached embeddings must not be reused
    for rec in map(json.loads, manifest.read_text().splitlines()):
        path = data / rec["image"]
        pixels = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(255 - pixels).save(path)
    changed = table(manifest, setup["enc"], tmp_path / "o2", cache)
    clean = table(manifest, setup["enc"], tmp_path / "o3", None)  # no cache at all
    assert not changed["from_cache"] and changed["metrics"] == clean["metrics"]
    assert changed["metrics"] != first["metrics"]
    # the same content in another folder hits the cache
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    again = table(moved / "manifest.jsonl", setup["enc"], tmp_path / "o4", cache)
    assert again["from_cache"] and again["metrics"] == clean["metrics"]


def test_repeated_ids_have_their_own_message_and_exit_code(setup, tmp_path, run):
    rows = [json.loads(line) for line in setup["manifest"].read_text().splitlines()]
    rows = [{**r, "image": str(setup["manifest"].parent / r["image"])} for r in rows]
    clean_manifest = tmp_path / "clean.jsonl"
    clean_manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dup_manifest = tmp_path / "dup.jsonl"
    dup_manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**rows[5], "image": rows[6]["image"]}]))
    res = run("retrieval", dup_manifest, "--encoder", setup["enc"], "--out", tmp_path / "o", "--split", "all",
              "--n-resamples", "20", "--device", "cpu", "--dtype", "float32", "--name", "enc")
    assert res.rc == 1
    assert f"1 record(s) left out (duplicate id (first occurrence kept)): {rows[5]['id']}." in res.err
    assert "repeat an id of an earlier record" in res.err and "without report text" not in res.err
    got = json.loads((tmp_path / "o" / "retrieval.json").read_text())["encoders"]["enc"]
    clean = table(clean_manifest, setup["enc"], tmp_path / "clean_out")
    assert got["n"] == clean["n"] == 12 and got["metrics"] == clean["metrics"]
