"""The CheXprompt judge prompt: six error types, clinical significance, five worked examples and a
strict JSON answer format, plus the strict parser of that format.

The judge counts, for a candidate (generated) report against its reference, errors of six kinds
(the paper, after ReXVal), each split into clinically significant and insignificant. The five
worked examples were written for this project in the style of Open-I reports (they are not copied
from any dataset); their counts show the judge how to count.

Bump :data:`PROMPT_VERSION` whenever any text here changes: it is part of the LLM cache key.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "COUNT_COLUMNS",
    "ERROR_TYPES",
    "EXAMPLES",
    "MAX_COUNT",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "build_messages",
    "format_answer",
    "parse_answer",
]

PROMPT_VERSION = "chexprompt-v1"

#: Largest count of one error type (significant or insignificant) accepted from a judge for one
#: report; more is not a credible count of a chest X-ray report's errors (a reply claiming 10**30
#: would swamp every mean and put the bootstrap interval beside the value).
MAX_COUNT = 100

#: (key, letter, definition) for the six error types, in the paper's order (a)-(f).
ERROR_TYPES: tuple[tuple[str, str, str], ...] = (
    ("false_finding", "a", "False prediction of a finding: the candidate reports a finding that the reference does not support."),
    ("omitted_finding", "b", "Omission of a finding: a finding in the reference is missing from the candidate."),
    ("wrong_location", "c", "Incorrect location or position of a finding (e.g. wrong side, lobe, or level; a tube tip in the wrong place)."),
    ("wrong_severity", "d", "Incorrect severity of a finding (e.g. small vs large, mild vs severe)."),
    ("false_comparison", "e", "Mention of a comparison that is not in the reference (e.g. 'unchanged', 'new', 'improved' relative to a prior study the reference does not describe)."),
    ("omitted_comparison", "f", "Omission of a comparison describing a change from a previous study that the reference reports."),
)

#: The 12 per-report counts, in output column order: each type's significant then insignificant count.
COUNT_COLUMNS: tuple[str, ...] = tuple(f"{key}_{kind}" for key, _, _ in ERROR_TYPES for kind in ("significant", "insignificant"))

_TYPE_KEYS = tuple(key for key, _, _ in ERROR_TYPES)

SYSTEM_PROMPT = (
    "You are an experienced radiologist evaluating the accuracy of a candidate chest X-ray report against a "
    "reference report written by a radiologist for the same study. Treat the reference as correct.\n\n"
    "Count the errors in the candidate report, for each of these six error types:\n"
    + "".join(f"({letter}) {key}: {text}\n" for key, letter, text in ERROR_TYPES)
    + "\nCount each error once, under the single type that fits it best. Count a finding mentioned in different "
    "words, or a normal statement the reference does not make but does not contradict, as no error.\n\n"
    "For every error decide whether it is clinically significant or clinically insignificant. An error is "
    "clinically significant when it could change the patient's management or outcome (for example a missed or "
    "invented pneumothorax, pneumonia, effusion, mass or edema; the wrong side of a finding; a misplaced tube or "
    "line; a missed worsening). It is clinically insignificant when it would not change management (for example "
    "minor degenerative changes, old healed fractures, surgical clips, or a small difference in wording of a "
    "stable finding).\n\n"
    "Answer with exactly one JSON object and nothing else, with these six keys, each holding the integer counts "
    "of significant and insignificant errors of that type:\n"
    + json.dumps({key: {"significant": 0, "insignificant": 0} for key in _TYPE_KEYS})
    + '\nYou may add one key "notes" with a short string listing the errors. Do not add any other text.'
)


def _counts(**nonzero: int) -> dict[str, int]:
    counts = {c: 0 for c in COUNT_COLUMNS}
    for name, value in nonzero.items():
        if name not in counts:
            raise KeyError(f"unknown count column {name!r}; expected one of {', '.join(COUNT_COLUMNS)}")
        counts[name] = value
    return counts


#: Five worked examples: (reference, candidate, expected 12 counts, notes). Written for this project.
EXAMPLES: tuple[tuple[str, str, dict[str, int], str], ...] = (
    (
        "Cardiac size within normal range. Both lungs clear, with no focal airspace disease. No effusion or pneumothorax seen.",
        "Cardiomediastinal contours are within normal limits. No focal airspace opacity, effusion or pneumothorax.",
        _counts(),
        "The candidate restates the normal findings in other words; no errors.",
    ),
    (
        "Mild cardiomegaly. The lungs are clear. Degenerative changes of the thoracic spine. No pleural effusion.",
        "Mildly enlarged cardiac silhouette. Right lower lobe consolidation concerning for pneumonia. No pleural effusion.",
        _counts(false_finding_significant=1, omitted_finding_insignificant=1),
        "Invented right lower lobe consolidation (significant); omitted thoracic spine degenerative changes (insignificant).",
    ),
    (
        "Small left pleural effusion with adjacent basilar atelectasis. Normal heart size. No pneumothorax.",
        "Large right pleural effusion with adjacent basilar atelectasis. Normal heart size. No pneumothorax.",
        _counts(wrong_location_significant=1, wrong_location_insignificant=1, wrong_severity_significant=1),
        "Effusion on the wrong side (significant); atelectasis placed at the wrong base (insignificant); "
        "effusion called large instead of small (significant).",
    ),
    (
        "Sternotomy wires are intact. Heart size and pulmonary vasculature are normal. No acute cardiopulmonary process.",
        "Intact sternotomy wires. Normal heart size and vasculature. The right upper lobe opacity seen on the prior "
        "examination has resolved.",
        _counts(false_comparison_significant=1),
        "Describes a change from a prior study that the reference never mentions (significant).",
    ),
    (
        "Moderate pulmonary edema, increased since the prior radiograph. Stable cardiomegaly. Endotracheal tube tip "
        "about 4 cm above the carina.",
        "Moderate pulmonary edema. Cardiomegaly. No pneumothorax.",
        _counts(omitted_comparison_significant=1, omitted_comparison_insignificant=1, omitted_finding_significant=1),
        "Omits that the edema worsened (significant) and that the cardiomegaly is stable (insignificant); omits the "
        "endotracheal tube (significant).",
    ),
)


def _user_turn(reference: str, candidate: str) -> str:
    return f"Reference report:\n{reference.strip()}\n\nCandidate report:\n{candidate.strip()}"


def format_answer(counts: dict[str, int], notes: str | None = None) -> str:
    """The strict JSON answer for 12 counts (what the worked examples show the judge)."""
    obj: dict[str, Any] = {}
    if notes:
        obj["notes"] = notes
    for key in _TYPE_KEYS:
        obj[key] = {"significant": int(counts[f"{key}_significant"]), "insignificant": int(counts[f"{key}_insignificant"])}
    return json.dumps(obj)


def build_messages(reference: str, candidate: str) -> list[dict[str, str]]:
    """Chat messages for judging one pair: the system prompt, the five worked examples as
    user/assistant turns, then the pair to judge."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for ref, cand, counts, notes in EXAMPLES:
        messages.append({"role": "user", "content": _user_turn(ref, cand)})
        messages.append({"role": "assistant", "content": format_answer(counts, notes)})
    messages.append({"role": "user", "content": _user_turn(reference, candidate)})
    return messages


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object; give each count once")
        seen[key] = value
    return seen


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, float, list, dict)) or value is None else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_answer(text: str) -> dict[str, int]:
    """Parse a judge reply into the 12 counts (keys :data:`COUNT_COLUMNS`); raise ``ValueError``
    describing what is wrong otherwise.

    Strict: the reply must be one JSON object (optionally inside a single ```json fence) with
    exactly the six type keys (plus an optional string ``notes``), each holding integer
    ``significant`` and ``insignificant`` counts in ``[0, MAX_COUNT]``. A key given twice anywhere
    in the reply is rejected (JSON would silently keep the last one). Nothing is guessed or defaulted.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not a single JSON object ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ValueError("the reply is JSON nested too deeply to be an answer") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the reply is JSON {type(obj).__name__}, not an object")
    extra = sorted(set(obj) - set(_TYPE_KEYS) - {"notes"})
    missing = [k for k in _TYPE_KEYS if k not in obj]
    if extra or missing:
        parts = ([f"missing keys {', '.join(missing)}"] if missing else []) + ([f"unexpected keys {', '.join(extra)}"] if extra else [])
        raise ValueError("; ".join(parts))
    if "notes" in obj and not isinstance(obj["notes"], str):
        raise ValueError("'notes' must be a string")
    counts: dict[str, int] = {}
    for key in _TYPE_KEYS:
        entry = obj[key]
        if not isinstance(entry, dict) or set(entry) != {"significant", "insignificant"}:
            raise ValueError(f"{key} must be an object with exactly 'significant' and 'insignificant'")
        for kind in ("significant", "insignificant"):
            value = entry[kind]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise ValueError(f"{key}.{kind} must be an integer in [0, {MAX_COUNT}], got {_shown(value)}")
            counts[f"{key}_{kind}"] = value
    return {c: counts[c] for c in COUNT_COLUMNS}
