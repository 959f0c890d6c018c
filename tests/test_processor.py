"""Prompt strings, token ids and image preprocessing, checked against independent references."""

import numpy as np
import pytest
from PIL import Image

from llavarad.model.processor import (
    CLIP_MEAN,
    CLIP_STD,
    IGNORE_INDEX,
    SequenceTooLongError,
    build_image_processor,
    encode_example,
    pixel_values_for,
    tokenize_prompt,
)
from llavarad.model.tokenizer import add_image_token, build_tokenizer
from llavarad.prompts.model import build_prompt, question_for

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def test_v1_and_plain_prompt_strings_are_the_released_ones():
    parts = build_prompt("v1", indication="Chest pain.\nShortness of breath.", findings="No effusion.")
    assert parts.prompt == (SYSTEM + " USER: <image>\nProvide a description of the findings in the radiology image "
                            "given the following indication: Chest pain. Shortness of breath. ASSISTANT:")
    assert parts.target == " No effusion." and parts.eos
    assert build_prompt("v1").prompt.endswith(
        "USER: <image>\nProvide a description of the findings in the radiology image. ASSISTANT:")
    assert question_for("   ").endswith("indication:")  # the release tests `is not None`, not blankness
    plain = build_prompt("plain", indication="ignored", findings="Clear lungs.")
    assert plain.prompt == "<image>" and plain.target == "Clear lungs.\n" and not plain.eos
    with pytest.raises(ValueError, match="unknown prompt format"):
        build_prompt("v2")


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer()
    return t, add_image_token(t)


def test_tokenize_prompt_chunks_separately_with_one_bos(tok):
    t, image_id = tok
    prompt = build_prompt("v1", indication="Cough.").prompt
    ids = tokenize_prompt(t, prompt, 5, image_id)
    before, after = prompt.split("<image>")
    expected = [t.bos_token_id] + t(before, add_special_tokens=False).input_ids + [image_id] * 5 + \
        t(after, add_special_tokens=False).input_ids
    assert ids == expected
    assert ids.count(t.bos_token_id) == 1 and ids.count(image_id) == 5


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def sp_tokenizer(request, tmp_path_factory):
    """A LLaMA-style sentencepiece tokenizer (byte fallback, dummy prefix) loaded as transformers does,
    with ``<image>`` added; returns ``(hf_tokenizer, sentencepiece_processor, image_id)``."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    from llavarad.model.tokenizer import DEFAULT_CORPUS

    tmp_path = tmp_path_factory.mktemp("sp")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(list(DEFAULT_CORPUS) * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2)
    folder = tmp_path / "tok"
    folder.mkdir()
    (tmp_path / "sp.model").rename(folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", '
        f'"legacy": {str(request.param).lower()}, "add_bos_token": true}}')
    hf = AutoTokenizer.from_pretrained(folder)
    image_id = add_image_token(hf)
    return hf, spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")), image_id


def _per_chunk(sp, prompt, n_image, image_id):
    """The release's rule with raw sentencepiece: BOS, chunk before, image ids, chunk after."""
    before, after = prompt.split("<image>")
    return [1] + sp.encode(before) + [image_id] * n_image + sp.encode(after)


def test_v1_ids_follow_the_release_rule_with_a_sentencepiece_tokenizer(sp_tokenizer):
    """With a LLaMA-style sentencepiece model, the chunk after the image starts with the prefix piece
    before the newline byte, exactly as the release's per-chunk tokenization produced."""
    hf, sp, image_id = sp_tokenizer
    prompt = build_prompt("v1", indication="Fever.").prompt
    ids = tokenize_prompt(hf, prompt, 3, image_id)
    assert ids == _per_chunk(sp, prompt, 3, image_id)
    first_after = ids[1 + len(sp.encode(prompt.split("<image>")[0])) + 3:][:2]
    assert sp.id_to_piece(first_after[0]) == "\u2581" and sp.id_to_piece(first_after[1]) == "<0x0A>"


@pytest.mark.parametrize("indication", [None, "Fever.", "Cough\nand  dyspnea."])
def test_plain_autoprocessor_chat_template_gives_the_release_ids(sp_tokenizer, tmp_path, indication):
    """Another tool loads the saved processor with AutoProcessor, renders the chat template and
    tokenizes the whole string: it must get the per-chunk ids (with the lone "▁" before the newline)."""
    from transformers import AutoProcessor

    from llavarad.model.processor import build_processor, chat_template_for
    from llavarad.prompts.model import question_for

    hf, sp, image_id = sp_tokenizer
    build_processor(build_image_processor(28), hf, 14).save_pretrained(tmp_path / "proc")
    proc = AutoProcessor.from_pretrained(tmp_path / "proc")
    image = Image.fromarray(np.zeros((40, 28, 3), dtype="uint8"))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": question_for(indication)}]}]
    got = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(np.asarray(got["input_ids"]).ravel())
    n_image = ids.count(image_id)
    assert n_image == 4  # (28 / 14)^2 patches, CLS dropped
    prompt = build_prompt("v1", indication=indication).prompt
    assert ids == _per_chunk(sp, prompt, n_image, image_id) == tokenize_prompt(hf, prompt, n_image, image_id)
    assert chat_template_for(hf)[1] == {"image_separator": " \n", "matches_per_chunk_ids": True}
    # the template as it was ("<image>\n") loses the lone "▁": the test would catch a regression
    text = prompt.replace("<image>", "<image>" * n_image)
    assert list(proc.tokenizer(text)["input_ids"]) != ids


def test_encode_example_masks_everything_but_the_target(tok):
    t, image_id = tok
    ex = encode_example(t, "v1", indication="Cough.", findings="The lungs are clear.", num_image_tokens=4,
                        image_token_id=image_id)
    target = t(" The lungs are clear.", add_special_tokens=False).input_ids + [t.eos_token_id]
    n_prompt = len(ex.input_ids) - len(target)
    assert ex.input_ids[n_prompt:] == target
    assert ex.labels == [IGNORE_INDEX] * n_prompt + target
    plain = encode_example(t, "plain", indication="x", findings="Clear.", num_image_tokens=4, image_token_id=image_id)
    assert plain.input_ids[:5] == [t.bos_token_id] + [image_id] * 4
    assert plain.labels[:5] == [IGNORE_INDEX] * 5
    assert plain.input_ids[5:] == t("Clear.\n", add_special_tokens=False).input_ids  # no EOS for plain
    with pytest.raises(SequenceTooLongError, match="example 'r7'.*exceed max_length=10"):
        encode_example(t, "v1", indication=None, findings="x", num_image_tokens=4, image_token_id=image_id,
                       max_length=10, example_id="r7")


def _reference_preprocess(img: Image.Image, size: int) -> np.ndarray:
    """Independent reading of the release's transform: shortest side -> size (bicubic), centre crop,
    RGB, /255, CLIP mean/std."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return arr.transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(600, 800), (800, 600), (518, 518)])
def test_image_preprocessing_matches_reference(shape):
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random(shape) * 255).astype("uint8"))
    pv = pixel_values_for([img], build_image_processor(518))
    assert tuple(pv.shape) == (1, 3, 518, 518)
    ref = _reference_preprocess(img, 518)
    assert np.abs(pv[0].numpy() - ref).max() < 1e-4


@pytest.mark.parametrize("extra", range(1, 9))
@pytest.mark.parametrize("portrait", [False, True])
def test_centre_crop_rounds_the_offset_half_to_even_as_torchvision(extra, portrait):
    """Side differences 1..8: torchvision starts the crop at round(d / 2) (0, 1, 2, 2, 2, 3, 4, 4),
    transformers' own crop at d // 2; the two differ when d is 3 or 7, and llavarad follows torchvision."""
    from llavarad.model.processor import center_crop_offset

    size = 56
    rng = np.random.default_rng(extra)
    shape = (size + extra, size) if portrait else (size, size + extra)  # numpy (h, w): shortest side already 56
    img = Image.fromarray((rng.random((*shape, 3)) * 255).astype("uint8"))
    proc = build_image_processor(size)
    pv = pixel_values_for([img], proc)[0].numpy()
    assert np.abs(pv - _reference_preprocess(img, size)).max() < 1e-5
    assert center_crop_offset(size + extra, size) == {1: 0, 2: 1, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4, 8: 4}[extra]
    floor = proc(images=[img], return_tensors="np")["pixel_values"][0]  # transformers' crop
    assert np.array_equal(floor, pv) == (extra % 4 != 3)


def test_pad_aspect_pads_to_square_with_the_mean_colour():
    from llavarad.model.processor import pad_to_square

    img = Image.new("L", (100, 50), color=255)
    sq = pad_to_square(img)
    assert sq.size == (100, 100)
    assert sq.getpixel((50, 10)) == tuple(int(round(c * 255)) for c in CLIP_MEAN)
    assert sq.getpixel((50, 50)) == (255, 255, 255)
    proc = build_image_processor(56)
    padded = pixel_values_for([img], proc, aspect="pad")
    cropped = pixel_values_for([img], proc)
    assert padded.shape == cropped.shape and not np.allclose(padded.numpy(), cropped.numpy())
    # the padded border is the normalised mean colour, i.e. ~0 after normalisation
    assert np.abs(padded[0, :, 2, 28].numpy()).max() < 0.02
    with pytest.raises(ValueError, match="'stretch'"):
        pixel_values_for([img], proc, aspect="stretch")
