import json

import pytest

from llavarad.model.presets import ModelPreset, PresetError, list_presets, load_preset


def test_every_shipped_preset_loads_and_builds_a_config():
    from llavarad.model.build import build_llava_config

    names = list_presets()
    assert {"llava-rad-7b", "tiny", "phantom"} <= set(names)
    for name in names:
        p = load_preset(name)
        cfg = build_llava_config(p, vocab_size=600, image_token_id=599, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        assert cfg.vision_config.model_type == "dinov2"
        assert cfg.text_config.model_type == "llama"
        assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
        assert cfg.image_seq_length == p.num_image_tokens


def test_llava_rad_7b_is_the_released_shape():
    p = load_preset("llava-rad-7b")
    assert p.image_size == 518 and p.grid_size == 37 and p.num_image_tokens == 1369
    v, t = p.vision, p.text
    assert (v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"], v["patch_size"]) == (768, 12, 12, 14)
    assert v["layerscale_value"] == 1.0 and v["mlp_ratio"] == 4
    assert (t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["num_attention_heads"]) == (4096, 11008, 32, 32)
    assert t["vocab_size"] == 32000 and t["max_position_embeddings"] == 4096
    assert p.projector_hidden_act == "gelu" and p.prompt_format == "v1"


def test_bad_presets(tmp_path):
    with pytest.raises(PresetError, match="unknown preset 'nope'"):
        load_preset("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "image_size": 50, "vision": {"hidden_size": 8, "num_hidden_layers": 1,
                                "num_attention_heads": 1, "patch_size": 14}, "text": {}}))
    with pytest.raises(PresetError) as err:
        load_preset(bad)
    assert "multiple of patch_size" in str(err.value) and "text.hidden_size is missing" in str(err.value)
    assert isinstance(load_preset(tmp_path / "bad.json" if False else "tiny"), ModelPreset)
