"""Measure the sectioner against reports whose sections a source already separated (Open-I).

The separated sections are re-joined into one free-text report with realistic, varied headers and
layouts (deterministic under a seed), re-split with :func:`~llavarad.data.sections.split_sections`
and compared section by section after whitespace normalisation. Used by the test suite, the
``benchmarks/sectioning.py`` script and ``llavarad data section --evaluate``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from llavarad.data.sections import SECTION_NAMES, SectionerConfig, normalize_whitespace, split_sections

logger = logging.getLogger(__name__)

__all__ = ["EVAL_SECTIONS", "read_separated_reports", "rejoin_report", "section_agreement"]

#: The sections Open-I separates (it has no technique section).
EVAL_SECTIONS: tuple[str, ...] = ("indication", "comparison", "findings", "impression")

_HEADERS: dict[str, tuple[str, ...]] = {
    "indication": ("INDICATION", "HISTORY", "REASON FOR EXAM", "CLINICAL INFORMATION", "Indication",
                   "Clinical history", "REASON FOR EXAMINATION", "INDICATON"),
    "comparison": ("COMPARISON", "Comparison", "COMPARISONS", "PRIOR STUDIES", "COMPARISION"),
    "findings": ("FINDINGS", "Findings", "FINDING", "FINIDNGS", "REPORT"),
    "impression": ("IMPRESSION", "Impression", "CONCLUSION", "IMPRESION", "IMPRESSIONS"),
}
_PREAMBLES = ("", "", "FINAL REPORT\n", "EXAMINATION: CHEST (PA AND LAT)\n", "CHEST RADIOGRAPH\n")


def read_separated_reports(path: str | Path) -> list[dict[str, str]]:
    """Read an Open-I style CSV with indication, comparison, findings, impression columns.

    Read through :func:`llavarad.io.text.read_csv`: a missing column is an InputError naming the
    columns found; unreadable rows are logged with their line and left out of the measurement.
    """
    from llavarad.io.text import read_csv

    table = read_csv(path, required=EVAL_SECTIONS)
    for _line, error in table.problems:
        logger.warning("%s (not measured)", error)
    return [row for _line, row in table.rows]


def rejoin_report(sections: Mapping[str, str | None], rng: random.Random) -> str:
    """Join separated sections into one report with randomly chosen headers and layout."""
    layout = rng.choice(("lines", "inline", "own_line", "lines"))
    pieces = [rng.choice(_PREAMBLES)]
    for name in EVAL_SECTIONS:
        body = (sections.get(name) or "").strip()
        if not body:
            continue
        header = rng.choice(_HEADERS[name])
        if layout == "inline":
            pieces.append(f"{header}: {body} ")
        elif layout == "own_line":
            pieces.append(f"{header}:\n {body}\n\n")
        else:
            pieces.append(f"{header}: {body}\n")
    return "".join(pieces)


def section_agreement(rows: Iterable[Mapping[str, str | None]], config: SectionerConfig | None = None,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-section exact-match agreement of re-split reports with their source sections.

    Returns ``{section: {"all": fraction over every report (empty == empty counts),
    "present": fraction over reports where the source has the section, "n_present": count}}``.
    """
    rng = random.Random(seed)
    hits_all = dict.fromkeys(EVAL_SECTIONS, 0)
    hits_present = dict.fromkeys(EVAL_SECTIONS, 0)
    present = dict.fromkeys(EVAL_SECTIONS, 0)
    n = 0
    for row in rows:
        n += 1
        got = split_sections(rejoin_report(row, rng), config).as_dict()
        for name in EVAL_SECTIONS:
            ref = normalize_whitespace(row.get(name))
            hyp = normalize_whitespace(got.get(name))
            ok = ref == hyp
            hits_all[name] += ok
            if ref:
                present[name] += 1
                hits_present[name] += ok
    assert set(EVAL_SECTIONS) <= set(SECTION_NAMES)
    return {
        name: {
            "all": hits_all[name] / n if n else 0.0,
            "present": hits_present[name] / present[name] if present[name] else 0.0,
            "n_present": float(present[name]),
        }
        for name in EVAL_SECTIONS
    }
