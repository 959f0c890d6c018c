"""The stage-1 dual encoder: config checks, towers, folder round trip, and the contrastive loss
against a hand-written reference, including the multi-process gather path (2 gloo processes)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from llavarad.model.clip import (
    CLIP_CONFIG_FILE,
    ClipFolderError,
    CxrClip,
    CxrClipConfig,
    build_wordpiece_tokenizer,
    contrastive_loss,
    init_clip,
    load_clip,
    save_clip,
)
from llavarad.model.presets import load_preset

CORPUS = [
    "The heart size is normal. The lungs are clear.",
    "Moderate right pleural effusion. No pneumothorax.",
    "Large left pneumothorax with mediastinal shift.",
    "Endotracheal tube in place. Mild pulmonary edema.",
] * 5


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return init_clip(image_size=56, vision_config=load_preset("tiny").vision, corpus=CORPUS, tokenizer_vocab_size=200,
                     embed_dim=16, context_length=32, seed=0)


def _pixels(n: int, size: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_config_rejects_bad_values_all_at_once():
    with pytest.raises(ValueError) as exc:
        CxrClipConfig(image_size=0, embed_dim=-1, context_length=2, text_proj="conv", logit_scale_max=1.0,
                      image_pool="sum")
    msg = str(exc.value)
    for word in ("image_size", "embed_dim", "context_length", "text_proj", "logit_scale_max", "image_pool"):
        assert word in msg


def test_wordpiece_tokenizer_bert_layout():
    tok = build_wordpiece_tokenizer(CORPUS, vocab_size=150)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]
    ids = tok("Pleural EFFUSION")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "pleural effusion"  # lower-cased like BiomedBERT-uncased


def test_shapes_normalisation_and_heads(tiny_clip):
    clip = tiny_clip.eval()
    img = clip.encode_image(_pixels(3))
    txt = clip.encode_text(["normal heart", "left pneumothorax", "effusion"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert isinstance(clip, torch.nn.Module) and isinstance(clip, CxrClip)
    assert clip.config.vision_width == 32 and clip.config.text_width == 64
    # BiomedCLIP text head: Linear(d, (d+e)//2) -> GELU -> Linear(., e), no biases
    assert [m.weight.shape for m in clip.text_proj if isinstance(m, torch.nn.Linear)] == [(40, 64), (16, 40)]
    assert math.isclose(float(clip.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        clip.encode_text(["fine", None])


def test_context_length_truncates(tiny_clip):
    enc = tiny_clip.tokenize(["heart " * 200])
    assert enc["input_ids"].shape[1] == 32


def test_scale_is_clamped(tiny_clip):
    with torch.no_grad():
        old = tiny_clip.logit_scale.clone()
        tiny_clip.logit_scale.fill_(10.0)
        assert float(tiny_clip.scale()) == pytest.approx(100.0)
        tiny_clip.logit_scale.copy_(old)


def test_one_backward_reaches_every_trainable_parameter(tiny_clip):
    clip = tiny_clip.train()
    clip.zero_grad()
    enc = clip.tokenize(CORPUS[:4])
    img, txt, scale = clip(_pixels(4), enc["input_ids"], enc["attention_mask"])
    loss, stats = contrastive_loss(img, txt, scale)
    loss.backward()
    missing = [n for n, p in clip.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    assert stats["global_batch"] == 4
    assert not clip.vision.embeddings.mask_token.requires_grad  # unused in CLIP training: frozen for DDP
    clip.zero_grad()
    clip.eval()


def test_save_load_round_trip(tiny_clip, tmp_path):
    clip = tiny_clip.eval()
    save_clip(clip, tmp_path / "clip", train_config={"lr": 1e-3})
    for name in (CLIP_CONFIG_FILE, "heads.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors",
                 "text_encoder/config.json", "text_encoder/tokenizer.json"):
        assert (tmp_path / "clip" / name).is_file(), name
    meta = json.loads((tmp_path / "clip" / CLIP_CONFIG_FILE).read_text())
    assert meta["train_config"] == {"lr": 1e-3} and "torch" in meta["versions"]
    # the image encoder is a plain Dinov2 folder (the input of stage 2)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "clip" / "image_encoder").model_type == "dinov2"
    loaded = load_clip(tmp_path / "clip", device="cpu", dtype="float32")
    px = _pixels(2, seed=3)
    assert torch.allclose(loaded.encode_image(px), clip.encode_image(px), atol=1e-6)
    assert torch.allclose(loaded.encode_text(CORPUS[:2]), clip.encode_text(CORPUS[:2]), atol=1e-6)
    assert float(loaded.logit_scale.detach()) == pytest.approx(float(clip.logit_scale.detach()))


def test_save_clip_writes_a_given_state_dict_in_float32(tiny_clip, tmp_path):
    """A sharded run (ZeRO-3, FSDP) hands save_clip the engine's gathered state, often in bf16."""
    clip = tiny_clip.eval()
    state = {k: (v * 2 if k == "image_proj.weight" else v).to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in clip.state_dict().items()}
    save_clip(clip, tmp_path / "clip", state_dict=state)
    loaded = load_clip(tmp_path / "clip", device="cpu", dtype="float32")
    got = loaded.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert got[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype), key
        assert torch.equal(got[key], value.float() if value.is_floating_point() else value), key
    assert not torch.equal(got["image_proj.weight"], clip.state_dict()["image_proj.weight"].bfloat16().float())
    with pytest.raises(ClipFolderError, match="missing.*logit_scale"):
        save_clip(clip, tmp_path / "bad", state_dict={k: v for k, v in state.items() if k != "logit_scale"})


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_patch_pooling_uses_the_patch_tokens_and_survives_a_round_trip(tmp_path, pool):
    clip = init_clip(image_size=56, vision_config=load_preset("tiny").vision, corpus=CORPUS, tokenizer_vocab_size=200,
                     embed_dim=16, context_length=32, image_pool=pool, seed=0).eval()
    px = _pixels(3, seed=4)
    with torch.no_grad():
        tokens = clip.vision(pixel_values=px).last_hidden_state
        pooled = tokens[:, 1:].mean(dim=1) if pool == "mean" else tokens[:, 1:].amax(dim=1)
        expected = torch.nn.functional.normalize(clip.image_proj(pooled), dim=-1)
        from_cls = torch.nn.functional.normalize(clip.image_proj(tokens[:, 0]), dim=-1)
    got = clip.encode_image(px)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, from_cls, atol=1e-3)  # really not the CLS token
    save_clip(clip, tmp_path / "clip")
    loaded = load_clip(tmp_path / "clip", device="cpu", dtype="float32")
    assert loaded.config.image_pool == pool
    assert torch.allclose(loaded.encode_image(px), got, atol=1e-6)


def test_load_clip_errors_name_the_problem(tiny_clip, tmp_path):
    with pytest.raises(ClipFolderError, match="does not exist"):
        load_clip(tmp_path / "nowhere", device="cpu")
    tiny_clip.vision.save_pretrained(tmp_path / "bare")
    with pytest.raises(ClipFolderError, match="bare Dinov2 folder"):
        load_clip(tmp_path / "bare", device="cpu")
    save_clip(tiny_clip, tmp_path / "c")
    (tmp_path / "c" / CLIP_CONFIG_FILE).write_text("{not json")
    with pytest.raises(ClipFolderError, match="unreadable"):
        load_clip(tmp_path / "c", device="cpu")


def test_init_clip_rejects_wrong_folders(tmp_path):
    with pytest.raises(ClipFolderError, match="no config.json"):
        init_clip(image_size=56, vision_init=tmp_path, corpus=CORPUS)
    with pytest.raises(ClipFolderError, match="vision_config"):
        init_clip(image_size=56, corpus=CORPUS)


def _reference_loss(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """Symmetric InfoNCE written out with loops: mean over pairs of -log softmax, both ways, halved."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(img[i] @ txt[j]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        col = [scale * float(txt[i] @ img[j]) for j in range(n)]
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def test_loss_matches_hand_written_reference():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    loss, stats = contrastive_loss(img, txt, torch.tensor(14.0))
    assert float(loss) == pytest.approx(_reference_loss(img.numpy(), txt.numpy(), 14.0), rel=1e-5)
    # perfect alignment at a high scale: loss near 0, accuracy 1
    eye = torch.eye(6)
    loss2, stats2 = contrastive_loss(eye, eye, torch.tensor(100.0))
    assert float(loss2) < 1e-6 and stats2["acc_i2t"] == 1.0 and stats2["acc_t2i"] == 1.0


# ----- the gather path: 2 processes with gloo must give the loss and gradients of one big batch -----

_SIZES = (3, 5)  # unequal per-process batches (e.g. after an unreadable image) must also be exact


def _data():
    g = torch.Generator().manual_seed(7)
    n = sum(_SIZES)
    return torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)


def _worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    # a file rendezvous: no TCP port that another process could take between choosing and binding it
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        raw_img, raw_txt = _data()
        lo = sum(_SIZES[:rank])
        img = raw_img[lo:lo + _SIZES[rank]].clone().requires_grad_(True)
        txt = raw_txt[lo:lo + _SIZES[rank]].clone().requires_grad_(True)
        loss, _ = contrastive_loss(torch.nn.functional.normalize(img, dim=-1),
                                   torch.nn.functional.normalize(txt, dim=-1), torch.tensor(10.0))
        loss.backward()
        # DDP averages parameter gradients over processes: emulate that on the inputs' gradients.
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save({"loss": float(mean_loss) / world, "g_img": img.grad / world, "g_txt": txt.grad / world},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_per_process_shares_average_to_the_global_loss_and_gradients():
    """In-process check of the weighting: processes holding 3 and 5 pairs, each scoring its rows
    against all 8 columns, average (as DDP does) to the loss and gradients of one 8 x 8 batch."""
    from llavarad.model.contrastive import _local_loss

    raw_img, raw_txt = _data()
    img, txt = raw_img.clone().requires_grad_(True), raw_txt.clone().requires_grad_(True)
    ni, nt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    shares = []
    for rank in range(2):
        lo = sum(_SIZES[:rank])
        sl = slice(lo, lo + _SIZES[rank])
        shares.append(_local_loss(ni[sl], nt[sl], ni, nt, lo, 2, torch.tensor(10.0))[0])
    emulated = torch.stack(shares).mean()
    emulated.backward()
    g_img, g_txt = img.grad.clone(), txt.grad.clone()
    img.grad = txt.grad = None
    full, _ = contrastive_loss(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                               torch.tensor(10.0))
    full.backward()
    assert float(emulated.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
    assert float(full.detach()) == pytest.approx(_reference_loss(torch.nn.functional.normalize(raw_img, dim=-1).numpy(),
                                                        torch.nn.functional.normalize(raw_txt, dim=-1).numpy(), 10.0),
                                        rel=1e-5)
    assert torch.allclose(g_img, img.grad, atol=1e-7) and torch.allclose(g_txt, txt.grad, atol=1e-7)


# two spawned Python processes: ~3 s on an idle machine
def test_gather_with_grad_equals_one_big_batch(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    raw_img, raw_txt = _data()
    img, txt = raw_img.clone().requires_grad_(True), raw_txt.clone().requires_grad_(True)
    loss, _ = contrastive_loss(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                               torch.tensor(10.0))
    loss.backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert parts[0]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert torch.allclose(torch.cat([p["g_img"] for p in parts]), img.grad, atol=1e-6)
    assert torch.allclose(torch.cat([p["g_txt"] for p in parts]), txt.grad, atol=1e-6)


def test_config_reports_a_hidden_size_for_deepspeed_auto_buckets():
    """The HF Trainer fills DeepSpeed's `auto` bucket sizes from model.config.hidden_size (ZeRO-3
    refuses to start without it): the dual encoder's config gives its widest part."""
    from llavarad.model.clip import CxrClipConfig

    cfg = CxrClipConfig(embed_dim=64, vision_width=96, text_width=80)
    assert cfg.hidden_size == 96
    assert CxrClipConfig(embed_dim=512, vision_width=0, text_width=0).hidden_size == 512
