"""Word-level attention maps on the tiny model; grounding metrics on hand-built maps."""

import json

import numpy as np
import pytest
from PIL import Image

from llavarad.attention import (
    default_layer,
    downsample_mask,
    explain,
    group_words,
    mass_inside,
    pointing_hit,
)
from llavarad.cli import main
from llavarad.generate import generate_reports


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((80, 80)) * 255).astype("uint8"))


def test_default_layer_is_layer_20_of_32_by_relative_depth():
    assert default_layer(32) == 19 and default_layer(2) == 0 and default_layer(4) == 2 and default_layer(1) == 0


def test_explain_matches_greedy_generation_and_keeps_only_image_columns(tiny_bundle, image):
    before = tiny_bundle.model.config._attn_implementation
    expl = explain(tiny_bundle, image, "Cough.", max_new_tokens=12)
    assert expl.text == generate_reports(tiny_bundle, [image], ["Cough."], max_new_tokens=12)[0]
    n_tok = len(expl.token_ids)
    n_layers = tiny_bundle.model.config.text_config.num_hidden_layers
    n_heads = tiny_bundle.model.config.text_config.num_attention_heads
    assert expl.token_layer_maps.shape == (n_tok, n_layers, 16)
    assert expl.token_head_maps.shape == (n_tok, n_heads, 16)
    assert expl.word_maps.shape == (len(expl.words), 4, 4)
    # attention to the image columns is part of a softmax row: between 0 and 1 per head
    assert (expl.token_head_maps >= 0).all() and (expl.token_head_maps.sum(-1) <= 1 + 1e-5).all()
    # the model's own attention setting is restored
    assert tiny_bundle.model.config._attn_implementation == before
    other = explain(tiny_bundle, image, "Cough.", max_new_tokens=12, method="max-layers")
    assert np.allclose(other.word_maps.reshape(len(other.words), -1),
                       np.stack([other.token_layer_maps[w["tokens"]].max(axis=1).mean(axis=0) for w in other.words]))
    with pytest.raises(ValueError, match="needs --head"):
        explain(tiny_bundle, image, method="layer-head")
    with pytest.raises(ValueError, match="method 'saliency' must be one of"):
        explain(tiny_bundle, image, method="saliency")
    with pytest.raises(ValueError, match="layer 9 is outside"):
        explain(tiny_bundle, image, layer=9)


def test_word_grouping_on_a_known_sentence(tiny_bundle):
    tok = tiny_bundle.tokenizer
    text = "Small left pleural effusion. No pneumothorax."
    ids = tok(text, add_special_tokens=False).input_ids
    decoded, words = group_words(tok, ids)
    assert decoded == text
    assert [w["word"] for w in words] == ["Small", "left", "pleural", "effusion", "No", "pneumothorax"]
    # every token of a word decodes inside it; the words' tokens are disjoint and ordered
    flat = [t for w in words for t in w["tokens"]]
    assert flat == sorted(set(flat))
    for w in words:
        assert w["word"] in tok.decode([ids[t] for t in w["tokens"]])


def test_grounding_metrics_on_hand_built_maps():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:3, 0:3] = 255  # pixels 0..2 -> with grid 4 (2 px cells): cells (0,0),(0,1),(1,0),(1,1)
    region = downsample_mask(mask, 4)
    assert region.sum() == 4 and region[1, 1] and not region[2, 2]
    m = np.zeros((4, 4))
    m[1, 1], m[3, 3] = 0.6, 0.2
    assert pointing_hit(m, region) is True
    assert mass_inside(m, region) == pytest.approx(0.75)
    m[3, 3] = 0.9
    assert pointing_hit(m, region) is False
    assert mass_inside(np.zeros((4, 4)), region) == 0.0


def test_cli_writes_self_contained_page(tmp_path, tiny_model_dir, shared_data):
    out = tmp_path / "ex"
    img = shared_data / "images" / "00000001_000.png"
    assert main(["explain", str(img), "--model", str(tiny_model_dir), "--max-new-tokens", "8", "--method", "rollout",
                 "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and "<script src" not in page and "http" not in page.replace(
        "http-equiv", "")
    data = json.loads((out / "explanation.json").read_text())
    assert len(data["words"]) == len(list((out / "overlays").glob("*.png")))
    assert data["method"] == "rollout" and all(data["text"][w["start"]:w["end"]] == w["word"] for w in data["words"])
    assert main(["explain", str(tmp_path / "none.png"), "--model", str(tiny_model_dir), "--out", str(out)]) == 1
