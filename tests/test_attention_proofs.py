"""The attention maps are right by construction: captured columns, patch order, image placement,
rollout and gradient-weighted attention against direct computations, and a model forced to look
at one patch."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from llavarad import attention
from llavarad._attention_render import overlay
from llavarad.attention import (
    DEFAULT_METHOD,
    downsample_mask,
    explain,
    group_words,
    image_box,
    mass_inside,
    pointing_hit,
)
from llavarad.model.processor import pixel_values_for, tokenize_prompt
from llavarad.prompts.model import build_prompt


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    return Image.fromarray((rng.random((70, 90)) * 255).astype("uint8"))


def _full_sequence(bundle, image, expl):
    ids = tokenize_prompt(bundle.tokenizer, build_prompt(bundle.prompt_format, indication="Cough.").prompt,
                          bundle.num_image_tokens, bundle.image_token_id)
    img_cols = [i for i, t in enumerate(ids) if t == bundle.image_token_id]
    full = torch.tensor([ids + expl.token_ids[:-1]])
    queries = [len(ids) - 1 + k for k in range(len(expl.token_ids))]
    pv = pixel_values_for([image], bundle.image_processor, bundle.image_aspect_ratio)
    return full, pv, img_cols, queries


def _eager_forward(model, **kwargs):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        return model(**kwargs)
    finally:
        model.set_attn_implementation(before)


def test_words_slice_the_text_and_get_their_own_tokens_maps(tiny_bundle, image):
    text, words = group_words(tiny_bundle.tokenizer, tiny_bundle.tokenizer(" The heart", add_special_tokens=False).input_ids)
    assert text == "The heart" and [(w["start"], w["end"]) for w in words] == [(0, 3), (4, 9)]
    expl = explain(tiny_bundle, image, "Cough.", max_new_tokens=16)
    assert expl.words and expl.text == expl.text.strip()
    for i, w in enumerate(expl.words):
        assert expl.text[w["start"]:w["end"]] == w["word"]
        assert w["word"] in tiny_bundle.tokenizer.decode([expl.token_ids[t] for t in w["tokens"]])
        assert np.allclose(expl.word_maps[i].reshape(-1), expl.token_maps[w["tokens"]].mean(axis=0))
    assert expl.method == DEFAULT_METHOD and np.array_equal(expl.token_maps, expl.method_maps[DEFAULT_METHOD])


def test_captured_columns_rollout_and_gradients_equal_a_full_forward(tiny_bundle, image, monkeypatch):
    """(a) The per-step capture equals a full forward with output_attentions over the same sequence,
    indexed at the image token positions; rollout and grad-attention equal direct computations."""
    expl = explain(tiny_bundle, image, "Cough.", max_new_tokens=8, method="layer",
                   extra_methods=("rollout", "grad-attention", "mean-layers", "max-over-layers"))
    full, pv, cols, queries = _full_sequence(tiny_bundle, image, expl)
    with torch.no_grad():
        att = [a[0].float() for a in _eager_forward(tiny_bundle.model, input_ids=full, pixel_values=pv,
                                                    output_attentions=True).attentions]
    for k, q in enumerate(queries):
        for layer, a in enumerate(att):
            assert np.allclose(expl.token_layer_maps[k, layer], a[:, q, cols].mean(0).numpy(), atol=1e-5)
        assert np.allclose(expl.token_head_maps[k], att[expl.layer][:, q, cols].numpy(), atol=1e-5)
    rollout = torch.eye(full.shape[1])
    for a in att:  # R = A~_L ... A~_1 with A~ = (A_mean + I) / 2
        rollout = (0.5 * a.mean(0) + 0.5 * torch.eye(full.shape[1])) @ rollout
    assert np.allclose(expl.method_maps["rollout"], rollout[queries][:, cols].numpy(), atol=1e-5)
    out = _eager_forward(tiny_bundle.model, input_ids=full, pixel_values=pv, output_attentions=True)
    for k, q in enumerate(queries):  # one plain backward per token
        grads = torch.autograd.grad(out.logits[0, q, expl.token_ids[k]], out.attentions, retain_graph=True)
        want = torch.stack([(a[0, :, q, cols] * g[0, :, q, cols].clamp(min=0)).mean(0)
                            for a, g in zip(out.attentions, grads)]).mean(0)
        assert np.allclose(expl.method_maps["grad-attention"][k], want.detach().numpy(), atol=1e-6)
    assert np.allclose(expl.method_maps["mean-layers"], expl.token_layer_maps.mean(1))
    assert np.allclose(expl.method_maps["max-layers"], expl.token_layer_maps.max(1))
    for name, maps in expl.method_maps.items():
        assert np.allclose(expl.word_maps_for(name).reshape(len(expl.words), -1),
                           np.stack([maps[w["tokens"]].mean(0) for w in expl.words]))
    assert np.array_equal(expl.word_maps_for("layer"), expl.word_maps)
    with pytest.raises(KeyError, match="'layer-head' was not computed"):
        expl.word_maps_for("layer-head")
    alone = explain(tiny_bundle, image, "Cough.", max_new_tokens=8, method="rollout")
    assert alone.token_ids == expl.token_ids and np.allclose(alone.word_maps, expl.word_maps_for("rollout"))
    monkeypatch.setattr(attention, "_GRAD_BYTES", 1)  # one token per backward chunk: the same maps
    chunked = explain(tiny_bundle, image, "Cough.", max_new_tokens=8, method="grad-attention")
    assert np.allclose(chunked.token_maps, expl.method_maps["grad-attention"], atol=1e-7)


def test_patch_embeddings_are_row_major(tiny_bundle):
    """(b) Content only in patch (r, c) changes only image feature r*G + c (CLS dropped)."""
    model = copy.deepcopy(tiny_bundle.model)
    grid, patch = tiny_bundle.preset.grid_size, tiny_bundle.preset.vision["patch_size"]
    r, c = 1, 3
    base = torch.zeros(1, 3, grid * patch, grid * patch)
    marked = base.clone()
    marked[..., r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 1.0
    emb = model.model.vision_tower.embeddings
    with torch.no_grad():
        changed = (emb(marked) - emb(base)).abs().sum(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [1 + r * grid + c]  # token 0 is CLS
    # the whole image path with the tower's layers made identities (layer scales 0): feature r*G+c only
    for layer in model.model.vision_tower.encoder.layer:
        layer.layer_scale1.lambda1.data.zero_()
        layer.layer_scale2.lambda1.data.zero_()
    assert model.config.vision_feature_select_strategy == "default"
    with torch.no_grad():
        feats = [model.get_image_features(pixel_values=x, vision_feature_layer=model.config.vision_feature_layer,
                                          vision_feature_select_strategy="default") for x in (base, marked)]
    feats = [f.pooler_output if hasattr(f, "pooler_output") else f for f in feats]
    feats = [torch.cat(list(f)) if isinstance(f, (list, tuple)) else f for f in feats]
    diff = (feats[1].reshape(-1, feats[1].shape[-1]) - feats[0].reshape(-1, feats[0].shape[-1])).abs().sum(-1)
    assert diff.shape[0] == grid * grid and (diff > 1e-6).nonzero().flatten().tolist() == [r * grid + c]


@pytest.mark.parametrize("size", [(90, 70), (70, 90), (74, 70), (56, 56)])
def test_grid_cells_land_on_the_centre_crop_in_original_coordinates(tiny_bundle, size):
    """(c) A dot drawn at grid cell (r, c) of image_box is brightest in processed cell (r, c);
    downsample_mask and overlay place the same cell there."""
    w, h = size
    grid, patch = tiny_bundle.preset.grid_size, tiny_bundle.preset.vision["patch_size"]
    box = image_box(size, tiny_bundle.image_processor, "crop")
    if w != h:
        assert box != (0.0, 0.0, 1.0, 1.0)
    for r, c in [(0, 3), (2, 1), (3, 0)]:
        x = (box[0] + (c + 0.5) * (box[2] - box[0]) / grid) * w
        y = (box[1] + (r + 0.5) * (box[3] - box[1]) / grid) * h
        px = np.zeros((h, w), np.uint8)
        px[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 255
        pv = pixel_values_for([Image.fromarray(px)], tiny_bundle.image_processor, "crop")[0, 0].numpy()
        cells = pv.reshape(grid, patch, grid, patch).mean(axis=(1, 3))
        assert np.unravel_index(cells.argmax(), cells.shape) == (r, c)
        assert downsample_mask(px, grid, box).nonzero() == (np.array([r]), np.array([c]))
        one_hot = np.zeros((grid, grid))
        one_hot[r, c] = 1
        ov = np.asarray(overlay(Image.new("RGB", size), one_hot, alpha=1.0, box=box)).sum(-1)
        yy, xx = np.unravel_index(ov.argmax(), ov.shape)
        assert abs(xx - x) <= (box[2] - box[0]) * w / grid / 2 + 1 and abs(yy - y) <= (box[3] - box[1]) * h / grid / 2 + 1
    ov = np.asarray(overlay(Image.new("RGB", size), np.ones((grid, grid)), alpha=1.0, box=(0.25, 0.0, 0.75, 1.0)))
    assert ov[:, : int(0.25 * w) - 1].sum() == 0 and ov[:, int(0.75 * w) + 1:].sum() == 0  # outside the crop: untouched


def test_padded_images_put_the_grid_on_the_padded_square(tiny_bundle):
    assert image_box((100, 50), tiny_bundle.image_processor, "pad") == (0.0, -0.5, 1.0, 1.5)
    mask = np.zeros((50, 100), np.uint8)
    mask[:, :] = 1
    region = downsample_mask(mask, 4, (0.0, -0.5, 1.0, 1.5))
    assert region[1:3].all() and not region[0].any() and not region[3].any()
    overlay(Image.new("RGB", (100, 50)), np.eye(4), box=(0.0, -0.5, 1.0, 1.5))  # pastes beyond the image edge


def _forced_bundle(bundle, feature_index: int):
    """A copy of ``bundle`` whose layer 0 attends from every text token to image token ``feature_index``.

    Coordinate ``a`` of every token embedding is 1 and coordinate ``b`` is 0; the projector output
    is 0 in ``b`` except for the chosen image token (8). Layer 0's queries read ``a`` and its keys
    read ``b`` into the last dimension of each head, whose rotary frequency is the lowest
    (rotation < 0.05 rad over the sequence), so every text query's logit to that image key is
    about 30 * 8 * 8 / 4 and every other key's is 0.
    """
    model = copy.deepcopy(bundle.model)
    lm = model.model.language_model
    cfg = model.config.text_config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    a, b = 0, 1
    with torch.no_grad():
        lm.embed_tokens.weight[:, a] = 1.0
        lm.embed_tokens.weight[:, b] = 0.0
        attn = lm.layers[0].self_attn
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        for h in range(cfg.num_attention_heads):
            attn.q_proj.weight[h * head_dim + head_dim - 1, a] = 30.0
            attn.k_proj.weight[h * head_dim + head_dim - 1, b] = 1.0
        model.lm_head.weight[bundle.tokenizer.eos_token_id] = 0.0

    def mark(_module, _args, output):
        output = output.clone()
        output[..., b] = 0.0
        output[:, feature_index, b] = 8.0
        return output

    model.model.multi_modal_projector.register_forward_hook(mark)
    return dataclasses.replace(bundle, model=model)


def test_a_model_forced_onto_one_patch_gives_a_map_peaked_there(tiny_bundle, image):
    """(d) Attention forced onto patch (r, c) by construction: the map peaks at [r, c] and the
    pointing and mass metrics say so."""
    grid = tiny_bundle.preset.grid_size
    r, c = 2, 1
    forced = _forced_bundle(tiny_bundle, r * grid + c)
    expl = explain(forced, image, "Cough.", max_new_tokens=6, layer=0, method="layer")
    assert len(expl.token_ids) == 6  # (bytes, not words, from this model: the token maps are what is scored)
    assert (expl.token_maps.argmax(axis=1) == r * grid + c).all() and (expl.token_maps[:, r * grid + c] > 0.99).all()
    region = np.zeros((grid, grid), bool)
    region[r, c] = True
    for m in [*expl.token_maps.reshape(-1, grid, grid), *expl.word_maps]:
        assert pointing_hit(m, region) and mass_inside(m, region) > 0.99
        assert not pointing_hit(m, ~region) and mass_inside(m, ~region) < 0.01
    # the control: the unforced model's map is not peaked there
    plain = explain(tiny_bundle, image, "Cough.", max_new_tokens=6, layer=0, method="layer")
    assert plain.token_maps[:, r * grid + c].max() < 0.5


def test_tower_methods_carry_the_map_back_through_the_tower_rollout(tiny_bundle, image):
    """``+tower``: the image-token map times the tower's rollout up to vision_feature_layer, computed
    here directly from the tower's own attention outputs."""
    expl = explain(tiny_bundle, image, "Cough.", max_new_tokens=6, method="layer",
                   extra_methods=("layer+tower", "rollout+tower", "rollout"))
    tower = tiny_bundle.model.model.vision_tower
    pv = pixel_values_for([image], tiny_bundle.image_processor, tiny_bundle.image_aspect_ratio)
    with torch.no_grad():
        att = _eager_forward(tower, pixel_values=pv, output_attentions=True).attentions
    used = len(att) + 1 + tiny_bundle.model.config.vision_feature_layer
    assert 0 < used < len(att)
    rollout = torch.eye(att[0].shape[-1])
    for a in att[:used]:
        rollout = (0.5 * a[0].mean(0) + 0.5 * torch.eye(a.shape[-1])) @ rollout
    patches = rollout[1:, 1:].numpy()
    for name in ("layer", "rollout"):
        assert np.allclose(expl.method_maps[f"{name}+tower"], expl.method_maps[name] @ patches, atol=1e-6)
    assert np.allclose(expl.word_maps_for("layer+tower").reshape(len(expl.words), -1),
                       np.stack([expl.method_maps["layer+tower"][w["tokens"]].mean(0) for w in expl.words]))


def test_a_plain_prompt_that_ends_with_the_image_is_captured_too(tiny_bundle, image):
    """"plain" prompts end with the image tokens: the first token's row is the prompt's last row."""
    plain = dataclasses.replace(tiny_bundle, meta={**tiny_bundle.meta, "prompt_format": "plain"})
    ids = tokenize_prompt(plain.tokenizer, build_prompt("plain").prompt, plain.num_image_tokens, plain.image_token_id)
    expl = explain(plain, image, max_new_tokens=4)
    assert len(expl.token_ids) == 4
    full = torch.tensor([ids + expl.token_ids[:-1]])
    cols = [i for i, t in enumerate(ids) if t == plain.image_token_id]
    pv = pixel_values_for([image], plain.image_processor, plain.image_aspect_ratio)
    with torch.no_grad():
        att = _eager_forward(plain.model, input_ids=full, pixel_values=pv, output_attentions=True).attentions
    for k in range(4):
        want = torch.stack([a[0, :, len(ids) - 1 + k, cols].mean(0) for a in att]).numpy()
        assert np.allclose(expl.token_layer_maps[k], want, atol=1e-5)
