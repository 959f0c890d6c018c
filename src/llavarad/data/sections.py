"""Rule-based sectioning of free-text chest X-ray reports (data preparation stage).

A report is split at its section headers into indication, comparison, technique, findings and
impression. Headers are recognised in the forms real reports use: upper or mixed case, with a
colon (``FINDINGS:``), on a line of their own (``IMPRESSION``), inline after a sentence
(``... normal. IMPRESSION: ...``), with synonyms (HISTORY / REASON FOR EXAM / CLINICAL
INFORMATION all mean indication; CONCLUSION means impression) and with small misspellings
(``FINIDNGS``, ``IMPRESION``: matched by edit similarity). A merged header such as
``FINDINGS AND IMPRESSION`` is routed by :attr:`SectionerConfig.merged_to`. MIMIC's ``___``
de-identification marks are kept as text and never taken for headers; numbered list markers can
optionally be stripped. Text under headers that are not one of the five sections (``WET READ``,
``NOTIFICATION``, ``RECOMMENDATION(S)``) is kept in :attr:`Sections.other`, never merged into
findings silently.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

logger = logging.getLogger(__name__)

__all__ = [
    "SECTION_NAMES",
    "HEADER_SYNONYMS",
    "SectionerConfig",
    "Sections",
    "normalize_whitespace",
    "split_sections",
]

SECTION_NAMES: tuple[str, ...] = ("indication", "comparison", "technique", "findings", "impression")

#: Header text (lower case, single spaces, no trailing colon) -> section; "merged" is findings+impression.
HEADER_SYNONYMS: dict[str, str] = {}
for _section, _names in {
    "indication": (
        "indication", "indications", "clinical indication", "history", "clinical history", "hx",
        "reason for exam", "reason for examination", "reason for study", "reason for the exam",
        "reason", "clinical information", "clinical info", "clinical data", "clinical details",
        "clinical notes", "clinical question", "clinical", "indication for exam", "patient history",
        "medical history", "brief history",
    ),
    "comparison": ("comparison", "comparisons", "comparison study", "comparison studies", "prior", "priors",
                   "prior studies", "prior study", "compared with", "compare"),
    "technique": ("technique", "techniques", "examination", "exam", "procedure", "views", "view",
                  "study", "type of study", "exam type", "examination type"),
    "findings": ("findings", "finding", "report", "description", "observations", "result", "results"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "summary", "opinion",
                   "interpretation", "diagnosis", "final impression", "assessment"),
    "merged": ("findings and impression", "findings/impression", "impression and findings",
               "impression/findings", "findings impression", "findings & impression",
               "findings and impressions", "findings/impressions"),
}.items():
    for _name in _names:
        HEADER_SYNONYMS[_name] = _section

# Headers that end a section but are none of the five; their text goes to Sections.other.
_OTHER_HEADERS = frozenset({
    "wet read", "notification", "notifications", "recommendation", "recommendations",
    "recommendation(s)", "addendum", "final report", "attending", "dictated by", "signed by",
    "electronically signed by", "note", "communication", "critical result", "critical results",
})

# A header phrase holds letters, spaces and / & ( ) ' - only, so "___" and "10:42" never qualify.
_PHRASE = re.compile(r"[A-Za-z][A-Za-z /&()'\t-]*\Z")
_OWN_LINE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&]{1,40}?)[ \t]*$", re.MULTILINE)
_TAIL_WORDS = {k: re.compile(r"\S+" + r"\s+\S+" * (k - 1) + r"\s*\Z") for k in range(1, 5)}
_WS = re.compile(r"\s+")
_NUMBERING = re.compile(r"(?:^|(?<=[.:;!?]))\s*(?:\(?\d{1,2}[.)]|[-*\u2022])\s+(?=\S)", re.MULTILINE)


@dataclass(frozen=True)
class SectionerConfig:
    """Settings of :func:`split_sections`.

    merged_to: where the text under a merged FINDINGS/IMPRESSION header goes. "impression" follows
        the official MIMIC-CXR section parser (the paper's rule-based data); "both" copies it.
    headerless_to: where a report with no recognised header goes ("none" leaves every section empty).
    strip_numbering: remove list markers ("1.", "2)", "-") at line or sentence starts.
    fuzzy_cutoff: difflib similarity needed to accept a misspelt header (1.0 turns fuzzy matching off).
    """

    merged_to: Literal["impression", "findings", "both"] = "impression"
    headerless_to: Literal["none", "findings", "impression"] = "none"
    strip_numbering: bool = False
    fuzzy_cutoff: float = 0.86

    def __post_init__(self) -> None:
        problems = []
        if self.merged_to not in ("impression", "findings", "both"):
            problems.append(f"merged_to={self.merged_to!r} is not one of impression, findings, both")
        if self.headerless_to not in ("none", "findings", "impression"):
            problems.append(f"headerless_to={self.headerless_to!r} is not one of none, findings, impression")
        if not 0.5 <= self.fuzzy_cutoff <= 1.0:
            problems.append(f"fuzzy_cutoff={self.fuzzy_cutoff} must be in [0.5, 1.0] (1.0 disables fuzzy matching)")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Sections:
    """The sections of one report; absent sections are None. Text is whitespace-normalised."""

    indication: str | None = None
    comparison: str | None = None
    technique: str | None = None
    findings: str | None = None
    impression: str | None = None
    other: dict[str, str] = field(default_factory=dict)
    merged: bool = False
    headers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, str | None]:
        """The five named sections as a dict."""
        return {name: getattr(self, name) for name in SECTION_NAMES}


def normalize_whitespace(text: str | None) -> str:
    """Collapse runs of whitespace to one space and strip the ends ('' for None)."""
    return _WS.sub(" ", text or "").strip()


@lru_cache(maxsize=4096)
def _classify(phrase: str, cutoff: float) -> str | None:
    """Map a candidate header phrase to a section name, "other", or None if it is not a header."""
    key = _WS.sub(" ", phrase.strip().lower()).rstrip(" -")
    if not key:
        return None
    if key in HEADER_SYNONYMS:
        return HEADER_SYNONYMS[key]
    if key in _OTHER_HEADERS:
        return "other"
    if cutoff < 1.0 and 4 <= len(key) <= 30:
        n_words = key.count(" ")
        for match in difflib.get_close_matches(key, HEADER_SYNONYMS.keys(), n=3, cutoff=cutoff):
            # a misspelling, not an extra word: "cp comparison" is no header
            if match.count(" ") == n_words and abs(len(match) - len(key)) <= 2:
                return HEADER_SYNONYMS[match]
    return None


def _at_line_start(text: str, pos: int) -> bool:
    line_begin = text.rfind("\n", 0, pos) + 1
    return text[line_begin:pos].strip() == ""


def _tail_header(raw: str, whole: bool, cutoff: float) -> tuple[str, str, int] | None:
    """The trailing 1-4 words of ``raw`` that form a header: ALL-CAPS (misspellings allowed) or
    Title-case (exact): "back pain PRIOR STUDIES" -> PRIOR STUDIES. Returns (section, text, offset)."""
    words = raw.split()
    for k in range(min(4, len(words) - 1 if whole else len(words)), 0, -1):
        tail = " ".join(words[-k:])
        if len(tail) < 3 or not _PHRASE.match(tail):
            continue
        if tail.isupper():
            section = _classify(tail, cutoff)
        elif tail[0].isupper() and tail[1:] == tail[1:].lower():
            section = HEADER_SYNONYMS.get(tail.lower())
        else:
            continue
        if section is not None and section != "other":
            m = _TAIL_WORDS[k].search(raw)
            assert m is not None  # raw ends with these k words
            return section, tail, m.start()
    return None


def _find_headers(text: str, cutoff: float) -> list[tuple[int, int, str, str]]:
    """Return ``(start, end, section, header_text)`` for every header, in order.

    Colon headers are found from each colon backwards to the previous sentence or line boundary
    (a handful of colons per report, so this is fast); colon-less headers must stand alone on
    their line and be spelt exactly.
    """
    candidates: list[tuple[int, int, str, str]] = []
    pos = text.find(":")
    while pos != -1:
        lo = max(0, pos - 50)
        seg = text[lo:pos]
        boundary = max(seg.rfind("."), seg.rfind(";"), seg.rfind(":"), seg.rfind("!"), seg.rfind("?"),
                       seg.rfind("\n"))
        whole = boundary != -1 or lo == 0
        raw = seg[boundary + 1 :]
        phrase = raw.strip()
        start = lo + boundary + 1 + (len(raw) - len(raw.lstrip()))
        section = _classify(phrase, cutoff) if whole and phrase and _PHRASE.match(phrase) else None
        used = phrase
        if section == "other" and not (phrase.isupper() or _at_line_start(text, start)):
            section = None  # "Note: ..." inside a sentence stays text
        if section is None:
            tail = _tail_header(raw, whole, cutoff)
            if tail is not None:
                section, used, offset = tail
                start = lo + boundary + 1 + offset
            elif whole and phrase.isupper() and len(phrase) > 2 and _PHRASE.match(phrase) \
                    and _at_line_start(text, start):
                section = "other"  # an unknown ALL-CAPS "HEADER:" at a line start ends a section
        if section is not None:
            candidates.append((start, pos + 1, section, used))
        pos = text.find(":", pos + 1)
    for m in _OWN_LINE.finditer(text):
        key = " ".join(m.group(1).lower().split())
        section = HEADER_SYNONYMS.get(key)
        if section is not None:
            candidates.append((m.start(1), m.end(1), section, m.group(1)))
    candidates.sort()
    found: list[tuple[int, int, str, str]] = []
    for cand in candidates:
        if found and cand[0] < found[-1][1]:
            continue  # overlaps a header already taken
        found.append(cand)
    return found


def split_sections(text: str | None, config: SectionerConfig | None = None) -> Sections:
    """Split one free-text report into sections.

    Args:
        text: the report as released (line breaks and MIMIC's ``___`` marks allowed). None or blank
            gives empty :class:`Sections`.
        config: sectioning settings (defaults follow the official MIMIC-CXR rules).

    Returns:
        :class:`Sections`; a section that appears more than once is concatenated in order.
    """
    cfg = config or SectionerConfig()
    out = Sections()
    if not text or not text.strip():
        return out
    headers = _find_headers(text, cfg.fuzzy_cutoff)
    parts: dict[str, list[str]] = {}

    def add(section: str, body: str, header: str) -> None:
        if cfg.strip_numbering:
            body = _NUMBERING.sub(" ", body)
        body = normalize_whitespace(body)
        if not body:
            return
        if section == "other":
            key = header.lower()
            out.other[key] = (out.other[key] + " " + body) if key in out.other else body
            return
        parts.setdefault(section, []).append(body)

    if not headers:
        if cfg.headerless_to != "none":
            add(cfg.headerless_to, text, "")
        else:
            add("other", text, "untitled")
        return _finish(out, parts)
    if headers[0][0] > 0:
        add("other", text[: headers[0][0]], "preamble")
    for i, (_start, end, section, header) in enumerate(headers):
        body = text[end : headers[i + 1][0] if i + 1 < len(headers) else len(text)]
        out.headers.append(header)
        if section == "merged":
            out.merged = True
            targets = ("findings", "impression") if cfg.merged_to == "both" else (cfg.merged_to,)
            for target in targets:
                add(target, body, header)
        else:
            add(section, body, header)
    return _finish(out, parts)


def _finish(out: Sections, parts: dict[str, list[str]]) -> Sections:
    for name, bodies in parts.items():
        setattr(out, name, " ".join(bodies))
    return out
