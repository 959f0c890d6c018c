"""Converted release folders behave as the release does: float16 inference, exact float32 merges."""

from __future__ import annotations

import json

import pytest
import torch

from llavarad.model._convert_testing import LORA_ALPHA, LORA_R
from llavarad.model._convert_testing import make_fake_release as make_release
from llavarad.model._convert_testing import make_fake_vicuna as make_vicuna
from llavarad.model.build import INFERENCE_DTYPE, load_model, resolve_device_dtype, save_model
from llavarad.model.convert import convert_release


@pytest.fixture(scope="module")
def fp16_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert16")
    base = make_vicuna(root / "vicuna16", dtype=torch.float16)  # Vicuna ships float16 weights
    release = make_release(root / "release", base)
    return root, base, release


def test_float32_merge_is_not_rounded_to_the_base_dtype(fp16_release):
    from safetensors.torch import load_file

    root, base, release = fp16_release
    out = root / "fp32"
    convert_release(release, base, out, dtype="float32", preset="tiny")
    got = load_model(out, device="cpu", dtype="float32").model.state_dict()
    base_w = load_file(str(next(base.glob("*.safetensors"))))
    lora = torch.load(release / "adapter_model.bin", weights_only=True)
    name = "model.layers.0.self_attn.q_proj"
    a, b = lora[f"base_model.model.{name}.lora_A.weight"].float(), lora[f"base_model.model.{name}.lora_B.weight"].float()
    exact = base_w[f"{name}.weight"].float() + (LORA_ALPHA / LORA_R) * (b @ a)
    merged = got["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, exact, atol=1e-6, rtol=1e-6)
    # rounding the sum to float16 first (what a merge in the base's dtype gives) is measurably different
    assert (merged - exact.half().float()).abs().max() > 1e-5


def test_converted_release_records_float16_and_auto_honours_it(fp16_release, monkeypatch):
    root, base, release = fp16_release
    out = root / "auto"
    convert_release(release, base, out, preset="tiny")
    meta = json.loads((out / "llavarad.json").read_text())
    assert meta[INFERENCE_DTYPE] == "float16"
    # CPU: float32 unless asked, whatever the folder records
    assert resolve_device_dtype("cpu", "auto", "float16")[1] == torch.float32
    bundle = load_model(out, device="cpu")
    assert bundle.model.dtype == torch.float32
    # fine-tuned from the converted release and saved with its training config: trained here, no float16 record
    save_model(bundle, root / "finetuned", train_config={"stage": "stage3"})
    assert INFERENCE_DTYPE not in json.loads((root / "finetuned" / "llavarad.json").read_text())
    assert resolve_device_dtype("cpu", "bfloat16", "float16")[1] == torch.bfloat16
    # a GPU that has bf16: the converted release gets float16, a folder trained here bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device_dtype("cuda", "auto", meta[INFERENCE_DTYPE])[1] == torch.float16
    assert resolve_device_dtype("cuda", "auto", None)[1] == torch.bfloat16
    assert resolve_device_dtype("cuda", "float32", "float16")[1] == torch.float32  # an explicit dtype wins
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device_dtype("cuda", "auto", None)[1] == torch.float16
    with pytest.raises(ValueError, match="recorded inference dtype 'int8'"):
        resolve_device_dtype("cpu", "auto", "int8")


def test_preprocess_cfg_of_the_vision_config_is_read_and_recorded(fp16_release, tmp_path):
    import shutil

    from llavarad.model.convert import VISION_CONFIG, ConversionError, convert_encoder
    from llavarad.model.processor import CLIP_MEAN

    _, base, release = fp16_release
    rel = tmp_path / "release"
    shutil.copytree(release, rel)
    # without the open_clip config: open_clip's defaults, and the folder says so
    out = convert_release(rel, base, tmp_path / "default", dtype="float32", preset="tiny")
    meta = json.loads((tmp_path / "default" / "llavarad.json").read_text())
    assert meta["preprocess"]["mean"] == list(CLIP_MEAN) and meta["preprocess"]["source"].startswith("open_clip defaults")
    assert out.kind == "model"
    cfg = {"model_cfg": {"embed_dim": 16}, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                                              "interpolation": "bilinear", "resize_mode": "shortest"}}
    (rel / VISION_CONFIG).write_text(json.dumps(cfg))
    convert_release(rel, base, tmp_path / "cfg", dtype="float32", preset="tiny")
    meta = json.loads((tmp_path / "cfg" / "llavarad.json").read_text())
    assert meta["preprocess"]["mean"] == [0.5] * 3 and meta["preprocess"]["interpolation"] == "bilinear"
    assert meta["preprocess"]["source"] == f"{rel / VISION_CONFIG} (preprocess_cfg)"
    proc = load_model(tmp_path / "cfg", device="cpu").image_processor  # the loaded processor follows it
    assert list(proc.image_mean) == [0.5] * 3 and list(proc.image_std) == [0.25] * 3 and int(proc.resample) == 2
    saved = json.loads((tmp_path / "cfg" / "processor_config.json").read_text())["image_processor"]  # other tools
    assert saved["image_mean"] == [0.5] * 3 and saved["resample"] == 2
    enc = convert_encoder(rel, tmp_path / "enc", preset="tiny")
    assert enc.kind == "encoder"
    assert json.loads((tmp_path / "enc" / "llavarad_convert.json").read_text())["preprocess"]["std"] == [0.25] * 3
    cfg["preprocess_cfg"].update(resize_mode="longest", mean=[0.5, 0.5])
    (rel / VISION_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"mean=\[0.5, 0.5\]: expected three numbers.*resize_mode='longest'"):
        convert_release(rel, base, tmp_path / "bad", dtype="float32", preset="tiny")
