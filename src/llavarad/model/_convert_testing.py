"""A fake ``microsoft/llava-rad`` release and a fake Vicuna folder for tests and benchmarks of the converter.

Random weights with exactly the released file names and key layouts: timm ViT trunk under
``module.visual.trunk`` (fused qkv, LayerScale ``gamma``, ``pos_embed`` with 1 + grid^2 positions) next
to text-tower keys, projector ``mm_projector.{0,2}``, an unmerged peft LoRA on q/k/v/o/gate/up/down.
The vision tower matches the ``tiny`` preset (56 px, width 32, 2 heads, 2 blocks).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["make_fake_release", "make_fake_vicuna", "timm_trunk"]

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


def make_fake_vicuna(folder: Path, seed: int = 1, *, hidden: int = TEXT_HIDDEN, layers: int = TEXT_LAYERS,
                     heads: int = TEXT_HEADS, intermediate: int = TEXT_FF, vocab_size: int | None = None,
                     dtype: torch.dtype = torch.float32, max_shard_size: str = "5GB") -> Path:
    """A LlamaForCausalLM (tiny by default) with the project's tiny tokenizer, saved like a hub folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavarad.model.tokenizer import build_tokenizer

    tok = build_tokenizer(vocab_size=300)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    tok.save_pretrained(folder)
    return folder


def make_fake_release(folder: Path, base: Path, seed: int = 2, *, adapter_format: str = "bin") -> Path:
    """The release files for the LM in ``base`` (its width sizes the projector and the LoRA)."""
    from transformers import AutoConfig

    from safetensors import safe_open
    from safetensors.torch import save_file

    text_hidden = int(AutoConfig.from_pretrained(base).hidden_size)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    state = {f"module.visual.trunk.{k}": v for k, v in timm_trunk(seed).items()}
    # open_clip keeps the CLIP head and the text tower in the same file: the converter ignores them
    state["module.visual.head.proj.weight"] = torch.randn(16, VISION_HIDDEN, generator=g)
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.randn(50, 16, generator=g)
    state["module.logit_scale"] = torch.tensor(4.6)
    torch.save({"epoch": 3, "name": "biomedclipcxr_518", "state_dict": state}, folder / "biomedclipcxr_518_checkpoint.pt")

    proj = {
        "base_model.model.model.mm_projector.0.weight": torch.randn(text_hidden, VISION_HIDDEN, generator=g) * 0.1,
        "base_model.model.model.mm_projector.0.bias": torch.randn(text_hidden, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.weight": torch.randn(text_hidden, text_hidden, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.bias": torch.randn(text_hidden, generator=g) * 0.1,
    }
    torch.save(proj, folder / "non_lora_trainables.bin")

    shapes = {}
    for shard in sorted(base.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            shapes.update({k: fh.get_slice(k).get_shape() for k in fh.keys()})  # noqa: SIM118
    lora = {}
    for name, shape in sorted(shapes.items()):
        parts = name.split(".")
        if len(parts) < 5 or parts[-2] not in LORA_TARGETS or parts[-1] != "weight":
            continue
        key = "base_model.model." + name.removesuffix(".weight")
        lora[f"{key}.lora_A.weight"] = torch.randn(LORA_R, shape[1], generator=g) * 0.1
        lora[f"{key}.lora_B.weight"] = torch.randn(shape[0], LORA_R, generator=g) * 0.1
    if adapter_format == "bin":
        torch.save(lora, folder / "adapter_model.bin")
    else:
        save_file(lora, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.05, "bias": "none",
        "target_modules": list(LORA_TARGETS), "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "modules_to_save": None}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": text_hidden,
        "mm_hidden_size": VISION_HIDDEN, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_vision_tower": "biomedclip_cxr_518", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False}))
    return folder
