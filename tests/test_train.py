"""Stages 2 and 3 on the tiny preset: what trains, what stays frozen, exact resume, CLI end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from llavarad.cli import main  # noqa: E402
from llavarad.config import config_from_dict  # noqa: E402
from llavarad.model.processor import SequenceTooLongError  # noqa: E402
from llavarad.train.dataset import ImageReadError, build_dataset  # noqa: E402
from llavarad.train.stage2_align import Stage2Config, freeze_for_stage2, run_stage2  # noqa: E402
from llavarad.train.stage3_finetune import Stage3Config, run_stage3  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Short made-up findings (no real report text in the repository).
FINDINGS = ["The heart is enlarged.", "No pleural effusion.", "Small left pneumothorax.", "Lungs are clear."]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, shared_data) -> Path:
    """12 records (8 train, 4 validate) on small copies of real CXRs from ../shared/data."""
    from PIL import Image

    root = tmp_path_factory.mktemp("train_data")
    sources = sorted((shared_data / "images").glob("0000*.png"))[:4]
    for i, src in enumerate(sources):
        with Image.open(src) as im:
            im.convert("L").resize((64, 64)).save(root / f"img{i}.png")
    rows = [{"id": f"r{i}", "image": f"img{i % 4}.png", "dataset": "test", "split": "train" if i < 8 else "validate",
             "indication": "Cough.", "findings": FINDINGS[i % 4]} for i in range(12)]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(cls, model, manifest, out, **extra):
    base = dict(model=str(model), train_manifest=str(manifest), output_dir=str(out), global_batch_size=4,
                per_device_batch_size=2, max_steps=4, logging_steps=1, eval_steps=0, save_steps=0, num_workers=0,
                device="cpu", max_length=256, precision="fp32")
    base.update(extra)
    return config_from_dict(cls, base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _group(name: str) -> str:
    for part in ("vision_tower", "multi_modal_projector", "language_model", "lm_head"):
        if part in name:
            return part
    return "other"


def test_stage2_backward_reaches_only_the_projector(tiny_model_dir, manifest):
    from llavarad.model.build import load_model
    from llavarad.train.collator import LlavaCollator

    bundle = load_model(tiny_model_dir, device="cpu", dtype="float32")
    freeze_for_stage2(bundle.model)
    ds = build_dataset(manifest, split="train", tokenizer=bundle.tokenizer, image_processor=bundle.image_processor,
                       prompt_format="plain", num_image_tokens=bundle.num_image_tokens,
                       image_token_id=bundle.image_token_id, max_length=256)
    batch = LlavaCollator(0, bundle.image_token_id, bundle.num_image_tokens)([ds[0], ds[1]])
    bundle.model.train()
    bundle.model(**batch).loss.backward()
    for name, p in bundle.model.named_parameters():
        if _group(name) == "multi_modal_projector":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_stage3_backward_reaches_lora_and_projector_not_vision(tiny_model_dir, manifest):
    from llavarad.model.build import load_model
    from llavarad.train.collator import LlavaCollator
    from llavarad.train.lora import LoraSettings, apply_lora

    bundle = load_model(tiny_model_dir, device="cpu", dtype="float32")
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    model = apply_lora(bundle.model, LoraSettings(r=4, alpha=8, dropout=0.0))
    ds = build_dataset(manifest, split="train", tokenizer=bundle.tokenizer, image_processor=bundle.image_processor,
                       prompt_format="v1", num_image_tokens=bundle.num_image_tokens,
                       image_token_id=bundle.image_token_id, max_length=256)
    batch = LlavaCollator(0, bundle.image_token_id, bundle.num_image_tokens)([ds[0], ds[2]])
    model.train()
    model(**batch).loss.backward()
    seen = {"lora_B": 0, "projector": 0}
    for name, p in model.named_parameters():
        if "vision_tower" in name:
            assert "lora" not in name and not p.requires_grad, name
        elif "lora_B" in name:
            assert "language_model" in name and p.grad is not None and p.grad.abs().sum() > 0, name
            seen["lora_B"] += 1
        elif "multi_modal_projector" in name and "modules_to_save" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            seen["projector"] += 1
        elif "lora_A" not in name:
            assert not p.requires_grad, name
    # 2 layers x 7 projections; projector: 2 linears x (weight, bias)
    assert seen == {"lora_B": 14, "projector": 4}


def test_stage2_changes_projector_only_and_writes_a_model_folder(tiny_model_dir, manifest, tmp_path):
    out = run_stage2(_cfg(Stage2Config, tiny_model_dir, manifest, tmp_path / "s2", eval_steps=2))
    before, after = _weights(tiny_model_dir), _weights(out)
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (_group(name) != "multi_modal_projector"), name
    meta = json.loads((out / "llavarad.json").read_text())
    assert meta["prompt_format"] == "plain" and meta["train_config"]["stage"] == "stage2"
    assert meta["train_config"]["learning_rate"] == pytest.approx(1e-3)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r and "learning_rate" in r for r in logs) and any("eval_loss" in r for r in logs)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_steps"] == 4 and summary["train_examples"] == 8


def test_stage3_merged_keeps_vision_frozen_and_adapter_export_merges_identically(tiny_model_dir, manifest, tmp_path):
    from llavarad.train.lora import merge_lora

    merged = run_stage3(_cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "merged",
                             lora={"r": 4, "alpha": 8}, learning_rate=1e-2))
    before, after = _weights(tiny_model_dir), _weights(merged)
    assert before.keys() == after.keys()
    changed = {_group(n) for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"language_model", "multi_modal_projector"}
    assert json.loads((merged / "llavarad.json").read_text())["prompt_format"] == "v1"

    adapter = run_stage3(_cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "adapter",
                              lora={"r": 4, "alpha": 8}, learning_rate=1e-2, export="adapter"))
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "llavarad.json").exists()
    again = merge_lora(adapter, tmp_path / "remerged")
    re_w = _weights(again)
    for name in after:
        assert torch.allclose(after[name], re_w[name], atol=1e-6), name


def test_stage3_train_vision_tower_trains_and_exports_the_tower(tiny_model_dir, manifest, tmp_path):
    """Opt-in departure from the paper: the tower changes, and merged == adapter-then-merge."""
    from llavarad.train.lora import merge_lora

    common = {"lora": {"r": 4, "alpha": 8}, "learning_rate": 1e-2, "train_vision_tower": True,
              "vision_tower_lr": 1e-3}
    merged = run_stage3(_cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "merged", **common))
    before, after = _weights(tiny_model_dir), _weights(merged)
    assert before.keys() == after.keys()
    changed = {_group(n) for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"language_model", "multi_modal_projector", "vision_tower"}
    assert json.loads((merged / "llavarad.json").read_text())["train_config"]["train_vision_tower"] is True
    adapter = run_stage3(_cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "adapter", export="adapter",
                              **common))
    re_w = _weights(merge_lora(adapter, tmp_path / "remerged"))
    for name in after:
        assert torch.allclose(after[name], re_w[name], atol=1e-6), name


def test_vision_tower_lr_gives_the_tower_its_own_optimizer_group(tiny_model_dir, manifest, tmp_path):
    from llavarad.train.inputs import build_datasets, load_bundle
    from llavarad.train.lora import apply_lora
    from llavarad.train.trainer import make_trainer

    cfg = _cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "o", lora={"r": 4, "alpha": 8},
               learning_rate=1e-3, train_vision_tower=True, vision_tower_lr=1e-5, weight_decay=0.1)
    bundle = load_bundle(cfg)
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    model = apply_lora(bundle.model, cfg.lora, train_vision_tower=True)
    train_ds, val_ds = build_datasets(cfg, bundle, "v1")
    trainer = make_trainer(cfg, model, bundle, train_ds, val_ds, stage="stage3", group_lrs={"vision_tower": 1e-5})
    opt = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr: dict[float, set[str]] = {}
    for group in opt.param_groups:
        by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
        if group["weight_decay"]:  # biases and norms are exempt from decay, as in the stock Trainer
            assert not any(names[id(p)].endswith("bias") for p in group["params"])
    assert set(by_lr) == {1e-3, 1e-5}
    assert by_lr[1e-5] and all("vision_tower" in n for n in by_lr[1e-5])
    assert not any("vision_tower" in n for n in by_lr[1e-3])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert by_lr[1e-3] | by_lr[1e-5] == trainable


def test_vision_tower_lr_needs_a_training_tower(tiny_model_dir, manifest, tmp_path):
    with pytest.raises(ValueError, match="vision_tower_lr=1e-05 has no effect with train_vision_tower=false"):
        _cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "o", vision_tower_lr=1e-5)
    with pytest.raises(ValueError, match="vision_tower_lr=-1.0 must be > 0"):
        _cfg(Stage3Config, tiny_model_dir, manifest, tmp_path / "o", vision_tower_lr=-1.0, train_vision_tower=True)


def test_resume_is_exact(tiny_model_dir, manifest, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume, 2 more steps (optimizer, schedule, RNG, data order)."""
    out = tmp_path / "run"
    cfg = _cfg(Stage3Config, tiny_model_dir, manifest, out, save_steps=2, lora={"r": 4, "alpha": 8},
               learning_rate=1e-2, epochs=2.0)
    run_stage3(cfg)
    straight = _weights(out)
    shutil.rmtree(out / "checkpoint-4")
    for f in out.glob("*.safetensors"):
        f.unlink()
    run_stage3(cfg)  # resume=auto picks checkpoint-2
    resumed = _weights(out)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert json.loads((out / "checkpoint-2" / "llavarad_train_config.json").read_text())["stage"] == "stage3"


def test_too_long_examples_error_or_are_excluded_and_counted(tiny_model_dir, manifest, tmp_path):
    with pytest.raises(SequenceTooLongError, match="'r0'.*on_too_long=skip"):
        run_stage2(_cfg(Stage2Config, tiny_model_dir, manifest, tmp_path / "a", max_length=20))
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["findings"] = "Very long. " * 40
    rows[1]["findings"] = ""
    bad = tmp_path / "m.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        r["image"] = str(manifest.parent / r["image"])
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_stage2(_cfg(Stage2Config, tiny_model_dir, bad, tmp_path / "b", max_length=60, on_too_long="skip",
                          max_steps=1))
    excluded = [json.loads(x) for x in (out / "excluded.jsonl").read_text().splitlines()]
    assert {(e["id"], e["reason"]) for e in excluded} == {("r0", "too_long"), ("r1", "missing_findings")}
    assert json.loads((out / "train_summary.json").read_text())["train_examples"] == 6


def test_unreadable_image_names_the_record(tiny_model_dir, manifest, tmp_path):
    from llavarad.model.build import load_model

    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows[0]["image"] = str(tmp_path / "broken.png")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = load_model(tiny_model_dir, device="cpu", dtype="float32")
    ds = build_dataset(path, split="train", tokenizer=b.tokenizer, image_processor=b.image_processor,
                       prompt_format="v1", num_image_tokens=b.num_image_tokens, image_token_id=b.image_token_id,
                       max_length=256)
    with pytest.raises(ImageReadError, match="'r0'.*broken.png"):
        ds[0]


def test_config_validation_collects_problems():
    from llavarad.config import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict(Stage3Config, {"learning_rate": -1, "on_too_long": "truncate", "lora": {"r": 0}})
    text = str(err.value)
    assert "on_too_long" in text and "'truncate'" in text
    with pytest.raises(ConfigError, match="lora.r"):
        config_from_dict(Stage3Config, {"lora": {"r": 0}})
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        config_from_dict(Stage2Config, {"learning_rate": 0})


def test_grad_accumulation_from_global_batch():
    from llavarad.train.distributed import grad_accumulation

    assert grad_accumulation(256, 16, 8) == 2
    assert grad_accumulation(64, 8, 8) == 1
    with pytest.raises(ValueError, match="global_batch_size=64.*per_device_batch_size=6"):
        grad_accumulation(64, 6, 1)


@pytest.mark.parametrize("rank0", [True, False])
def test_sharded_export_gathers_on_every_rank_and_rebuilds_outside_zero3_init(rank0):
    """The export of a ZeRO-3 run: every process takes part in the gather; rank 0 rebuilds the
    model with ZeRO-3's partitioned init lifted (transformers would otherwise build it inside
    deepspeed.zero.Init, a collective that one process alone never finishes) and the run's setting
    comes back afterwards. DeepSpeed itself is not needed: the switch is transformers' own."""
    from types import SimpleNamespace

    import torch
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    from llavarad.train.export import gather_trained_model

    class Zero3Config:  # what HfDeepSpeedConfig answers for a stage-3 config
        config = {"zero_optimization": {"stage": 3}}

        def is_zero3(self):
            return True

    run_config = Zero3Config()

    class Plugin:
        def set_deepspeed_weakref(self):
            set_hf_deepspeed_config(run_config)

    torch.manual_seed(0)
    full = torch.nn.Linear(3, 2)
    sharded = torch.nn.Linear(3, 2)
    sharded.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside its gather
    calls = []

    class Accelerator:
        state = SimpleNamespace(deepspeed_plugin=Plugin())

        def unwrap_model(self, model):
            return model

        def get_state_dict(self, model):
            calls.append("gather")
            return {k: v.clone() for k, v in full.state_dict().items()}

    def rebuild():
        calls.append(("rebuild", is_deepspeed_zero3_enabled()))
        return torch.nn.Linear(3, 2)

    trainer = SimpleNamespace(accelerator=Accelerator(), model_wrapped=sharded, is_world_process_zero=lambda: rank0)
    Plugin().set_deepspeed_weakref()
    try:
        got = gather_trained_model(trainer, rebuild)
        assert is_deepspeed_zero3_enabled()  # the run's setting is back
    finally:
        unset_hf_deepspeed_config()
    if not rank0:
        assert got is None and calls == ["gather"]  # took part in the gather, built nothing
        return
    assert calls == ["gather", ("rebuild", False)]
    assert torch.equal(got.weight, full.weight) and torch.equal(got.bias, full.bias)


def test_shipped_tiny_yamls_run_end_to_end_through_the_cli(tiny_model_dir, manifest, tmp_path, capsys):
    s2, s3 = tmp_path / "s2", tmp_path / "s3"
    common = [f"train_manifest={manifest}", "max_train_samples=8"]
    assert main(["train", "stage2", "--config", str(REPO / "configs/stage2_tiny.yaml"), f"model={tiny_model_dir}",
                 f"output_dir={s2}", *common]) == 0
    assert main(["train", "stage3", "--config", str(REPO / "configs/stage3_tiny.yaml"), f"model={s2}",
                 f"output_dir={s3}", "export=adapter", *common]) == 0
    assert main(["merge-lora", "--adapter", str(s3), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "llavarad.json").is_file()
    captured = capsys.readouterr()
    out = captured.out
    assert "stage2 finished" in out and "merged model written" in out
    assert "{'loss'" not in out + captured.err  # the progress bar, not the Trainer's raw dicts
    run_log = (s2 / "run.log").read_text()  # the full log of the run sits in its folder
    assert "stage2" in run_log and "llavarad.train" in run_log and f"full log: {s2 / 'run.log'}" in out
    assert main(["train", "stage2", "--config", str(REPO / "configs/stage2_tiny.yaml"), "on_too_long=truncate"]) == 1
    assert "on_too_long" in capsys.readouterr().err
