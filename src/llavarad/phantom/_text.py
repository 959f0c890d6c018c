"""Report, indication and label writing for synthetic phantoms.

Private helper of :mod:`llavarad.phantom`. Every positive finding becomes one sentence in
standard radiology phrasing that names the finding with its side, location and severity; absent
key findings get explicit negatives ("No pneumothorax.") in a varying order. The wording is chosen
so that a CheXpert-style rule labeler (mention phrases plus "no ..." negation) reads back exactly
the labels written next to the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

if TYPE_CHECKING:
    from llavarad.phantom._spec import FindingSpec, PhantomSpec

__all__ = ["FINDING_OBSERVATION", "Report", "finding_entries", "write_report"]

#: Each phantom finding and the CheXpert observation its sentence is labelled as.
FINDING_OBSERVATION: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "pleural_effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "atelectasis": "Atelectasis",
    "lung_lesion": "Lung Lesion",
    "endotracheal_tube": "Support Devices",
    "central_line": "Support Devices",
    "chest_tube": "Support Devices",
    "pacemaker": "Support Devices",
}

_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
_ZONE = {"upper": "upper", "middle": "mid", "lower": "lower"}

# Negative sentences for absent key findings: (observation, alternatives). "Lungs are clear." is
# added separately; it carries no CheXpert label.
_NEGATIVES: dict[str, tuple[str, ...]] = {
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "pleural_effusion": ("No pleural effusion.", "No pleural effusions."),
    "cardiomegaly": ("Heart size is normal.", "The heart is not enlarged."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "edema": ("No pulmonary edema.", "There is no pulmonary edema."),
}

_INDICATIONS_GENERIC = (
    "Chest pain.",
    "Cough.",
    "Preoperative evaluation.",
    "Shortness of breath.",
    "Fever and cough.",
    "History of hypertension.",
    "Follow-up.",
    "Weakness.",
)
_INDICATIONS_FOR = {
    "cardiomegaly": ("Shortness of breath.", "Congestive heart failure.", "Leg swelling and dyspnea."),
    "pleural_effusion": ("Shortness of breath.", "Dyspnea.", "Decreased breath sounds."),
    "pneumothorax": ("Chest pain.", "Sudden shortness of breath.", "Evaluate for pneumothorax."),
    "consolidation": ("Fever and cough.", "Productive cough.", "Evaluate for pneumonia."),
    "edema": ("Shortness of breath.", "Congestive heart failure.", "Dyspnea and orthopnea."),
    "atelectasis": ("Postoperative.", "Low oxygen saturation.", "Shortness of breath."),
    "lung_lesion": ("Cough.", "Weight loss.", "History of smoking."),
    "endotracheal_tube": ("Intubated.", "Tube placement.", "Evaluate tube position."),
    "central_line": ("Line placement.", "Evaluate line position."),
    "chest_tube": ("Chest tube placement.", "Evaluate chest tube."),
    "pacemaker": ("Pacemaker check.", "Syncope."),
}
_NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")


@dataclass
class Report:
    """One phantom's text: indication, findings, impression, labels and per-finding wording."""

    indication: str
    findings: str
    impression: str
    labels: dict[str, float | None]
    #: finding name -> (sentence, words naming it), in the order the sentences appear.
    mentions: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _side_word(side: str | None) -> str:
    return "bilateral" if side == "bilateral" else (side or "")


def _sentence(f: FindingSpec, rng: np.random.Generator, fixed: bool = False) -> tuple[str, str, list[str]]:
    """Return (findings sentence, short impression phrase, words naming the finding)."""
    sev, side, loc = f.severity or "", f.side or "", f.location or ""
    k = int(rng.integers(0, 2))  # drawn even when fixed, so the random stream does not depend on it
    if fixed:
        k = 0
    if f.finding == "cardiomegaly":
        if k == 0:
            return f"The heart is {_ADVERB[sev]} enlarged.", f"{_cap(sev)} cardiomegaly.", ["heart", _ADVERB[sev], "enlarged"]
        return f"{_cap(sev)} cardiomegaly.", f"{_cap(sev)} cardiomegaly.", [sev, "cardiomegaly"]
    if f.finding == "pleural_effusion":
        if side == "bilateral":
            words = [sev, "bilateral", "pleural", "effusions"]
            s = f"{_cap(sev)} bilateral pleural effusions." if k == 0 else f"There are {sev} bilateral pleural effusions."
            return s, f"{_cap(sev)} bilateral pleural effusions.", words
        words = [sev, side, "pleural", "effusion"]
        s = f"{_cap(sev)} {side} pleural effusion." if k == 0 else f"There is a {sev} {side} pleural effusion."
        return s, f"{_cap(sev)} {side} pleural effusion.", words
    if f.finding == "pneumothorax":
        if loc == "apical":
            words = [sev, side, "apical", "pneumothorax"]
            s = f"There is a {sev} {side} apical pneumothorax." if k == 0 else f"{_cap(sev)} {side} apical pneumothorax."
            return s, f"{_cap(sev)} {side} apical pneumothorax.", words
        words = [sev, side, "pneumothorax", "lateral"]
        s = (f"{_cap(sev)} {side} pneumothorax along the lateral chest wall." if k == 0
             else f"There is a {sev} {side} pneumothorax, predominantly lateral.")
        return s, f"{_cap(sev)} {side} pneumothorax.", words
    if f.finding == "consolidation":
        zone = _ZONE[loc]
        adj = {"small": "small focal", "moderate": "moderate patchy", "large": "extensive"}[sev]
        words = [*adj.split(), "consolidation", side, zone, "lung", "zone"]
        s = (f"{_cap(adj)} consolidation in the {side} {zone} lung zone." if k == 0
             else f"There is {adj} consolidation in the {side} {zone} lung zone.")
        return s, f"{_cap(side)} {zone} zone consolidation.", words
    if f.finding == "edema":
        words = [sev, "pulmonary", "edema", "perihilar"]
        s = f"{_cap(sev)} perihilar pulmonary edema." if k == 0 else f"There is {sev} pulmonary edema with perihilar predominance."
        return s, f"{_cap(sev)} pulmonary edema.", words
    if f.finding == "atelectasis":
        if side == "bilateral":
            words = [sev, "bibasilar", "atelectasis"]
            s = f"{_cap(sev)} bibasilar atelectasis." if k == 0 else f"There is {sev} bibasilar atelectasis."
            return s, f"{_cap(sev)} bibasilar atelectasis.", words
        words = [sev, side, "basilar", "atelectasis"]
        s = f"{_cap(sev)} {side} basilar atelectasis." if k == 0 else f"{_cap(sev)} atelectasis at the {side} lung base."
        if k == 1:
            words = [sev, "atelectasis", side, "lung", "base"]
        return s, f"{_cap(sev)} {side} basilar atelectasis.", words
    if f.finding == "lung_lesion":
        zone = _ZONE[loc]
        noun = "mass" if sev == "large" else "nodule"
        adj = {"small": "small", "moderate": "moderate-sized", "large": "large"}[sev]
        words = [adj, noun, side, zone, "lung", "zone"]
        s = (f"There is a {adj} {noun} in the {side} {zone} lung zone." if k == 0
             else f"{_cap(adj)} {noun} in the {side} {zone} lung zone.")
        return s, f"{_cap(adj)} {side} {zone} zone {noun}.", words
    if f.finding == "endotracheal_tube":
        s = "Endotracheal tube in standard position." if k == 0 else "An endotracheal tube terminates above the carina."
        return s, "", ["endotracheal", "tube"]
    if f.finding == "central_line":
        s = (f"{_cap(side)} internal jugular central venous line with tip in the superior vena cava." if k == 0
             else f"{_cap(side)} internal jugular central line terminates in the superior vena cava.")
        return s, "", [side, "internal", "jugular", "central", "line"] if k else [side, "internal", "jugular", "central", "venous", "line"]
    if f.finding == "chest_tube":
        s = f"{_cap(side)} chest tube in place." if k == 0 else f"A {side} chest tube is present."
        return s, "", [side, "chest", "tube"]
    if f.finding == "pacemaker":
        s = (f"{_cap(side)}-sided pacemaker with leads in the right atrium and right ventricle." if k == 0
             else f"{_cap(side)} chest wall pacemaker with two leads in expected position.")
        return s, "", [f"{side}-sided", "pacemaker", "leads"] if k == 0 else [side, "chest", "wall", "pacemaker", "leads"]
    raise ValueError(f"unknown phantom finding {f.finding!r}; expected one of {', '.join(FINDING_OBSERVATION)}")


def write_report(rng: np.random.Generator, spec: PhantomSpec, *, negative_prob: float,
                 informative_indication_prob: float, fixed_phrasing: bool = False) -> Report:
    """Write the report of ``spec``; the same ``rng`` state always gives the same text.

    ``fixed_phrasing`` picks the first phrasing of every sentence and a fixed order of negatives
    (simpler text for tiny models); it consumes the same random draws, so images do not change.
    """
    devices = [f for f in spec.findings if FINDING_OBSERVATION[f.finding] == "Support Devices"]
    patho = [f for f in spec.findings if f not in devices]
    mentions: dict[str, tuple[str, list[str]]] = {}
    impressions: list[str] = []
    sentences: list[str] = []
    # Devices first, then pathology in a fixed anatomical order (heart, pleura, parenchyma).
    for f in devices + patho:
        sentence, short, words = _sentence(f, rng, fixed_phrasing)
        sentences.append(sentence)
        mentions[f.finding] = (sentence, words)
        if short:
            impressions.append(short)
    present = {f.finding for f in spec.findings}
    negatives: list[str] = []
    labels: dict[str, float | None] = {obs: None for obs in CHEXPERT_OBSERVATIONS}
    for name, options in _NEGATIVES.items():
        if name not in present and rng.random() < negative_prob:
            choice = int(rng.integers(0, len(options)))
            negatives.append(options[0 if fixed_phrasing else choice])
            labels[FINDING_OBSERVATION[name]] = 0.0
    lung_findings = {"consolidation", "edema", "atelectasis", "lung_lesion", "pneumothorax", "pleural_effusion"}
    if not present & lung_findings and rng.random() < 0.7:
        negatives.append("Lungs are clear.")
    order = rng.permutation(len(negatives))
    if fixed_phrasing:
        order = np.arange(len(negatives))
    sentences += [negatives[i] for i in order]
    for f in spec.findings:
        labels[FINDING_OBSERVATION[f.finding]] = 1.0
    if not patho:
        labels["No Finding"] = 1.0
        choice = int(rng.integers(0, 2))
        impression = _NORMAL_IMPRESSIONS[0 if fixed_phrasing else choice]
        if devices:
            impression = "Support devices as described. " + impression
    else:
        impression = " ".join(impressions)
    indication = _indication(rng, spec, informative_indication_prob)
    return Report(indication=indication, findings=" ".join(sentences), impression=impression, labels=labels,
                  mentions=mentions)


def _indication(rng: np.random.Generator, spec: PhantomSpec, informative_prob: float) -> str:
    """A short clinical reason: sometimes hinting at one present finding, otherwise generic."""
    names = [f.finding for f in spec.findings]
    if names and rng.random() < informative_prob:
        pool = _INDICATIONS_FOR[names[int(rng.integers(0, len(names)))]]
        return pool[int(rng.integers(0, len(pool)))]
    return _INDICATIONS_GENERIC[int(rng.integers(0, len(_INDICATIONS_GENERIC)))]


def finding_entries(spec: PhantomSpec, report: Report, mask_paths: dict[str, str | None]) -> list[dict[str, Any]]:
    """The manifest's ``phantom_findings`` list: one dict per drawn finding."""
    out = []
    for f in spec.findings:
        sentence, words = report.mentions[f.finding]
        out.append({
            "finding": f.finding,
            "observation": FINDING_OBSERVATION[f.finding],
            "side": f.side,
            "location": f.location,
            "severity": f.severity,
            "mask": mask_paths.get(f.finding),
            "sentence": sentence,
            "words": words,
        })
    return out
