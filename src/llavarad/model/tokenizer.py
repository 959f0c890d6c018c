"""Tokenizers: a small byte-level BPE tokenizer the project builds itself, and the image token.

Real models use their language model's own tokenizer (Vicuna's LLaMA sentencepiece tokenizer for
``llava-rad-7b``). Tests, tiny presets and the phantom demo need a tokenizer that exists without a
download: :func:`build_tokenizer` trains a byte-level BPE (any text encodes, nothing is ever
unknown) on a corpus, with LLaMA's special-token layout (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) so the
rest of the code treats both kinds alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from llavarad.prompts.model import IMAGE_PLACEHOLDER, V1_QUESTION, V1_QUESTION_WITH_INDICATION, V1_SYSTEM

__all__ = ["IMAGE_TOKEN", "build_tokenizer", "add_image_token", "DEFAULT_CORPUS"]

IMAGE_TOKEN = IMAGE_PLACEHOLDER

# A small built-in corpus so that `init --preset tiny` works offline with sensible merges.
DEFAULT_CORPUS: tuple[str, ...] = (
    V1_SYSTEM,
    V1_QUESTION,
    V1_QUESTION_WITH_INDICATION.format(indication="Shortness of breath."),
    "USER: ASSISTANT:",
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "No pleural effusion or pneumothorax. No focal consolidation. No acute osseous abnormality.",
    "Moderate cardiomegaly. Small bilateral pleural effusions with bibasilar atelectasis.",
    "Mild pulmonary edema. Right lower lobe consolidation concerning for pneumonia.",
    "Endotracheal tube terminates above the carina. Right internal jugular central venous catheter.",
    "Left apical pneumothorax. A 1 cm nodule in the left upper lobe. Chest tube in place.",
    "Indication: fever and cough, chest pain, dyspnea, line placement, trauma, follow-up.",
)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, model_max_length: int = 4096):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer.

    Special tokens follow LLaMA: ``<unk>`` = 0 (also the pad token, as in Vicuna/LLaVA-Rad),
    ``<s>`` = 1 (added as BOS by ``add_special_tokens=True``), ``</s>`` = 2. The image token is
    added separately by :func:`add_image_token`, as for a real language model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts.extend(DEFAULT_CORPUS)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + 3),
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        model_max_length=model_max_length,
        padding_side="left",
    )
    return fast


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token if absent and return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise RuntimeError(f"could not add {IMAGE_TOKEN!r} to the tokenizer")
    return int(token_id)
