"""The released BiomedCLIP-CXR checkpoint -> a full CLIP folder (both towers) for retrieval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llavarad.cli import main
from llavarad.model._convert_testing import timm_trunk
from llavarad.model._convert_vision import ConversionError

E, TEXT_W, HIDDEN = 24, 48, 36  # shared space, BERT width, MLP head width (tiny stand-ins for 512, 768, 640)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from llavarad.model.clip import build_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("biomedclip")
    tok = build_wordpiece_tokenizer(["no pleural effusion", "small left pneumothorax", "the heart is enlarged"] * 5,
                                    vocab_size=120, context_length=32)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=TEXT_W, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    base = root / "biomedbert"
    bert.save_pretrained(base)
    tok.save_pretrained(base)
    trunk = timm_trunk(seed=3)
    vision_w = trunk["cls_token"].shape[-1]
    g = torch.Generator().manual_seed(1)
    state = {f"module.visual.trunk.{k}": v for k, v in trunk.items()}
    state["module.visual.head.proj.weight"] = torch.randn(E, vision_w, generator=g) * 0.2
    state.update({f"module.text.transformer.{k}": v for k, v in bert.state_dict().items()})
    state["module.text.proj.0.weight"] = torch.randn(HIDDEN, TEXT_W, generator=g) * 0.2
    state["module.text.proj.2.weight"] = torch.randn(E, HIDDEN, generator=g) * 0.2
    state["module.logit_scale"] = torch.tensor(4.2)
    release = root / "release"
    release.mkdir()
    torch.save({"epoch": 3, "state_dict": state}, release / "biomedclipcxr_518_checkpoint.pt")
    return release, base, bert, state


def test_converted_towers_and_heads_equal_an_independent_forward(fake, tmp_path):
    from transformers import AutoTokenizer

    from llavarad.model._convert_clip import convert_biomedclip
    from llavarad.model.clip import load_clip

    release, base, bert, state = fake
    out = convert_biomedclip(release, base, tmp_path / "clip", num_attention_heads=2)
    clip = load_clip(out, device="cpu", dtype="float32")
    assert float(clip.logit_scale.detach()) == pytest.approx(4.2)

    texts = ["small left pneumothorax", "no pleural effusion"]
    tok = AutoTokenizer.from_pretrained(base)
    enc = tok(texts, padding=True, return_tensors="pt")
    bert.eval()  # no dropout in the reference
    with torch.no_grad():
        cls = bert(**enc).last_hidden_state[:, 0]
        ref = torch.nn.functional.gelu(cls @ state["module.text.proj.0.weight"].T) @ state["module.text.proj.2.weight"].T
    ref = torch.nn.functional.normalize(ref, dim=-1)
    torch.testing.assert_close(clip.encode_text(texts), ref, atol=1e-5, rtol=1e-4)

    img = Image.fromarray((np.random.default_rng(0).random((70, 70)) * 255).astype("uint8"))
    pv = clip.image_processor(images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = clip.vision(pixel_values=pv).pooler_output  # CLS after the final norm
        ref_img = torch.nn.functional.normalize(pooled @ state["module.visual.head.proj.weight"].T, dim=-1)
    torch.testing.assert_close(clip.encode_image(pv), ref_img, atol=1e-5, rtol=1e-4)


def test_leftover_and_missing_keys_are_named(fake, tmp_path):
    from llavarad.model._convert_clip import split_biomedclip

    _, _, _, state = fake
    bad = dict(state)
    bad["module.visual.extra_thing"] = torch.zeros(1)
    del bad["module.logit_scale"]
    with pytest.raises(ConversionError, match="missing \\['logit_scale'\\].*module.visual.extra_thing"):
        split_biomedclip({"state_dict": bad}, "ckpt.pt")


def test_cli_convert_clip_then_retrieval(fake, tmp_path):
    release, base, _, _ = fake
    out = tmp_path / "clip"
    assert main(["convert", "--release", str(release), "--clip", "--out", str(out)]) != 0  # needs --text-base
    assert main(["convert", "--release", str(release), "--clip", "--text-base", str(base), "--out", str(out),
                 "--preset", "tiny"]) == 0  # the fake trunk is tiny-width (2 heads)
    rng = np.random.default_rng(1)
    rows = []
    (tmp_path / "img").mkdir()
    for i, text in enumerate(["small left pneumothorax", "no pleural effusion", "the heart is enlarged"]):
        Image.fromarray((rng.random((64, 64)) * 255).astype("uint8")).save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"img/{i}.png", "dataset": "t", "split": "test", "findings": text})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["retrieval", str(manifest), "--encoder", str(out), "--out", str(tmp_path / "ret")]) == 0
    assert any((tmp_path / "ret").iterdir())


def test_text_base_of_another_width_is_a_clear_error(fake, tmp_path):
    from transformers import BertConfig, BertModel

    from llavarad.model.convert import convert_biomedclip

    release, base, _, _ = fake
    other = tmp_path / "other-bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(other)
    with pytest.raises(ConversionError, match="text tower.*BiomedBERT"):
        convert_biomedclip(release, other, tmp_path / "clip", num_attention_heads=2)
    with pytest.raises(ConversionError, match="no config.json"):
        convert_biomedclip(release, tmp_path / "nowhere", tmp_path / "clip2", num_attention_heads=2)
