"""Prompts of the data pipeline's LLM steps, and strict validators for their replies.

- ``structuring``: Supplementary Table 6 of the paper, verbatim: split a free-text report into
  EXAMINATION / INDICATION / FINDINGS / IMPRESSION (JSON), dropping prior-study comparisons.
- ``translation``: PadChest's (pre-processed, Spanish) reports into English findings.
- ``findings``: findings extraction for reports where the rule-based sectioner finds none.

Each prompt has a ``prompt_version`` (part of the LLM cache key: change it whenever the wording
changes). Each ``parse_*`` function takes the raw reply and the source text and returns the value
or raises ``ValueError`` naming what is wrong, so the shared client retries and never stores an
unusable reply as a success. Replies must be JSON (a ```json fence is accepted) with exactly the
schema's keys, and every returned section must be supported by the source: most of its words
must occur in the source report (``min_support``), so an invented section is rejected.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "FINDINGS_VERSION",
    "STRUCTURING_KEYS",
    "STRUCTURING_VERSION",
    "TRANSLATION_VERSION",
    "findings_messages",
    "parse_findings",
    "parse_structuring",
    "parse_translation",
    "structuring_messages",
    "support",
    "translation_messages",
]

STRUCTURING_VERSION = "structuring-v1"
TRANSLATION_VERSION = "translation-v1"
FINDINGS_VERSION = "findings-extraction-v1"
STRUCTURING_KEYS: tuple[str, ...] = ("EXAMINATION", "INDICATION", "FINDINGS", "IMPRESSION")

# Supplementary Table 6 (system part and instructions with the one worked example), verbatim.
_STRUCTURING_SYSTEM = (
    "You are an expert medical assistant AI capable of modifying clinical documents to user specifications. "
    "You make minimal changes to the original document to satisfy user requests. You never add information "
    "that is not already directly stated in the original document."
)
_STRUCTURING_INSTRUCTIONS = (
    "Extract four sections from the input radiology report: 'Examination', 'Indication', 'Findings' and "
    "'Impression'. Leave an extracted section as null if it does not exist in the original report. The output "
    "should be in JSON format. An Indication section can refer to the History, Indication or Reason for Study "
    "sections in the original report. Remove any information not directly observable from the current imaging "
    "study. For instance, remove any patient demographic data, past medical history, or comparison to prior "
    "images or studies. The generated 'Findings' and 'Impression' sections should not reference any changes "
    "based on prior images, studies, or external knowledge about the patient. Rewrite such comparisons as a "
    "status observation based only on the current image or study. Remember to remove any numbering or bullets."
    "\n\nExamples of inputs and expected outputs:\n\nINPUT:\n\nEXAMINATION: XR CHEST AP PORTABLE\n\n"
    "INDICATION: Small right apical pneumothorax after lung biopsy.\n\nFINDINGS: Single portable view of the "
    "chest was obtained. Copared with 10:42 AM. The small right apical pneumothorax has decreased slightly in "
    "size, the improvement best appreciated laterally where it now measures 10 mm compared to 14 mm before. At "
    "the lung apex it now measures 1.6 and compared to 2.1 cm previously. A subtle right apical pulmonary "
    "contusion is grossly stable. Minor chest wall emphysema along the right exilla has not changed significant "
    "delay. There is no metastatic shift. No pleural effusion is evident.\n\nOUTPUT:\n\n"
    '{"EXAMINATION": "XR CHEST AP PORTABLE.", "INDICATION": "Small right apical pneumothorax after lung biopsy.", '
    '"FINDINGS": "Single portable view of the chest was obtained. The small right apical pneumothorax measures '
    "10mm. At the lung apex it measures 1.6cm. A subtle right apical pulmonary contusion is grossly stable. Minor "
    "chest wall emphysema is noted along the right exilla. There is no metastatic shift. No pleural effusion is "
    'evident.", "IMPRESSION": null}'
)

_TRANSLATION_SYSTEM = (
    "You are an expert radiologist fluent in Spanish and English. You translate chest X-ray reports faithfully. "
    "You never add information that is not stated in the original report."
)
_TRANSLATION_INSTRUCTIONS = (
    "Translate the Spanish chest X-ray report below into English radiology language. The report was "
    "pre-processed: words may be stemmed or truncated, accents and capital letters removed, and sentences "
    "separated by ' . '. Reconstruct the intended words, keep every statement (including negations), keep the "
    "order, and do not add or remove findings. Reply with JSON only: {\"translation\": \"<English text>\"}."
)

_FINDINGS_INSTRUCTIONS = (
    "Extract the 'Findings' of the input radiology report: the radiologist's observations about the current "
    "image (devices, lungs, pleura, heart, mediastinum, bones), from whichever section they appear in, including "
    "an Impression that holds them. Do not include the indication, history, technique, comparison, "
    "recommendations or communication of results. Remove references to prior images or studies, rewriting them "
    "as a status observation of the current study. Remove numbering or bullets. Reply with JSON only: "
    '{"FINDINGS": "<text>"}, or {"FINDINGS": null} if the report states no observation.'
)

_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*(.*?)\s*```\s*$", re.DOTALL)
_SPANISH = frozenset("de del la las los el en sin con y se por para que una uno derram hallazg cardiomegali "
                     "pulmonar patolog izquierd derech".split())


def structuring_messages(report: str) -> list[dict[str, str]]:
    """Chat messages of the structuring prompt (Supplementary Table 6) for one report."""
    return [{"role": "system", "content": _STRUCTURING_SYSTEM},
            {"role": "user", "content": f"{_STRUCTURING_INSTRUCTIONS}\n\nINPUT:\n\n{report.strip()}\n\nOUTPUT:"}]


def translation_messages(report_es: str) -> list[dict[str, str]]:
    """Chat messages asking for the English translation of one Spanish (PadChest) report."""
    return [{"role": "system", "content": _TRANSLATION_SYSTEM},
            {"role": "user", "content": f"{_TRANSLATION_INSTRUCTIONS}\n\nREPORT:\n{report_es.strip()}"}]


def findings_messages(report: str) -> list[dict[str, str]]:
    """Chat messages asking for the findings of a report whose sections the rules could not find."""
    return [{"role": "system", "content": _STRUCTURING_SYSTEM},
            {"role": "user", "content": f"{_FINDINGS_INSTRUCTIONS}\n\nINPUT:\n\n{report.strip()}\n\nOUTPUT:"}]


def _load_json_object(reply: str) -> dict[str, Any]:
    text = reply.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON ({exc.msg} at character {exc.pos}); expected one JSON object") from exc
    if not isinstance(value, dict):
        raise ValueError(f"reply is JSON {type(value).__name__}, expected an object")
    return value


def support(text: str, source: str) -> float:
    """Fraction of the distinct words of ``text`` that occur in ``source`` (1.0 for empty text)."""
    words = set(_WORD.findall(text.lower()))
    if not words:
        return 1.0
    return len(words & set(_WORD.findall(source.lower()))) / len(words)


def _check_keys(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str | None]:
    by_upper = {str(k).strip().upper(): v for k, v in obj.items()}
    extra = sorted(set(by_upper) - set(keys))
    missing = [k for k in keys if k not in by_upper]
    if extra or missing:
        raise ValueError(f"reply keys must be exactly {', '.join(keys)}"
                         + (f"; unexpected {', '.join(extra)}" if extra else "")
                         + (f"; missing {', '.join(missing)}" if missing else ""))
    out: dict[str, str | None] = {}
    for k in keys:
        v = by_upper[k]
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{k} must be a string or null, got {type(v).__name__}")
        v = " ".join(v.split()) if isinstance(v, str) else None
        out[k] = v if v and v.lower() not in ("null", "none", "n/a") else None
    return out


def parse_structuring(reply: str, source: str, min_support: float = 0.7) -> dict[str, str | None]:
    """Validate a structuring reply; return ``{examination, indication, findings, impression}``.

    Raises:
        ValueError: not JSON, wrong keys, a non-string value, or a section whose words are mostly
            absent from ``source`` (an invented section).
    """
    sections = _check_keys(_load_json_object(reply), STRUCTURING_KEYS)
    for key, text in sections.items():
        if text is not None:
            s = support(text, source)
            if s < min_support:
                raise ValueError(f"{key} is not supported by the source report (only {s:.0%} of its words occur "
                                 f"there, need {min_support:.0%}): the reply invents text")
    return {k.lower(): v for k, v in sections.items()}


def parse_findings(reply: str, source: str, min_support: float = 0.7) -> str | None:
    """Validate a findings-extraction reply; return the findings text or None (the report has none)."""
    findings = _check_keys(_load_json_object(reply), ("FINDINGS",))["FINDINGS"]
    if findings is not None:
        s = support(findings, source)
        if s < min_support:
            raise ValueError(f"FINDINGS is not supported by the source report (only {s:.0%} of its words occur "
                             f"there, need {min_support:.0%}): the reply invents text")
    return findings


def parse_translation(reply: str, source_es: str, max_ratio: float = 4.0) -> str:
    """Validate a translation reply; return the English text.

    Raises:
        ValueError: not JSON / wrong keys, empty translation of a non-empty report, a reply still in
            Spanish, or one far longer than the source (``max_ratio`` words per source word + 10).
    """
    text = _check_keys(_load_json_object(reply), ("TRANSLATION",))["TRANSLATION"]
    src_words = _WORD.findall(source_es.lower())
    if text is None:
        if src_words:
            raise ValueError("translation is empty but the source report is not")
        return ""
    words = _WORD.findall(text.lower())
    spanish = sum(w in _SPANISH for w in words)
    if words and spanish / len(words) > 0.25:
        raise ValueError(f"translation is still Spanish ({spanish} of {len(words)} words are Spanish)")
    if len(words) > max_ratio * len(src_words) + 10:
        raise ValueError(f"translation has {len(words)} words for a {len(src_words)}-word report: it adds content")
    return text
