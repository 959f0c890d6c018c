"""Collator and label masking: exact, hand-checked positions; no silent truncation or masking."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llavarad.model.processor import IGNORE_INDEX, encode_example, tokenize_prompt  # noqa: E402
from llavarad.prompts.model import V1_SYSTEM  # noqa: E402
from llavarad.train.collator import CollateError, LlavaCollator  # noqa: E402


def _item(enc, pixels, name="x"):
    return {"id": name, "input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
            "pixel_values": pixels}


def _encode(bundle, fmt, findings, indication="Cough."):
    return encode_example(bundle.tokenizer, fmt, indication=indication, findings=findings,
                          num_image_tokens=bundle.num_image_tokens, image_token_id=bundle.image_token_id)


def test_v1_labels_cover_exactly_findings_and_eos(tiny_bundle):
    tok = tiny_bundle.tokenizer
    enc = _encode(tiny_bundle, "v1", "Clear lungs.")
    prompt = f"{V1_SYSTEM} USER: <image>\nProvide a description of the findings in the radiology image given the " \
             "following indication: Cough. ASSISTANT:"
    prompt_ids = tokenize_prompt(tok, prompt, tiny_bundle.num_image_tokens, tiny_bundle.image_token_id)
    target_ids = tok(" Clear lungs.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc.input_ids == prompt_ids + target_ids
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + target_ids
    supervised = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(supervised) == " Clear lungs.</s>"


def test_plain_labels_skip_bos_and_image_and_have_no_eos(tiny_bundle):
    tok = tiny_bundle.tokenizer
    enc = _encode(tiny_bundle, "plain", "Clear lungs.", indication="ignored in stage 2")
    n_img = tiny_bundle.num_image_tokens
    assert enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids[1:1 + n_img] == [tiny_bundle.image_token_id] * n_img
    assert enc.labels[:1 + n_img] == [IGNORE_INDEX] * (1 + n_img)
    assert tok.decode(enc.labels[1 + n_img:]) == "Clear lungs.\n"
    assert tok.eos_token_id not in enc.labels


def test_collator_right_pads_and_masks_padding(tiny_bundle):
    s = tiny_bundle.preset.image_size
    short = _encode(tiny_bundle, "v1", "Clear.")
    long = _encode(tiny_bundle, "v1", "Small left pleural effusion with adjacent atelectasis.")
    pix = torch.randn(3, s, s)
    coll = LlavaCollator(pad_token_id=0, image_token_id=tiny_bundle.image_token_id,
                         num_image_tokens=tiny_bundle.num_image_tokens)
    batch = coll([_item(short, pix, "a"), _item(long, pix * 2, "b")])
    n_s, n_l = len(short), len(long)
    assert batch["input_ids"].shape == (2, n_l)
    assert batch["input_ids"][0, :n_s].tolist() == short.input_ids
    assert batch["input_ids"][0, n_s:].tolist() == [0] * (n_l - n_s)
    assert batch["labels"][0, :n_s].tolist() == short.labels
    assert batch["labels"][0, n_s:].tolist() == [IGNORE_INDEX] * (n_l - n_s)
    assert batch["attention_mask"].tolist() == [[1] * n_s + [0] * (n_l - n_s), [1] * n_l]
    assert batch["labels"][1].tolist() == long.labels
    assert batch["pixel_values"].shape == (2, 3, s, s)
    assert torch.equal(batch["pixel_values"][1], pix * 2)
    padded = LlavaCollator(0, tiny_bundle.image_token_id, tiny_bundle.num_image_tokens, pad_to_multiple_of=64)
    assert padded([_item(short, pix)])["input_ids"].shape[1] % 64 == 0


def test_model_loss_equals_cross_entropy_on_target_tokens_only(tiny_bundle):
    """The collated labels make the HF model's loss exactly the CE of the findings + EOS tokens."""
    s = tiny_bundle.preset.image_size
    a = _encode(tiny_bundle, "v1", "Clear.")
    b = _encode(tiny_bundle, "v1", "Mild cardiomegaly.")
    coll = LlavaCollator(0, tiny_bundle.image_token_id, tiny_bundle.num_image_tokens)
    torch.manual_seed(0)
    batch = coll([_item(a, torch.randn(3, s, s)), _item(b, torch.randn(3, s, s))])
    model = tiny_bundle.model
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert int(keep.sum()) == (len(a) - a.labels.count(IGNORE_INDEX)) + (len(b) - b.labels.count(IGNORE_INDEX))
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_collator_rejects_wrong_image_token_count_and_misplaced_loss(tiny_bundle):
    s = tiny_bundle.preset.image_size
    enc = _encode(tiny_bundle, "v1", "Clear.")
    pix = torch.zeros(3, s, s)
    coll = LlavaCollator(0, tiny_bundle.image_token_id, tiny_bundle.num_image_tokens + 1)
    with pytest.raises(CollateError, match="'rec-7'.*image tokens"):
        coll([_item(enc, pix, "rec-7")])
    coll = LlavaCollator(0, tiny_bundle.image_token_id, tiny_bundle.num_image_tokens)
    bad = _item(enc, pix, "rec-8")
    bad["labels"] = bad["input_ids"].clone()
    with pytest.raises(CollateError, match="'rec-8'.*mis-masked"):
        coll([bad])
    short = _item(enc, pix, "rec-9")
    short["labels"] = short["labels"][:-1]
    with pytest.raises(CollateError, match="'rec-9'"):
        coll([short])
