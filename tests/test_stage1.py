"""Stage 1 (encoder pretraining): configs, a tiny run on phantoms with bad input, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llavarad.config import ConfigError, config_from_dict, load_config
from llavarad.train.stage1_encoder import Stage1Config, Stage1Error, load_pairs, run_stage1

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def phantom_manifest(tmp_path_factory) -> Path:
    """40 tiny phantoms plus one corrupt image and one record without report text."""
    from llavarad.phantom import PhantomConfig, generate_phantoms

    out = tmp_path_factory.mktemp("ph")
    generate_phantoms(PhantomConfig(n=40, size=56, seed=3, write_masks=False), out)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # PNG signature, no image
    rows.append({**rows[0], "id": "broken", "image": "broken.png", "split": "train"})
    rows.append({**rows[1], "id": "no_text", "findings": None, "impression": "  ", "split": "train"})
    (out / "with_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "with_bad.jsonl"


def _cfg(manifest: Path, out: Path, **kw) -> Stage1Config:
    base = dict(manifest=str(manifest), output_dir=str(out), splits=["train", "validate", "test"], preset="tiny",
                embed_dim=16, context_length=48, tokenizer_vocab_size=200, per_device_batch_size=8, max_steps=4,
                lr=1e-3, warmup_steps=1, mixed_precision="no", save_every_steps=2, log_every_steps=1, seed=5)
    base.update(kw)
    return config_from_dict(Stage1Config, base)


def test_every_shipped_stage1_yaml_loads_and_starts_with_its_command():
    files = sorted(CONFIGS.glob("stage1_*.yaml"))
    assert {f.stem for f in files} >= {"stage1_llava-rad-7b", "stage1_phantom", "stage1_tiny"}
    for f in files:
        cfg = load_config(Stage1Config, f)
        first = f.read_text().splitlines()[:3]
        assert first[0].startswith("# Launch") and "train stage1 --config" in "\n".join(first), f.name
        assert cfg.output_dir
    paper = load_config(Stage1Config, CONFIGS / "stage1_llava-rad-7b.yaml")
    assert (paper.image_size, paper.embed_dim, paper.context_length, paper.text_proj) == (518, 512, 256, "mlp")
    assert paper.vision_init and paper.text_init and paper.logit_scale_max == 100.0


def test_config_problems_are_collected_in_one_error():
    with pytest.raises(ConfigError) as exc:
        load_config(Stage1Config, CONFIGS / "stage1_tiny.yaml",
                    ["lr=-1", "crop_scale=[0.5]", "splits=[training]", "mixed_precision=fp8", "image_pool=sum"])
    msg = str(exc.value)
    assert "mixed_precision" in msg and "image_pool" in msg  # Literal checks by the loader
    with pytest.raises(ConfigError) as exc:
        load_config(Stage1Config, CONFIGS / "stage1_tiny.yaml", ["lr=-1", "crop_scale=[0.5]", "splits=[training]"])
    msg = str(exc.value)
    for word in ("lr", "crop_scale", "splits"):
        assert word in msg


def test_load_pairs_reports_records_without_text(phantom_manifest):
    pairs, skipped = load_pairs(phantom_manifest, ["train"])
    assert [s["id"] for s in skipped] == ["no_text"]
    assert "broken" in {p.id for p in pairs}
    assert all(Path(p.image).is_absolute() for p in pairs)


def test_tiny_run_writes_clip_folder_and_records_bad_input(phantom_manifest, tmp_path):
    out = run_stage1(_cfg(phantom_manifest, tmp_path / "run", max_steps=6, val_manifest=str(phantom_manifest),
                          val_splits=["validate", "test"]))
    for name in ("clip_config.json", "heads.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors",
                 "text_encoder/tokenizer.json", "stage1_config.yaml", "summary.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 6 and summary["skipped_records"] == 1
    bad = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert [b["id"] for b in bad] == ["broken"] and "broken.png" in bad[0]["error"]
    assert [json.loads(line)["id"] for line in (out / "skipped_records.jsonl").read_text().splitlines()] == ["no_text"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["row"].startswith("train:")]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(r["loss"] > 0 and r["lr"] >= 0 and 0 < r["temperature"] < 1 for r in steps)
    assert steps[0]["lr"] == pytest.approx(1e-3)  # after one warm-up step
    assert steps[-1]["lr"] < steps[1]["lr"]  # cosine decay
    val = [r for r in log if r["row"].startswith("val:")]
    assert val and val[-1]["step"] == 6 and val[-1]["val_n"] >= 2 and val[-1]["val_loss"] > 0
    assert 0.0 <= val[-1]["val_i2t_R@1"] <= val[-1]["val_i2t_R@5"] <= 1.0
    # the exported image tower is a plain Dinov2 folder equal to the CLIP's image tower
    from transformers import Dinov2Model

    from llavarad.model.clip import load_clip

    dino = Dinov2Model.from_pretrained(out / "image_encoder")
    clip = load_clip(out, device="cpu", dtype="float32")
    for (n1, p1), (n2, p2) in zip(dino.state_dict().items(), clip.vision.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_validation_through_the_prepared_model_equals_the_reference(phantom_manifest, tmp_path):
    """Stage 1 validates through the prepared model's forward on every process (right under ZeRO-3
    and FSDP, where the unwrapped weights are shards); on one process that must give exactly what
    the plain retrieval path (encode_pairs on the unwrapped CLIP) gives, bad image included."""
    from accelerate import Accelerator

    from llavarad.model.clip import load_clip
    from llavarad.retrieval import validation_metrics
    from llavarad.train._stage1_data import Collator
    from llavarad.train._stage1_engine import validate_pairs

    out = run_stage1(_cfg(phantom_manifest, tmp_path / "run", max_steps=2))
    clip = load_clip(out, device="cpu", dtype="float32")
    pairs, _ = load_pairs(phantom_manifest, ["train", "validate"])
    assert "broken" in {p.id for p in pairs}
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(clip)
    collate = Collator(clip.tokenizer, clip.config.context_length, clip.config.image_size)
    got, failures = validate_pairs(accelerator, model, pairs, clip.image_processor, collate, batch_size=5, num_workers=0)
    want = validation_metrics(clip, [(p.id, p.image, p.text) for p in pairs], batch_size=7)
    assert [f["id"] for f in failures] == ["broken"]
    assert got.keys() == want.keys() and got["val_n"] == len(pairs) - 1 and got["val_failed"] == 1
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_killed_run_resumes_exactly(phantom_manifest, tmp_path):
    straight = run_stage1(_cfg(phantom_manifest, tmp_path / "a", max_steps=6, augment=True))
    part = run_stage1(_cfg(phantom_manifest, tmp_path / "b", max_steps=6, augment=True, stop_after_steps=3))
    assert not json.loads((part / "summary.json").read_text())["finished"]
    resumed = run_stage1(_cfg(phantom_manifest, tmp_path / "b", max_steps=6, augment=True))
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 6
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"] == "checkpoint-3"  # not a restart
    from safetensors.torch import load_file

    for name in ("heads.safetensors", "image_encoder/model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)
    la = [r["loss"] for r in map(json.loads, (straight / "train_log.jsonl").read_text().splitlines())]
    lb = [r["loss"] for r in map(json.loads, (resumed / "train_log.jsonl").read_text().splitlines())]
    assert lb == pytest.approx(la, rel=1e-5)  # every step logged once, same values
    with pytest.raises(Stage1Error, match="resume=auto"):
        run_stage1(_cfg(phantom_manifest, tmp_path / "b", resume="never"))


def test_too_little_data_is_a_clear_error(phantom_manifest, tmp_path):
    with pytest.raises(Stage1Error, match="fewer than one global batch"):
        run_stage1(_cfg(phantom_manifest, tmp_path / "c", per_device_batch_size=64))


def test_cli_train_stage1_with_shipped_tiny_yaml(phantom_manifest, tmp_path):
    from llavarad.cli import main

    out = tmp_path / "cli"
    code = main(["train", "stage1", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"manifest={phantom_manifest}",
                 f"output_dir={out}", "max_steps=2"])
    assert code == 0
    assert (out / "image_encoder" / "model.safetensors").is_file()


def _ddp_worker(rank: int, world: int, port: int, manifest: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), ACCELERATE_USE_CPU="true")
    run_stage1(_cfg(Path(manifest), Path(out), per_device_batch_size=4, max_steps=4, val_manifest=manifest,
                    val_splits=["validate", "test"]))


@pytest.mark.slow  # two spawned training processes: ~30 s on 2 cores
def test_two_process_run_equals_one_process_with_the_global_batch(phantom_manifest, tmp_path):
    """2 processes x 4 pairs (DDP over gloo, negatives gathered across processes) follow exactly the
    trajectory of 1 process x 8 pairs: same global batches, same loss at every step."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(phantom_manifest), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = run_stage1(_cfg(phantom_manifest, tmp_path / "single", per_device_batch_size=8, max_steps=4,
                             val_manifest=str(phantom_manifest), val_splits=["validate", "test"]))
    ddp_rows = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    ddp_log = [r for r in ddp_rows if "loss" in r]
    assert [r["row"] for r in ddp_rows if r["row"].startswith("val")] == ["val:final"]
    one_rows = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    one_log = [r for r in one_rows if "loss" in r]
    # the broken image may fall in a batch: then both runs see 7 pairs there (uneven shards are exact too)
    assert [r["global_batch"] for r in ddp_log] == [r["global_batch"] for r in one_log]
    assert [r["loss"] for r in ddp_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["processes"] == 2
    # validation sharded over the 2 processes and gathered = validation on one process
    one_val = [r for r in one_rows if r["row"] == "val:final"]
    ddp_val = [r for r in ddp_rows if r["row"] == "val:final"]
    assert len(one_val) == len(ddp_val) == 1 and ddp_val[0]["val_n"] == one_val[0]["val_n"] > 0
    for key, value in one_val[0].items():
        if key.startswith("val_"):
            assert ddp_val[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # the exported weights are the same too (gathered through accelerator.get_state_dict)
    from safetensors.torch import load_file

    for name in ("heads.safetensors", "image_encoder/model.safetensors"):
        a, b = load_file(str(single / name)), load_file(str(tmp_path / "ddp" / name))
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-4), (name, key)
