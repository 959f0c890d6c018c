"""The v1 question from an indication, checked against the release's steps written out here.

The release builds the user turn in two steps: its MIMIC-CXR loader puts ``<image>\\n`` and the
question (with the reason, newlines replaced by spaces, when the reason is not None) into the
conversation, and both training (preprocess_multimodal) and inference (model_mimic_cxr.py) then
remove ``<image>`` and strip the text. ``_release_question`` follows those two steps literally.
"""

from __future__ import annotations

import pytest

from llavarad.prompts.model import V1_QUESTION, build_prompt, question_for

_STEM = "Provide a description of the findings in the radiology image"


def _release_question(reason: str | None) -> str:
    if reason is not None:
        value = f"<image>\n{_STEM} given the following indication: {reason.replace(chr(10), ' ')}"
    else:
        value = f"<image>\n{_STEM}."
    return value.replace("<image>", "").strip()


CASES = [
    None,
    "",
    "Cough.",
    "Cough\nand fever.",
    "Cough\r\nand fever.\r",
    "Cough\tand\t\tfever.\t",
    "Cough  and   fever.",
    "   Leading spaces.",
    "Trailing spaces.   ",
    "\nStarts with a newline.",
    "Ends with a newline.\n",
    "   ",
    "\n",
    "a\u00a0b\u2003",
]


@pytest.mark.parametrize("reason", CASES, ids=repr)
def test_question_matches_the_release_steps(reason):
    assert question_for(reason) == _release_question(reason)


def test_whitespace_cases_spelled_out():
    # Inner whitespace other than "\n" is kept; only the ends of the whole question are stripped.
    assert question_for("Cough\tand  fever.\r").endswith("indication: Cough\tand  fever.")
    assert question_for("  Cough.").endswith("indication:   Cough.")
    assert question_for("Cough\nfever").endswith("indication: Cough fever")
    # "" is an indication (the release tests `is not None`), so the question ends at the colon.
    assert question_for("") == f"{_STEM} given the following indication:"
    assert question_for(None) == V1_QUESTION


def test_v1_prompt_carries_the_question():
    prompt = build_prompt("v1", indication="Cough\n").prompt
    assert prompt.endswith("USER: <image>\nProvide a description of the findings in the radiology image given "
                           "the following indication: Cough ASSISTANT:")
