"""Synthetic findings from image labels, with the template sentences of Supplementary Table 5.

Datasets that release labels but no reports (CheXpert, BraX, CANDID-PTX, VinDr-CXR, object-CXR)
get one sentence per known label: a positive, negative or uncertain template around the
condition's name, and the dedicated sentences for "No Finding", absent support devices and
pleural "other" findings. Blank (unknown) labels produce no sentence. The template for each
sentence is drawn from a random generator seeded by ``(seed, record key)``, so a record's text
does not depend on processing order: a resumed or parallel build gives identical text.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "CONDITION_PHRASES",
    "NEGATIVE",
    "NO_FINDINGS",
    "NO_PLEURAL_OTHER",
    "NO_SUPPORT_DEVICES",
    "PLEURAL_OTHER",
    "POSITIVE",
    "UNCERTAIN",
    "UNCERTAIN_PLEURAL_OTHER",
    "TemplateResult",
    "synthesize_report",
]

# Supplementary Table 5, verbatim (including its grammar). "<c>" is the condition phrase.
POSITIVE: tuple[str, ...] = (
    "The radiograph reveals evidence of <c>.",
    "The radiograph demonstrates areas consistent with <c>.",
    "There are findings suggestive of <c>.",
    "There is presence of <c>.",
    "There is a positive finding of <c>.",
    "The radiographic examination of the chest reveals the presence of <c>.",
    "There is evidence of <c>.",
    "<C> is present.",
)
NEGATIVE: tuple[str, ...] = (
    "No evidence of <c> is observed.",
    "<C> is not identified.",
    "The radiograph does not show any signs of <c>.",
    "There is no indications of <c> in the radiograph.",
    "No <c> is identified in the examined region.",
    "No signs of <c> is observed.",
    "The image does not conclusively indicate <c>.",
)
UNCERTAIN: tuple[str, ...] = (
    "There is uncertainty regarding <c>.",
    "The presence of <c> is uncertain based on the current examination.",
    "The image shows uncertainty in <c>.",
)
NO_FINDINGS: tuple[str, ...] = (
    "The radiographic examination of the chest reveals no significant abnormalities or pathologies.",
    "The radiographic examination of the patient does not reveal any significant abnormal findings.",
)
NO_SUPPORT_DEVICES: tuple[str, ...] = (
    "There is no evidence of any support devices in the chest area.",
    "There are no support devices seen in the current study.",
    "There are no support devices in place.",
)
PLEURAL_OTHER: tuple[str, ...] = (
    "There are some pleural abnormalities that do not fit into the common categories of pleural diseases.",
    "Other pleural abnormalities are also observed.",
)
NO_PLEURAL_OTHER: tuple[str, ...] = (
    "No other pleural abnormalities were detected in the radiograph.",
    "There are no findings related to other pleural abnormalities.",
)
UNCERTAIN_PLEURAL_OTHER: tuple[str, ...] = (
    "There are ambiguous findings related to the pleura.",
    "There is no visible pleural abnormality, although the image does not completely exclude all potential "
    "pleural conditions.",
)

#: Label name (case-insensitive) -> condition phrase; other names are lower-cased as they are.
CONDITION_PHRASES: dict[str, str] = {
    "enlarged cardiomediastinum": "enlarged cardiomediastinum",
    "support devices": "support devices",
    "fracture": "fracture",
    # CANDID-PTX
    "rib fracture": "acute rib fracture",
    "acute rib fracture": "acute rib fracture",
    "chest tube": "intercostal chest tube",
    # VinDr-CXR
    "ild": "interstitial lung disease",
    "nodule/mass": "nodule or mass",
    "other lesion": "other lesion",
    "other diseases": "other disease",
    "copd": "chronic obstructive pulmonary disease",
    "aortic enlargement": "aortic enlargement",
    "pleural thickening": "pleural thickening",
    "pulmonary fibrosis": "pulmonary fibrosis",
    # object-CXR
    "foreign object": "foreign object",
}
#: Labels written with their own (lower-cased) name: the CheXpert observations and the VinDr-CXR
#: classes that need no rephrasing. A name neither here nor in CONDITION_PHRASES is refused.
_AS_IS = frozenset({
    "cardiomegaly", "lung lesion", "lung opacity", "edema", "consolidation", "pneumonia", "atelectasis",
    "pneumothorax", "pleural effusion", "calcification", "clavicle fracture", "emphysema", "enlarged pa",
    "infiltration", "lung cavity", "lung cyst", "mediastinal shift", "lung tumor", "tuberculosis",
})
#: Positive labels that do not contradict "No Finding" (devices are not findings, as in CheXpert).
_NOT_A_FINDING = frozenset({"support devices", "chest tube", "foreign object"})
_NO_FINDING = frozenset({"no finding", "no findings"})
_PLEURAL_OTHER = frozenset({"pleural other", "pleural others"})


@dataclass(frozen=True)
class TemplateResult:
    """A synthetic report and how many sentences of each kind it holds."""

    text: str
    n_positive: int
    n_negative: int
    n_uncertain: int


def _fill(template: str, phrase: str) -> str:
    return template.replace("<C>", phrase[:1].upper() + phrase[1:]).replace("<c>", phrase)


def _value(v: object) -> int | None:
    """1 / 0 / -1 from a label value (float, int, str); None for blank or NaN."""
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"label value {v!r} is not 1, 0, -1 or blank") from exc
    if f != f:  # NaN
        return None
    if f not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {v!r} is not 1, 0, -1 or blank")
    return int(f)


def _check_labels(labels: Mapping[str, object]) -> None:
    """Refuse a label name no template knows and "No Finding" = 1 beside a positive or uncertain finding."""
    if not isinstance(labels, Mapping):
        raise ValueError(f"expected a mapping {{label: 1, 0, -1 or blank}}, got {type(labels).__name__}")
    known = set(CONDITION_PHRASES) | _AS_IS | _NO_FINDING | _PLEURAL_OTHER
    unknown = [str(n) for n in labels if not isinstance(n, str) or n.strip().lower() not in known]
    if unknown:
        raise ValueError(f"unknown label(s) {', '.join(map(repr, unknown[:5]))}: no template names them; use the "
                         "CheXpert observations or a dataset's classes (e.g. 'Cardiomegaly', 'Pleural Effusion')")
    values = {n.strip().lower(): _value(v) for n, v in labels.items()}
    if any(values.get(n) == 1 for n in _NO_FINDING):
        found = [n for n, v in labels.items() if values[n.strip().lower()] in (1, -1)
                 and n.strip().lower() not in _NO_FINDING | _NOT_A_FINDING]
        if found:
            raise ValueError(f"'No Finding' is 1 but {', '.join(map(repr, found[:5]))} is positive or uncertain; "
                             "the labels contradict each other")


def synthesize_report(labels: Mapping[str, object], key: str, seed: int = 0) -> TemplateResult:
    """Write a synthetic findings paragraph from labels (Supplementary Table 5).

    Args:
        labels: ``{label name: 1, 0, -1 or blank}`` in the order the sentences should appear
            (e.g. CheXpert's 14 observations, CANDID-PTX's three, VinDr-CXR's classes).
        key: a stable id of the record; with ``seed`` it fixes the template choices.
        seed: the build's seed.

    Returns:
        :class:`TemplateResult`; ``text`` is empty when every label is blank (the caller records
        that the record has no text rather than dropping it silently).

    Raises:
        ValueError: a label value is not 1, 0, -1 or blank (names the value), a label name has no
            template, or "No Finding" is 1 beside a positive or uncertain finding.
    """
    _check_labels(labels)
    rng = random.Random(f"{seed}:{key}")
    sentences: list[str] = []
    counts = {1: 0, 0: 0, -1: 0}
    for name, raw in labels.items():
        value = _value(raw)
        if value is None:
            continue
        lname = name.strip().lower()
        counts[value] += 1
        if lname in _NO_FINDING:
            if value == 1:
                sentences.append(rng.choice(NO_FINDINGS))
            else:
                counts[value] -= 1  # "No Finding = 0" says nothing by itself
            continue
        if lname in _PLEURAL_OTHER:
            pool = {1: PLEURAL_OTHER, 0: NO_PLEURAL_OTHER, -1: UNCERTAIN_PLEURAL_OTHER}[value]
            sentences.append(rng.choice(pool))
            continue
        if lname == "support devices" and value == 0:
            sentences.append(rng.choice(NO_SUPPORT_DEVICES))
            continue
        phrase = CONDITION_PHRASES.get(lname, lname)
        pool = {1: POSITIVE, 0: NEGATIVE, -1: UNCERTAIN}[value]
        sentences.append(_fill(rng.choice(pool), phrase))
    return TemplateResult(" ".join(sentences), counts[1], counts[0], counts[-1])
