"""The HF-native model: config, vision features, save/load, init from parts."""

import json

import pytest
import torch

from llavarad.model.build import (
    META_FILE,
    ModelFolderError,
    init_from_parts,
    load_model,
    resolve_device_dtype,
    save_model,
)
from llavarad.model.processor import encode_example, pixel_values_for
from llavarad.prompts.model import build_prompt


def _batch(bundle, n=2):
    from PIL import Image

    imgs = [Image.new("L", (70, 60), color=40 * (i + 1)) for i in range(n)]
    exs = [encode_example(bundle.tokenizer, "v1", indication="Cough.", findings="Clear lungs.",
                          num_image_tokens=bundle.num_image_tokens, image_token_id=bundle.image_token_id)
           for _ in range(n)]
    return (torch.tensor([e.input_ids for e in exs]), torch.tensor([e.labels for e in exs]),
            pixel_values_for(imgs, bundle.image_processor))


def test_tiny_forward_backward_reaches_every_component():
    from llavarad.model.build import init_random

    bundle = init_random("tiny", seed=1)
    model = bundle.model
    model.train()
    ids, labels, pv = _batch(bundle)
    out = model(input_ids=ids, pixel_values=pv, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for part in (model.model.vision_tower, model.model.multi_modal_projector, model.model.language_model):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_image_features_are_block_n_minus_1_without_cls(tiny_bundle):
    model = tiny_bundle.model
    pv = torch.randn(2, 3, 56, 56)
    vt = model.model.vision_tower
    with torch.no_grad():
        hidden = vt.embeddings(pv)
        for layer in vt.encoder.layer[:-1]:
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        expected = model.model.multi_modal_projector(hidden[:, 1:])
        feats = model.model.get_image_features(pixel_values=pv, vision_feature_layer=-2,
                                               vision_feature_select_strategy="default").pooler_output
    got = torch.stack(list(feats))
    assert got.shape == (2, tiny_bundle.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(got, expected)
    proj = model.model.multi_modal_projector
    assert isinstance(proj.act, torch.nn.GELU) or "gelu" in type(proj.act).__name__.lower()


def test_folder_is_self_describing_and_loads_with_plain_hf(tiny_bundle, tiny_model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "chat_template.jinja", META_FILE} <= names
    meta = json.loads((tiny_model_dir / META_FILE).read_text())
    assert meta["preset"]["name"] == "tiny" and meta["prompt_format"] == "v1"
    assert meta["num_image_tokens"] == 16 and "transformers" in meta["versions"]
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    for (k, a), b in zip(hf.state_dict().items(), tiny_bundle.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": build_prompt("v1").prompt.split(
        "<image>\n")[1].removesuffix(" ASSISTANT:")}]}]
    rendered = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == build_prompt("v1").prompt
    loaded = load_model(tiny_model_dir, device="cpu")
    assert loaded.image_token_id == tiny_bundle.image_token_id and loaded.prompt_format == "v1"


def test_load_errors_name_the_problem(tmp_path, tiny_model_dir):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="not a llavarad model folder"):
        load_model(tmp_path / "empty")


def test_device_dtype_resolution():
    dev, dt = resolve_device_dtype("cpu", "auto")
    assert dev.type == "cpu" and dt == torch.float32
    with pytest.raises(ValueError, match="float16 on CPU"):
        resolve_device_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="not one of"):
        resolve_device_dtype("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device_dtype("cuda", "auto")


def test_init_from_parts_copies_encoder_and_lm(tmp_path):
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from llavarad.model.tokenizer import build_tokenizer

    torch.manual_seed(0)
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                      image_size=56, patch_size=14))
    vision.save_pretrained(tmp_path / "vision")
    tok = build_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    bundle = init_from_parts(tmp_path / "vision", tmp_path / "lm", preset="tiny")
    m = bundle.model
    torch.testing.assert_close(m.model.vision_tower.encoder.layer[1].mlp.fc2.weight, vision.encoder.layer[1].mlp.fc2.weight)
    torch.testing.assert_close(m.model.language_model.layers[0].self_attn.q_proj.weight,
                               lm.model.layers[0].self_attn.q_proj.weight)
    assert m.model.multi_modal_projector.linear_1.weight.shape == (48, 32)
    assert m.get_input_embeddings().weight.shape[0] == len(bundle.tokenizer) == len(tok) + 1
    assert bundle.prompt_format == "plain"
    save_model(bundle, tmp_path / "out")
    assert load_model(tmp_path / "out").num_image_tokens == 16
