"""Prior-comparison hallucinations: predictions that refer to a prior study or a change over time.

The model never sees a prior study, so a generated "unchanged from prior", "again seen",
"interval increase" or "new right PICC line" describes something it cannot know (LLaVA-Rad removes
such references from its training text for this reason). This module finds the sentences that
make such statements, with the cue that fired and its category:

* ``prior_study``: an explicit earlier examination ("compared with the prior radiograph",
  "unchanged from previous", "previously seen").
* ``no_change``: "unchanged", "stable", "no interval change", "remains", "again seen",
  "redemonstrated", "persistent".
* ``change``: "interval increase", "improved", "worsening", "has decreased", "resolved",
  "increased in size".
* ``new``: "new", "newly"; "no new consolidation" counts too, because saying nothing is new
  presupposes an earlier image just as "unchanged" does.

Phrases that look alike but say nothing about time are left out on purpose: "degenerative
changes", "increased interstitial markings", "asymmetric compared to the left", "worse at the
right base", "the remaining lung", "hemodynamically stable", "short interval follow-up", and
statements that no prior exists ("no prior studies for comparison"), which are true here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CUES", "PriorMention", "PriorSummary", "detect_prior_mentions", "find_prior_mentions", "split_sentences"]

_STUDY = (r"(?:stud(?:y|ies)|exam(?:ination)?s?|films?|radiographs?|images?|imaging|x-?rays?|cxrs?|ct|"
          r"chest\s+(?:radiographs?|films?|x-?rays?)|views?|one)")
_PRIOR_ADJ = r"(?:prior|previous|earlier|preceding|last|recent|older|most\s+recent|comparison)"

#: (category, compiled pattern); group 0 is the cue reported.
CUES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((cat, re.compile(pat, re.IGNORECASE)) for cat, pat in (
    ("prior_study", rf"\b{_PRIOR_ADJ}\s+(?:[\w-]+\s+){{0,2}}?{_STUDY}\b"),
    ("prior_study", r"\b(?:from|to|with|on|since|than|versus|vs\.?|over)\s+(?:the\s+|a\s+)?(?:prior|previous|preceding)\b"
                    r"(?=\s*(?:[.,;:)]|$|and\b|or\b))"),
    ("prior_study", r"\b(?:compared|comparison)\s+(?:to|with)\s+(?:the\s+|a\s+)?"
                    r"(?:prior|previous|earlier|recent|last|most\s+recent|\d|\w+day\b|one\b|film|study|exam|radiograph)"),
    ("prior_study", r"\bin\s+comparison\b|\bwhen\s+compared\b"),
    ("prior_study", r"^comparisons?\b(?!\s*[:.,-]?\s*(?:none|n/?a|not|no)\b)"),
    ("prior_study", r"\bpreviously\b"),
    ("no_change", r"\bunchanged\b|\bno\s+(?:(?:significant|appreciable|substantial|definite|major|relevant|"
                  r"interval|apparent|visible|radiographic)\s+)*changes?\b"),
    ("no_change", r"\b(?:without|not)\s+(?:(?:significant|appreciable|interval)\s+)*change[sd]?\b|\bhas\s+not\s+changed\b"),
    ("no_change", r"(?<!hemodynamically\s)(?<!clinically\s)(?<!medically\s)\bstab(?:le|ility|ly)\b"),
    ("no_change", r"\bremain(?:s|ed|ing\s+(?:stable|unchanged|clear|normal|elevated|enlarged))?\b(?!der)"),
    ("no_change", r"\bagain\s+(?:(?:seen|noted|demonstrated|identified|visualized|visible|present|evident|shown)\b)"),
    ("no_change", r"\bre-?demonstrat\w*\b|\bre-?identified\b"),
    ("no_change", r"\bpersist(?:ent|ently|s|ed|ing|ence)?\b"),
    ("change", r"\binterval(?:ly)?\b(?!\s+(?:follow|f/u|imaging|ct|radiograph|chest|x-?ray|re-?imaging)\b)(?<!short\sinterval)"),
    ("change", r"\b(?:has|have|had)\s+(?:(?:since|now|slightly|mildly|markedly|significantly|also|been|become)\s+)*"
               r"(?:increased|decreased|improved|worsened|resolved|enlarged|progressed|developed|cleared|changed|"
               r"diminished|regressed|reaccumulated|re-?expanded|grown|appeared|worse|larger|smaller|removed|placed|"
               r"inserted|advanced|withdrawn|retracted|repositioned|exchanged)\b"),
    ("change", r"\b(?:increased|decreased|enlarged|grown|diminished|reduced)\s+in\s+(?:size|extent|number|conspicuity|"
               r"severity|volume|amount)\b"),
    ("change", r"\b(?:increase|decrease|reduction)\s+in\s+(?:the\s+)?(?:size|extent|number|amount|volume)\b"),
    ("change", r"\bimprov(?:ed|ing|ement)\b|\bworsen(?:ed|ing|s)?\b|\bprogress(?:ed|ion|ing)\b|\bresolv(?:ed|ing)\b|"
               r"(?<!high\s)(?<!high-)\bresolution\b|\bincreasing\b|\bdecreasing\b|\bre-?expan(?:ded|sion)\b|\bnewly\b|"
               r"\bno\s+longer\b|\b(?:is|are)\s+now\b|\bnow\s+(?:measures?|seen|demonstrated|appears?|present|noted)\b"),
    ("new", r"\b(?:no\s+(?:(?:definite|acute|other|significant|focal|evident)\s+)*)?new\b"),
))

# Statements that no earlier image exists are true for a model that sees one image: not flagged.
_NO_PRIOR = re.compile(
    r"\b(?:no|without|absence\s+of|not\s+available|none\s+available|unavailable)\s+(?:(?:a|any|the)\s+)?"
    r"(?:prior|previous|comparison|old|earlier)\b(?:\s+(?:[\w-]+\s+){0,2}?" + _STUDY + r")?"
    r"(?:\s+(?:is|are)\s+)?(?:\s*(?:available|for\s+comparison))?",
    re.IGNORECASE,
)

# Every cue contains one of these stems; sentences without any skip the full cue list (speed).
_PREFILTER = re.compile(
    r"prior|previous|earlier|preceding|last|recent|older|compar|chang|stab|remain|again|demonstrat|identified|"
    r"persist|interval|increas|decreas|improv|worse|progress|resol|re-?expan|new|longer|now|enlarg|grown|"
    r"diminish|reduc|has|have|had",
    re.IGNORECASE,
)

_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences (at ``. ! ?`` or ``;`` followed by space, and at newlines)."""
    return [s.strip() for s in _SPLIT.split(text or "") if s and s.strip()]


@dataclass
class PriorMention:
    """One sentence of one report that refers to an earlier study or to change over time."""

    report: int
    sentence: str
    cues: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


def find_prior_mentions(text: str, report: int = 0) -> list[PriorMention]:
    """Sentences of ``text`` that refer to a prior study or change over time, with their cues."""
    out = []
    for sentence in split_sentences(text):
        if not _PREFILTER.search(sentence):
            continue
        blocked = [m.span() for m in _NO_PRIOR.finditer(sentence)]
        cues: list[str] = []
        cats: list[str] = []
        taken: list[tuple[int, int]] = []
        for cat, pat in CUES:
            for m in pat.finditer(sentence):
                a, b = m.span()
                if any(a < e and s < b for s, e in blocked + taken):
                    continue
                taken.append((a, b))
                cues.append(m.group(0).lower())
                if cat not in cats:
                    cats.append(cat)
        if cues:
            out.append(PriorMention(report=report, sentence=sentence, cues=cues, categories=cats))
    return out


@dataclass
class PriorSummary:
    """Prior-comparison mentions over a set of reports.

    Attributes:
        flagged: bool array, shape ``(n_reports,)``: the report has at least one such sentence.
        mentions: every flagged sentence, in report order.
    """

    flagged: np.ndarray
    mentions: list[PriorMention]

    @property
    def n(self) -> int:
        return int(self.flagged.size)

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    @property
    def share(self) -> float:
        """Fraction of reports with a prior-comparison mention (nan for no reports)."""
        return float(self.flagged.mean()) if self.flagged.size else float("nan")

    def by_category(self) -> dict[str, int]:
        """Number of reports with at least one cue of each category."""
        out: dict[str, set[int]] = {}
        for m in self.mentions:
            for c in m.categories:
                out.setdefault(c, set()).add(m.report)
        return {c: len(v) for c, v in sorted(out.items())}


def detect_prior_mentions(texts: Sequence[str]) -> PriorSummary:
    """Find prior-comparison mentions in each report of ``texts``."""
    mentions: list[PriorMention] = []
    flagged = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"report #{i} is {type(text).__name__}, not a string")
        found = find_prior_mentions(text, i)
        if found:
            flagged[i] = True
            mentions.extend(found)
    return PriorSummary(flagged=flagged, mentions=mentions)
