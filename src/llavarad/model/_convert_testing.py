"""A tiny fake ``microsoft/llava-rad`` release and a tiny fake Vicuna folder, with the real file names and
key layouts (timm ViT trunk under ``module.visual.trunk``, projector ``mm_projector.{0,2}``, peft LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VISION_HIDDEN, VISION_LAYERS, VISION_HEADS, PATCH, GRID, MLP = 32, 2, 2, 14, 4, 64
TEXT_HIDDEN, TEXT_LAYERS, TEXT_HEADS, TEXT_FF = 64, 2, 4, 128
LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def timm_trunk(seed: int = 0) -> dict[str, torch.Tensor]:
    """timm ``vit_*_dinov2`` trunk tensors (random, non-trivial LayerScale and norms)."""
    g = torch.Generator().manual_seed(seed)
    d = VISION_HIDDEN

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + GRID * GRID, d),
        "patch_embed.proj.weight": r(d, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    for i in range(VISION_LAYERS):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
            p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
            p + "ls1.gamma": 0.5 + r(d),
            p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(MLP, d), p + "mlp.fc1.bias": r(MLP),
            p + "mlp.fc2.weight": r(d, MLP), p + "mlp.fc2.bias": r(d),
            p + "ls2.gamma": 0.5 + r(d),
        }
    return sd


def make_vicuna(folder: Path, seed: int = 1) -> Path:
    """A tiny LlamaForCausalLM with the project's tiny tokenizer, saved like a HF hub folder (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavarad.model.tokenizer import build_tokenizer

    tok = build_tokenizer(vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_FF,
                      num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS, num_key_value_heads=TEXT_HEADS,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def make_release(folder: Path, base: Path, seed: int = 2, *, adapter_format: str = "bin") -> Path:
    """The release files with exactly the released names and key layouts."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    state = {f"module.visual.trunk.{k}": v for k, v in timm_trunk(seed).items()}
    # open_clip keeps the CLIP head and the text tower in the same file: the converter ignores them
    state["module.visual.head.proj.weight"] = torch.randn(16, VISION_HIDDEN, generator=g)
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.randn(50, 16, generator=g)
    state["module.logit_scale"] = torch.tensor(4.6)
    torch.save({"epoch": 3, "name": "biomedclipcxr_518", "state_dict": state}, folder / "biomedclipcxr_518_checkpoint.pt")

    proj = {
        "base_model.model.model.mm_projector.0.weight": torch.randn(TEXT_HIDDEN, VISION_HIDDEN, generator=g) * 0.1,
        "base_model.model.model.mm_projector.0.bias": torch.randn(TEXT_HIDDEN, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.weight": torch.randn(TEXT_HIDDEN, TEXT_HIDDEN, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.bias": torch.randn(TEXT_HIDDEN, generator=g) * 0.1,
    }
    torch.save(proj, folder / "non_lora_trainables.bin")

    weights = load_file(str(next(base.glob("*.safetensors"))))
    lora = {}
    for i in range(TEXT_LAYERS):
        for name in LORA_TARGETS:
            sub = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            w = weights[f"model.layers.{i}.{sub}.{name}.weight"]
            key = f"base_model.model.model.layers.{i}.{sub}.{name}"
            lora[f"{key}.lora_A.weight"] = torch.randn(LORA_R, w.shape[1], generator=g) * 0.1
            lora[f"{key}.lora_B.weight"] = torch.randn(w.shape[0], LORA_R, generator=g) * 0.1
    if adapter_format == "bin":
        torch.save(lora, folder / "adapter_model.bin")
    else:
        save_file(lora, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.05, "bias": "none",
        "target_modules": list(LORA_TARGETS), "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "modules_to_save": None}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": TEXT_HIDDEN,
        "mm_hidden_size": VISION_HIDDEN, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_vision_tower": "biomedclip_cxr_518", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "vocab_size": 300}))
    return folder
