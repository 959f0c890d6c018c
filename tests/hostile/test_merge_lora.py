"""merge-lora with hostile adapters and bases: each refused with one clear line, nothing written over an input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A stage-3 style adapter (r=4) exported against the tiny model folder, with non-zero LoRA B."""
    from llavarad.model.build import load_model
    from llavarad.train.lora import LoraSettings, apply_lora, save_adapter

    torch.manual_seed(0)
    bundle = load_model(tiny_model_dir, device="cpu", dtype="float32")
    peft_model = apply_lora(bundle.model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return save_adapter(peft_model, tmp_path_factory.mktemp("adapter"), base_model=tiny_model_dir, train_config=None)


@pytest.fixture(scope="module")
def clean_merge(tmp_path_factory, adapter) -> dict[str, torch.Tensor]:
    from llavarad.train.lora import merge_lora

    out = merge_lora(adapter, tmp_path_factory.mktemp("clean") / "merged")
    return load_file(str(out / "model.safetensors"))


def _copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


def test_out_equal_to_base_or_adapter_is_refused_and_the_base_survives(run, adapter, tiny_model_dir):
    before = (tiny_model_dir / "model.safetensors").read_bytes()
    r = run("merge-lora", "--adapter", adapter, "--out", tiny_model_dir)
    assert r.rc == 1 and f"--out {tiny_model_dir} is the input" in r.err
    r = run("merge-lora", "--adapter", adapter, "--out", adapter, "--base", tiny_model_dir)
    assert r.rc == 1 and "is the input" in r.err
    assert (tiny_model_dir / "model.safetensors").read_bytes() == before


def test_non_empty_out_needs_overwrite(run, adapter, tmp_path, clean_merge):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run("merge-lora", "--adapter", adapter, "--out", out)
    assert r.rc == 1 and "exists and is not empty" in r.err and "--overwrite" in r.err
    assert run("merge-lora", "--adapter", adapter, "--out", out, "--overwrite").rc == 0
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == clean_merge.keys() and all(torch.equal(got[k], clean_merge[k]) for k in got)


def test_a_different_base_is_refused_by_fingerprint(run, adapter, tmp_path):
    from llavarad.model.build import init_random, save_model

    other = save_model(init_random("tiny", seed=1), tmp_path / "other_base")
    r = run("merge-lora", "--adapter", adapter, "--base", other, "--out", tmp_path / "m")
    assert r.rc == 1 and "is not the model this adapter was trained on" in r.err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("r_value, expect", [("sixty-four", "r is 'sixty-four': must be a positive integer"),
                                             (0, "r is 0"), (True, "r is True")])
def test_bad_rank_in_adapter_config(run, adapter, tmp_path, r_value, expect):
    bad = _copy(adapter, tmp_path)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["r"] = r_value
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m")
    assert r.rc == 1 and expect in r.err and "adapter_config.json" in r.err


def test_truncated_missing_and_odd_weights(run, adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    weights = bad / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m1")
    assert r.rc == 1 and "truncated or damaged" in r.err and "adapter_model.safetensors" in r.err
    weights.unlink()
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m2")
    assert r.rc == 1 and "has no adapter_model.safetensors" in r.err and "Repo id" not in r.err


def test_an_extra_or_reshaped_lora_key_is_refused(run, adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    weights = bad / "adapter_model.safetensors"
    state = load_file(str(weights))
    state["base_model.model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 8)
    save_file(state, str(weights))
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m1")
    assert r.rc == 1 and "fit no module of the base" in r.err and "layers.9" in r.err
    state.pop("base_model.model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight")
    key = next(k for k in state if k.endswith("q_proj.lora_A.weight"))
    state[key] = torch.zeros(3, state[key].shape[1] + 1)
    save_file(state, str(weights))
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m2")
    assert r.rc == 1 and "does not fit the base model" in r.err


def test_nan_adapter_weights_are_never_saved(run, adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    weights = bad / "adapter_model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("lora_B.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights))
    r = run("merge-lora", "--adapter", bad, "--out", tmp_path / "m")
    assert r.rc == 1 and "hold NaN or infinity" in r.err
    assert not (tmp_path / "m" / "model.safetensors").exists()
