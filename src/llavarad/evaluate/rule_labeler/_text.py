"""Report cleaning and sentence splitting for the rule-based labeler.

Cleaning follows the CheXpert labeler's normalisation, so that phrase matching sees the same text
it would: lower case; "and/or" becomes "or"; a slash between two letters becomes " or "; double
periods collapse; a space follows every period and comma; runs of whitespace become one space.
"""

from __future__ import annotations

import bisect
import re

__all__ = ["clean_report", "sentence_bounds", "sentence_of"]

_AND_OR = re.compile(r"and/or")
_SLASH = re.compile(r"(?<=[a-z])/(?=[a-z])")
# A sentence ends at ., ? or ! followed by a space or the end; "1." list numbers form their own
# (mention-free) sentences, which is harmless.
_SENT_END = re.compile(r"[.?!;](?= |$)")


def clean_report(text: str) -> str:
    """Return the normalised, lower-case form of one report (see the module docstring)."""
    text = text.lower()
    text = _AND_OR.sub("or", text)
    text = _SLASH.sub(" or ", text)
    text = text.replace("..", ".").replace(".", ". ").replace(",", ", ")
    return " ".join(text.split())


def sentence_bounds(text: str) -> list[int]:
    """Start offsets of the sentences of a cleaned report (the first is always 0)."""
    return [0] + [m.end() for m in _SENT_END.finditer(text)]


def sentence_of(starts: list[int], pos: int) -> int:
    """Index of the sentence (given its ``starts``) that holds character ``pos``."""
    return bisect.bisect_right(starts, pos) - 1
