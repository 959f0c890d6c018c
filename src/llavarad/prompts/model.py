"""Report-generation prompt formats, exactly as the released LLaVA-Rad weights were trained.

- ``plain`` (stage 2, alignment): ``<image>`` then ``{findings}\\n``; no system prompt, no question.
- ``v1`` (stage 3 and inference): ``{system} USER: <image>\\n{question} ASSISTANT:`` then
  `` {findings}</s>``.

The strings returned here contain one :data:`IMAGE_PLACEHOLDER`; turning them into token ids
(splitting at the placeholder, tokenizing chunks separately, BOS only on the first chunk, then
expanding the placeholder to the image tokens) is :func:`llavarad.model.processor.tokenize_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "IMAGE_PLACEHOLDER",
    "PROMPT_FORMATS",
    "V1_SYSTEM",
    "V1_QUESTION",
    "V1_QUESTION_WITH_INDICATION",
    "PromptFormat",
    "PromptParts",
    "build_prompt",
    "question_for",
]

IMAGE_PLACEHOLDER = "<image>"

V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
V1_QUESTION = "Provide a description of the findings in the radiology image."
V1_QUESTION_WITH_INDICATION = (
    "Provide a description of the findings in the radiology image given the following indication: {indication}"
)

PromptFormat = Literal["plain", "v1"]
PROMPT_FORMATS: tuple[str, ...] = ("plain", "v1")


@dataclass(frozen=True)
class PromptParts:
    """A prompt split into the context the model reads and the target it must produce.

    ``prompt`` ends where generation starts; ``target`` is what training supervises (empty at
    inference); ``eos`` says whether the tokenizer's EOS token closes the target (v1: yes,
    plain: no, as in the release).
    """

    prompt: str
    target: str
    eos: bool


def question_for(indication: str | None) -> str:
    """The v1 question, built from the indication exactly as the release builds it.

    ``None`` gives the question without indication. Any string, even ``""``, gives the indication
    question: each ``"\n"`` becomes a space (and nothing else: tabs, ``"\r"`` and repeated spaces
    stay), then the whole question is stripped of whitespace at both ends, so a trailing blank of
    the indication goes and a leading one stays (``"indication:  Cough."``). That is what the
    release's MIMIC-CXR loader (llava/utils.py, reason ``None`` or not) followed by the strip of the
    question in training (llava/train/train.py) and inference (llava/eval/model_mimic_cxr.py) gives;
    docs/evaluation.md, "Parity with the release", cites the lines.
    """
    if indication is None:
        return V1_QUESTION
    return V1_QUESTION_WITH_INDICATION.format(indication=indication.replace("\n", " ")).strip()


def build_prompt(fmt: str, indication: str | None = None, findings: str | None = None) -> PromptParts:
    """Build the prompt (and training target when ``findings`` is given) for format ``fmt``.

    >>> build_prompt("plain", findings="No acute process.").target
    'No acute process.\\n'
    """
    if fmt == "plain":
        # Alignment: the image alone; the indication is deliberately ignored (paper, stage 2).
        return PromptParts(prompt=IMAGE_PLACEHOLDER, target=(findings + "\n") if findings is not None else "", eos=False)
    if fmt == "v1":
        prompt = f"{V1_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{question_for(indication)} ASSISTANT:"
        # The release joins "ASSISTANT:" and the answer with one space (sep=" ").
        return PromptParts(prompt=prompt, target=(" " + findings) if findings is not None else "", eos=True)
    raise ValueError(f"unknown prompt format {fmt!r}: use one of {', '.join(PROMPT_FORMATS)}")
