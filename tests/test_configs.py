"""Every shipped YAML under configs/ loads into its config class and names its launch command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llavarad.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_YAMLS = sorted(CONFIGS.glob("stage*.yaml"))
ACCELERATE_YAMLS = sorted((CONFIGS / "accelerate").glob("*.yaml"))
DEEPSPEED_JSONS = sorted((CONFIGS / "accelerate").glob("*.json"))


def _config_class(stage: str):
    if stage == "stage1":
        mod = pytest.importorskip("llavarad.train.stage1_encoder", reason="stage 1 module not installed")
        return mod.Stage1Config
    if stage == "stage2":
        from llavarad.train.stage2_align import Stage2Config

        return Stage2Config
    from llavarad.train.stage3_finetune import Stage3Config

    return Stage3Config


def test_run_configs_are_shipped_for_every_stage_and_preset():
    names = {p.stem for p in RUN_YAMLS}
    for stage in ("stage2", "stage3"):
        for preset in ("llava-rad-7b", "phantom", "tiny"):
            assert f"{stage}_{preset}" in names


@pytest.mark.parametrize("path", RUN_YAMLS, ids=lambda p: p.name)
def test_run_yaml_loads_into_its_config_class(path: Path):
    stage = path.stem.split("_", 1)[0]
    cfg = load_config(_config_class(stage), path)
    assert cfg is not None
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#"), f"{path.name}: first line must be a comment with the launch command"
    head = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    assert f"train {stage} --config configs/{path.name}" in head, f"{path.name}: launch command missing"


def test_paper_hyperparameters_are_the_7b_defaults():
    from llavarad.train.stage2_align import Stage2Config
    from llavarad.train.stage3_finetune import Stage3Config

    s2 = load_config(Stage2Config, CONFIGS / "stage2_llava-rad-7b.yaml")
    assert (s2.learning_rate, s2.epochs, s2.global_batch_size, s2.lr_scheduler, s2.warmup_ratio, s2.weight_decay) == (
        1e-3, 1.0, 256, "cosine", 0.03, 0.0)
    s3 = load_config(Stage3Config, CONFIGS / "stage3_llava-rad-7b.yaml")
    assert (s3.learning_rate, s3.epochs, s3.global_batch_size) == (1e-4, 3.0, 64)
    assert (s3.lora.r, s3.lora.alpha, s3.lora.dropout) == (64, 128, 0.05)
    assert sorted(s3.lora.target_modules) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"])
    # the dataclass defaults agree with the YAMLs
    assert Stage2Config().learning_rate == 1e-3 and Stage2Config().global_batch_size == 256
    assert Stage3Config().lora.r == 64 and Stage3Config().epochs == 3.0


def test_accelerate_configs_cover_every_engine_and_load():
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in ACCELERATE_YAMLS:
        cfg = load_config_from_file(str(path))
        kinds[path.stem] = str(cfg.distributed_type).split(".")[-1]
        assert path.read_text(encoding="utf-8").startswith("#"), path.name
        ds = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
        if ds:
            assert (CONFIGS.parent / ds).is_file(), f"{path.name} points at missing {ds}"
    assert sorted(kinds.values()) == sorted(["NO", "MULTI_GPU", "DEEPSPEED", "DEEPSPEED", "FSDP"])


@pytest.mark.parametrize("path", DEEPSPEED_JSONS, ids=lambda p: p.name)
def test_deepspeed_jsons_leave_batch_and_lr_to_the_run_config(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["zero_optimization"]["stage"] in (2, 3)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert data[key] == "auto", f"{path.name}: {key} must be 'auto' so the run YAML decides it"
    if data["zero_optimization"]["stage"] == 3:
        assert data["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_every_yaml_under_configs_is_covered():
    covered = set(RUN_YAMLS) | set(ACCELERATE_YAMLS)
    every = set(CONFIGS.rglob("*.yaml")) | set(CONFIGS.rglob("*.yml"))
    for path in every - covered:  # any other YAML must at least parse to a mapping
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
