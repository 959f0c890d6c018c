"""Mention and unmention phrases of the 14 CheXpert observations, as data.

Each phrase is a regular-expression fragment matched on the *cleaned* report (lower case, one
space between words, a space after every period and comma: see :func:`._text.clean_report`).
Fragments start at a word start (``\\b`` is added in front) and may end inside a word, so
``"atelecta"`` covers atelectasis, atelectatic and atelectases. A fragment that must end at a
word end spells ``\\b`` itself.

A *mention* phrase names the observation. An *unmention* phrase is a larger phrase that contains
a mention but is about something else (a calcified nodule is a granuloma, not a lung lesion; a
pericardial effusion is not a pleural one): a mention overlapping an unmention match is dropped.

The No Finding list names abnormalities that are none of the 13 conditions: when one of them is
positive or uncertain, the report has a finding and No Finding stays blank (CheXpert's rule).

Phrases written for this project (behaviour modelled on the CheXpert labeler's design, own lists).
"""

from __future__ import annotations

__all__ = [
    "MENTIONS",
    "UNMENTIONS",
    "HEDGED_MENTIONS",
    "HEART_FAILURE_MENTIONS",
    "SIZE_ONLY_MENTIONS",
]

MENTIONS: dict[str, tuple[str, ...]] = {
    "No Finding": (
        "emphysema", "blunt", "density", "densities", "elevat", "eventration", "scoliosis",
        "degenerat", "calcifi", "hyperinflat", "hyperexpan", "hyperaera", "overinflat",
        "bronchospasm", "asthma", "hernia", "copd\\b", "chronic obstructive", "plaque",
        "osteophyt", "spondylo", "aortic (?:disease|ectasia|tortuosity|aneurysm|dilat)",
        "tortuous", "tortuosity", "ectatic", "atheroscl", "bronchiectasis", "bronchiolitis",
        "bronchitis", "airways? disease", "reactive airway", "thickening", "cephalization",
        "aspiration", "bullae", "bullous", "bulla\\b", "contusion", "osteopenia", "osteoporo",
        "metasta", "granulom", "pneumomediastinum", "pneumoperitoneum", "osteodystrophy",
        "cuffing", "lucenc", "inflam", "fissure", "hypertension", "prominen", "kyphosis",
        "kyphotic", "defib", "deformit", "bullet", "reticula", "thoracentesis", "volume loss",
        "hemorrhage", "hematoma", "radiopaque", "aerophagia", "arthropathy", "arthritic",
        "tracheostomy", "sternotomy", "thoracotomy", "cholecystectomy", "postoperative",
        "post-operative", "postsurgical", "surgical", "lobectomy", "pneumonectomy",
        "mastectomy", "cabg\\b", "scar", "fibrotic", "cyst", "cavit", "adenopathy",
        "lymphadenopathy", "enlarged (?:lymph|node)", "dextro", "situs", "azygos lobe",
        "cervical rib", "foreign body", "shrapnel", "bronchovascular crowding",
        "pectus", "hyperlucen", "air trapping", "abnormal", "low (?:lung )?volumes?",
        "(?:decreased|diminished|reduced) lung volumes?", "hypoinflat", "hypoventilat",
        "ectasia", "spurring", "syndesmophyt", "breast (?:implant|prosthes)",
    ),
    "Enlarged Cardiomediastinum": (
        "mediastinum", "cardiomediastinum", "(?:cardio)?mediastinal (?:contour|silhouette|configuration|"
        "width|widening|shadow|structures|size)", "contour", "pericardial silhouette",
        "cardiac silhouette and (?:pulmonary )?vascularity", "widened mediastin",
        "mediastinal widening", "hilar (?:contour|silhouette)",
    ),
    "Cardiomegaly": (
        "cardiomegal", "the heart\\b", "heart\\b(?! failure)", "heart size", "cardiac enlargement",
        "cardiac size", "cardiac shadow", "cardiac contour", "cardiac silhouette",
        "enlarged heart", "enlarged cardiac", "cardiac borders?",
    ),
    "Lung Lesion": (
        "mass\\b", "masses\\b", "masslike", "mass-like", "nodules?\\b", "nodular lesion",
        "micronodul", "lumps?\\b",
        "cavitary lesion", "carcinoma", "neoplasm", "tumou?r", "malignan",
        "pulmonary lesion", "lung lesion", "parenchymal lesion",
    ),
    "Lung Opacity": (
        "opacit", "opacification", "decreased translucency", "increased density",
        "increased densities", "air ?-?space (?:disease|opacit|process|filling)",
        "infiltrat", "interstitial (?:marking|pattern|opacit|lung|prominence|thickening|"
        "disease|change|abnormalit)", "reticular (?:pattern|marking|opacit|change)",
        "reticulation", "reticulonodular", "parenchymal scarring", "peribronchial thickening",
        "wall thickening", "scar", "ground[ -]glass", "haziness", "hazy",
    ),
    "Edema": (
        "edema", "heart failure", "chf\\b", "vascular congestion", "pulmonary congestion",
        "indistinctness", "vascular prominence", "fluid overload", "volume overload",
    ),
    "Consolidation": ("consolidat",),
    "Pneumonia": (
        "pneumonia", "bronchopneumonia", "pneumonitis", "infection", "infectious", "infective",
    ),
    "Atelectasis": ("atelecta", "collapse"),
    "Pneumothorax": ("pneumothora", "ptx\\b", "hydropneumothora"),
    "Pleural Effusion": (
        "effusion", "pleural fluid", "hydrothorax", "fluid in the (?:right |left )?"
        "(?:pleural|fissure)",
    ),
    "Pleural Other": (
        "pleural thickening", "pleural-based thickening", "fibrosis", "fibrothorax",
        "pleural scar", "pleural parenchymal scar", "pleuro-?parenchymal scar",
        "pleuro-?pericardial scar", "pleural plaque", "pleural calcification",
    ),
    "Fracture": ("fracture", "fx\\b"),
    "Support Devices": (
        "pacer", "lines?\\b", "picc\\b", "tubes?\\b", "valve", "catheter", "pacemaker",
        "hardware", "arthroplast", "marker", "icd\\b", "defibrillat", "device", "drains?\\b",
        "plates?\\b", "screws?\\b", "cannula", "apparatus", "coils?\\b", "support device",
        "equipment", "mediport", "port-?a-?cath", "stents?\\b", "wires?\\b", "clips?\\b",
        "prosthes", "leads?\\b", "generator", "sutures?\\b", "staples?\\b", "fixation",
    ),
}

# Where the heart or mediastinum is only a landmark ("a nodule over the heart").
_PLACE = "(?:over(?:lying|lies|lie|lap)?|in|behind|projecting over|through|along|below|above|beneath)"
_SIDE = "(?:the )?(?:superior |inferior |left |right |upper |lower )?"

UNMENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (f"{_PLACE} {_SIDE}heart\\b", "heart failure"),
    "Enlarged Cardiomediastinum": (
        f"{_PLACE} {_SIDE}(?:mediastinum|cardiomediastinum|contour)",
        "(?:diaphragm|diaphragmatic|hemidiaphragm|hemidiaphragmatic|bony|osseous|rib|breast|"
        "skin|soft tissue|pleural|spinal|vertebral|lung|chest wall) contour",
    ),
    "Lung Lesion": (
        "calcified (?:granulomatous )?nodul", "massive", "mass effect", "nodular calcification",
        "calcified (?:lymph )?node", "granulomatous nodul", "soft tissue mass",
    ),
    "Lung Opacity": ("pleural scar",),
    "Pleural Effusion": ("pericardial effusion", "joint effusion"),
    "Edema": ("(?:soft[ -]tissue|subcutaneous|chest wall|extremity|facial|periorbital|scrotal) edema",),
    "Pneumonia": (
        "granulomatous (?:\\w+ )?infect", "(?:prior|old|previous|remote|healed|past) (?:\\w+ ){0,2}infect",
        "(?:tuberculo\\w*|histoplasm\\w*|fungal|mycobacteri\\w*) infect",
    ),
    "Atelectasis": ("(?:vertebral|compression|height|body) collapse", "collapse of (?:a |the )?vertebra"),
    "Support Devices": (
        "kerley", "septal lines?", "linear (?:atelecta|opacit|scar|densit)", "fissure lines?",
        "pleural lines?", "midline", "skin fold", "nipple markers?", "(?:no|without) (?:tubes?|lines?)",
        "lines? of (?:the )?(?:fissure|pleura)", "lead (?:apron|shield)",
    ),
    "No Finding": (
        "scar tissue", "bone density",
    ),
}

#: Mentions that CheXpert always reads as uncertain unless negated ("vascular congestion" hints
#: at edema without stating it).
HEDGED_MENTIONS: dict[str, tuple[str, ...]] = {
    "Edema": ("vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence"),
}

#: Mentions of heart failure: positive or uncertain, they also make Cardiomegaly uncertain.
HEART_FAILURE_MENTIONS: tuple[str, ...] = ("heart failure", "chf")

#: Cardiac and mediastinal *size* words: "stable", "unchanged" or "borderline" next to them says
#: nothing about enlargement, so such mentions become uncertain; "stable cardiomegaly" stays positive.
SIZE_ONLY_MENTIONS: tuple[str, ...] = (
    "heart", "size", "silhouette", "contour", "shadow", "mediastin", "cardiomediastin", "border",
    "configuration",
)
