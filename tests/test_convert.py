"""`llavarad convert` on a tiny fake release with the real file names and key layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llavarad.model._convert_testing import (
    GRID,
    LORA_ALPHA,
    LORA_R,
    LORA_TARGETS,
    PATCH,
    TEXT_LAYERS,
    VISION_HEADS,
    VISION_HIDDEN,
    timm_trunk,
)
from llavarad.model._convert_testing import make_fake_release as make_release
from llavarad.model._convert_testing import make_fake_vicuna as make_vicuna
from llavarad.model.convert import ConversionError, check_release, convert_encoder, convert_release


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    base = make_vicuna(root / "vicuna")
    release = make_release(root / "release", base)
    return root, base, release


@pytest.fixture(scope="module")
def merged(parts):
    root, base, release = parts
    out = root / "merged"
    report = convert_release(release, base, out, dtype="float32", preset="tiny")
    return out, report


def timm_reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """timm's ViT (DINOv2 variant) written out: patch conv, CLS + pos, then per block
    x += ls1 * proj(attn(norm1(x))) (fused qkv), x += ls2 * fc2(gelu(fc1(norm2(x)))). Returns the
    input to block 0 followed by each block's output, shapes (B, 1 + grid^2, D)."""
    d = sd["cls_token"].shape[-1]
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    states = [x]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        b, n, _ = h.shape
        qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5, dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + sd[p + "ls1.gamma"] * (a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + sd[p + "ls2.gamma"] * (h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"])
        states.append(x)
        i += 1
    return states


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def test_encoder_only_matches_timm_block_math(parts, tmp_path):
    from transformers import Dinov2Model

    _, _, release = parts
    report = convert_encoder(release, tmp_path / "enc", preset="tiny")
    assert report.kind == "encoder" and report.image_size == 56 and report.ignored_vision_keys == 3
    model = Dinov2Model.from_pretrained(tmp_path / "enc").eval()
    assert model.config.num_attention_heads == VISION_HEADS and model.config.hidden_size == VISION_HIDDEN
    assert (tmp_path / "enc" / "preprocessor_config.json").is_file()
    sd = timm_trunk(2)
    ref = timm_reference(sd, _pixels(), VISION_HEADS)
    with torch.no_grad():
        out = model(_pixels(), output_hidden_states=True)
    assert len(out.hidden_states) == len(ref)
    torch.testing.assert_close(out.hidden_states[-2], ref[-2], atol=1e-5, rtol=1e-5)
    final = F.layer_norm(ref[-1], (VISION_HIDDEN,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    torch.testing.assert_close(out.last_hidden_state, final, atol=1e-5, rtol=1e-5)


def test_encoder_folder_feeds_init_from_parts(parts, tmp_path):
    """`convert --encoder-only` output is what `init --vision` (and stage 1) take."""
    from llavarad.model.build import init_from_parts

    _, base, release = parts
    convert_encoder(release, tmp_path / "enc", preset="tiny")
    bundle = init_from_parts(tmp_path / "enc", base, preset="tiny")
    with torch.no_grad():
        feats = bundle.model.model.vision_tower(_pixels(), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(feats, timm_reference(timm_trunk(2), _pixels(), VISION_HEADS)[-2], atol=1e-5, rtol=1e-5)


def test_merged_weights_are_w_plus_scaled_ba(parts, merged):
    from safetensors.torch import load_file

    from llavarad.model.build import load_model

    _, base, release = parts
    out, report = merged
    assert report.lora == "merged" and report.lora_modules == TEXT_LAYERS * len(LORA_TARGETS)
    assert report.lora_scale == LORA_ALPHA / LORA_R
    base_w = load_file(str(next(base.glob("*.safetensors"))))
    lora = torch.load(release / "adapter_model.bin", weights_only=True)
    proj = torch.load(release / "non_lora_trainables.bin", weights_only=True)
    got = load_model(out, device="cpu", dtype="float32").model.state_dict()  # as users load it
    checked = 0
    for name, w in base_w.items():
        key = "model.language_model." + name[len("model."):] if name.startswith("model.") else name
        module = name.removesuffix(".weight")
        a = lora.get(f"base_model.model.{module}.lora_A.weight")
        if a is not None:
            b = lora[f"base_model.model.{module}.lora_B.weight"]
            torch.testing.assert_close(got[key], w + (LORA_ALPHA / LORA_R) * (b @ a), atol=1e-6, rtol=1e-6)
            checked += 1
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert got[key].shape[0] == w.shape[0] + 1  # the <image> row
            torch.testing.assert_close(got[key][: w.shape[0]], w)
            torch.testing.assert_close(got[key][-1], w.mean(dim=0))
        else:
            torch.testing.assert_close(got[key], w)
    assert checked == TEXT_LAYERS * len(LORA_TARGETS)
    for i, layer in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            torch.testing.assert_close(got[f"model.multi_modal_projector.{layer}.{p}"],
                                       proj[f"base_model.model.model.mm_projector.{i}.{p}"])


def test_merge_agrees_with_peft(parts, merged):
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    from llavarad.model.build import load_model

    _, base, release = parts
    ref = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), release).merge_and_unload()
    ours = load_model(merged[0], device="cpu", dtype="float32").model
    ref_sd = ref.state_dict()
    for name, w in ours.model.language_model.state_dict().items():
        r = ref_sd["model." + name]
        torch.testing.assert_close(w[: r.shape[0]], r, atol=1e-6, rtol=1e-6)


def test_converted_folder_loads_and_generates(parts, merged):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavarad.generate import generate_reports
    from llavarad.model.build import load_model
    from llavarad.model.processor import tokenize_prompt
    from llavarad.prompts.model import build_prompt

    out, report = merged
    bundle = load_model(out, device="cpu", dtype="float32")
    meta = json.loads((out / "llavarad.json").read_text())
    assert meta["prompt_format"] == "v1" and meta["init"]["kind"] == "convert"
    assert meta["init"]["release_config"]["mm_projector_type"] == "mlp2x_gelu"
    # the fake release says image_aspect_ratio="pad": the converted model preprocesses the same way
    assert meta["image_aspect_ratio"] == "pad" and bundle.image_aspect_ratio == "pad"
    tok = bundle.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == bundle.image_token_id == report.image_token_id == len(tok) - 1
    assert tok.pad_token_id == tok.unk_token_id
    assert bundle.model.config.vision_feature_layer == -2 and bundle.model.config.vision_feature_select_strategy == "default"
    ids = tokenize_prompt(tok, build_prompt("v1", indication="Cough.", findings=None).prompt,
                          bundle.num_image_tokens, bundle.image_token_id)
    assert ids.count(bundle.image_token_id) == 16
    image = Image.new("L", (64, 64), 100)
    texts = generate_reports(bundle, [image, image], ["Cough.", None], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # plain transformers tools read the folder too
    assert LlavaForConditionalGeneration.from_pretrained(out).config.image_token_id == bundle.image_token_id
    assert AutoProcessor.from_pretrained(out).chat_template


def test_full_model_vision_features_match_reference(merged):
    from llavarad.model.build import load_model

    bundle = load_model(merged[0], device="cpu", dtype="float32")
    ref = timm_reference(timm_trunk(2), _pixels(1), VISION_HEADS)[-2][:, 1:]  # block N-1 output, CLS dropped
    with torch.no_grad():
        feats = bundle.model.model.get_image_features(pixel_values=_pixels(1))
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
    proj = bundle.model.model.multi_modal_projector
    torch.testing.assert_close(feats.reshape(ref.shape[0], ref.shape[1], -1), proj(ref), atol=1e-5, rtol=1e-5)


def test_keep_lora_writes_a_peft_adapter_for_the_converted_model(parts, merged, tmp_path):
    peft = pytest.importorskip("peft")
    from llavarad.model.build import load_model

    _, base, release = parts
    out = tmp_path / "kept"
    report = convert_release(release, base, out, dtype="float32", keep_lora=True, preset="tiny")
    assert report.lora == "adapter" and (out / "lora" / "adapter_config.json").is_file()
    plain = load_model(out, device="cpu", dtype="float32").model
    with_lora = peft.PeftModel.from_pretrained(plain, out / "lora").merge_and_unload()
    want = load_model(merged[0], device="cpu", dtype="float32").model.state_dict()
    got = with_lora.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-6)


def test_safetensors_adapter_and_bf16_output(parts, tmp_path):
    _, base, release = parts
    rel = tmp_path / "release_st"
    shutil.copytree(release, rel)
    (rel / "adapter_model.bin").unlink()
    make_release(rel, base, adapter_format="safetensors")
    assert not (rel / "adapter_model.bin").exists()
    report = convert_release(rel, base, tmp_path / "bf16", dtype="bfloat16", preset="tiny")
    assert report.dtype == "bfloat16"
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"


def test_bin_shards_of_the_base_give_the_same_model(parts, merged, tmp_path):
    """Vicuna's hub folder ships pytorch_model-*.bin shards: read memory-mapped, weights_only."""
    from safetensors.torch import load_file

    from llavarad.model.build import load_model

    _, base, release = parts
    bin_base = tmp_path / "vicuna_bin"
    shutil.copytree(base, bin_base)
    state = {}
    for f in sorted(bin_base.glob("*.safetensors")):
        state.update(load_file(str(f)))
        f.unlink()
    keys = sorted(state)
    torch.save({k: state[k] for k in keys[: len(keys) // 2]}, bin_base / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in keys[len(keys) // 2:]}, bin_base / "pytorch_model-00002-of-00002.bin")
    convert_release(release, bin_base, tmp_path / "from_bin", dtype="float32", preset="tiny")
    got = load_model(tmp_path / "from_bin", device="cpu", dtype="float32").model.state_dict()
    want = load_model(merged[0], device="cpu", dtype="float32").model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0)


# ---- clear errors ---------------------------------------------------------------------------------


def test_missing_files_are_all_listed(parts, tmp_path):
    _, base, release = parts
    rel = tmp_path / "partial"
    shutil.copytree(release, rel)
    (rel / "non_lora_trainables.bin").unlink()
    (rel / "adapter_model.bin").unlink()
    with pytest.raises(ConversionError) as info:
        check_release(rel, tmp_path / "no_base")
    msg = str(info.value)
    assert "non_lora_trainables.bin is missing" in msg and "adapter_model.safetensors nor adapter_model.bin" in msg
    assert "no_base has no config.json" in msg and "huggingface-cli download microsoft/llava-rad" in msg
    with pytest.raises(ConversionError, match="--base is required"):
        check_release(release, None)
    (rel / "config.json").write_bytes(b"")
    with pytest.raises(ConversionError, match="config.json is empty"):
        check_release(rel, base)


def _broken_release(release: Path, tmp_path: Path) -> Path:
    rel = tmp_path / "broken"
    shutil.copytree(release, rel)
    return rel


def test_unknown_trunk_key_is_reported(parts, tmp_path):
    _, base, release = parts
    rel = _broken_release(release, tmp_path)
    ck = torch.load(rel / "biomedclipcxr_518_checkpoint.pt", weights_only=True)
    ck["state_dict"]["module.visual.trunk.reg_token"] = torch.zeros(1, 4, VISION_HIDDEN)
    torch.save(ck, rel / "biomedclipcxr_518_checkpoint.pt")
    with pytest.raises(ConversionError, match="trunk keys have no Dinov2 counterpart: reg_token"):
        convert_encoder(rel, tmp_path / "enc", preset="tiny")
    del ck["state_dict"]["module.visual.trunk.blocks.1.ls2.gamma"]
    torch.save(ck, rel / "biomedclipcxr_518_checkpoint.pt")
    with pytest.raises(ConversionError, match="blocks.1.ls2.gamma' is missing"):
        convert_encoder(rel, tmp_path / "enc", preset="tiny")
    with pytest.raises(ConversionError, match="32 wide but the preset's encoder is 768; pass --preset"):
        convert_encoder(release, tmp_path / "enc")  # default preset llava-rad-7b: heads would be guessed
    torch.save({"state_dict": {"module.text.proj.weight": torch.zeros(2, 2)}}, rel / "biomedclipcxr_518_checkpoint.pt")
    with pytest.raises(ConversionError, match="no keys under module.visual.trunk"):
        convert_encoder(rel, tmp_path / "enc")


def test_projector_problems(parts, tmp_path):
    _, base, release = parts
    rel = _broken_release(release, tmp_path)
    proj = torch.load(rel / "non_lora_trainables.bin", weights_only=True)
    proj["base_model.model.model.mm_projector.0.weight"] = torch.zeros(64, VISION_HIDDEN + 1)
    torch.save(proj, rel / "non_lora_trainables.bin")
    with pytest.raises(ConversionError, match="wrong shape.*linear_1.weight: got \\(64, 33\\)"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    proj["base_model.model.model.mm_projector.0.weight"] = torch.zeros(64, VISION_HIDDEN)
    proj["base_model.model.model.vision_tower.extra"] = torch.zeros(1)
    torch.save(proj, rel / "non_lora_trainables.bin")
    with pytest.raises(ConversionError, match="neither projector.*vision_tower.extra"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    del proj["base_model.model.model.vision_tower.extra"]
    del proj["base_model.model.model.mm_projector.2.bias"]
    torch.save(proj, rel / "non_lora_trainables.bin")
    with pytest.raises(ConversionError, match="projector keys missing: mm_projector.2.bias"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")


def test_lora_problems(parts, tmp_path):
    _, base, release = parts
    rel = _broken_release(release, tmp_path)
    lora = torch.load(rel / "adapter_model.bin", weights_only=True)
    extra = dict(lora)
    extra["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(LORA_R, 64)
    extra["base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight"] = torch.zeros(64, LORA_R)
    torch.save(extra, rel / "adapter_model.bin")
    with pytest.raises(ConversionError, match="modules the base model does not have: model.layers.9"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    missing = {k: v for k, v in lora.items() if "layers.1.mlp.down_proj" not in k}
    torch.save(missing, rel / "adapter_model.bin")
    with pytest.raises(ConversionError, match="layers.1.mlp.down_proj is a LoRA target but has no"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    half = {k: v for k, v in lora.items() if k != "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"}
    torch.save(half, rel / "adapter_model.bin")
    with pytest.raises(ConversionError, match="without both A and B: model.layers.0.mlp.up_proj"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    torch.save(lora, rel / "adapter_model.bin")
    cfg = json.loads((rel / "adapter_config.json").read_text())
    (rel / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ConversionError, match="DoRA"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    (rel / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(ConversionError, match="rank 4 differs from r=8"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")


def test_release_config_and_pickles_are_checked(parts, tmp_path):
    _, base, release = parts
    rel = _broken_release(release, tmp_path)
    cfg = json.loads((rel / "config.json").read_text())
    (rel / "config.json").write_text(json.dumps({**cfg, "mm_projector_type": "linear", "mm_hidden_size": 1024}))
    with pytest.raises(ConversionError, match="mm_projector_type='linear'.*mm_hidden_size=1024"):
        convert_release(rel, base, tmp_path / "o", preset="tiny")
    (rel / "config.json").write_text(json.dumps(cfg))

    import argparse

    # an arbitrary picklable object: refused by weights_only loading (a real pickle could run code)
    torch.save({"state_dict": {"x": argparse.Namespace(a=1)}}, rel / "biomedclipcxr_518_checkpoint.pt")
    with pytest.raises(ConversionError, match="weights_only"):
        convert_encoder(rel, tmp_path / "enc")


def test_cli_convert(parts, tmp_path, capsys):
    from llavarad.cli import main

    _, base, release = parts
    rc = main(["convert", "--release", str(release), "--base", str(base), "--out", str(tmp_path / "cli"),
               "--dtype", "float32", "--preset", "tiny"])
    assert rc == 0 and (tmp_path / "cli" / "llavarad.json").is_file()
    assert "merged" in capsys.readouterr().out
    vision_config = tmp_path / "openclip.json"
    vision_config.write_text(json.dumps({"preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    rc = main(["convert", "--release", str(release), "--out", str(tmp_path / "enc"), "--encoder-only",
               "--preset", "tiny", "--vision-config", str(vision_config)])
    assert rc == 0 and (tmp_path / "enc" / "config.json").is_file()
    assert json.loads((tmp_path / "enc" / "llavarad_convert.json").read_text())["preprocess"]["mean"] == [0.5] * 3
    rc = main(["convert", "--release", str(tmp_path / "nowhere"), "--base", str(base), "--out", str(tmp_path / "x")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_parity_with_real_timm_when_available(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed (optional parity check; never required)")
    from transformers import Dinov2Model

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=GRID * PATCH, embed_dim=VISION_HIDDEN,
                            depth=2, num_heads=VISION_HEADS, mlp_ratio=2.0, init_values=0.7, num_classes=0).eval()
    rel = tmp_path / "rel"
    rel.mkdir()
    torch.save({"state_dict": {f"module.visual.trunk.{k}": v for k, v in vit.state_dict().items()}},
               rel / "biomedclipcxr_518_checkpoint.pt")
    convert_encoder(rel, tmp_path / "enc", preset="tiny")
    model = Dinov2Model.from_pretrained(tmp_path / "enc").eval()
    x = _pixels()
    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for blk in vit.blocks[:-1]:
            h = blk(h)
        ours = model(x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(ours, h, atol=1e-5, rtol=1e-5)
