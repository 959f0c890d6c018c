"""Rule-based sectioning: header forms, MIMIC conventions, and agreement on real Open-I reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from llavarad.data._sectioning_eval import read_separated_reports, rejoin_report, section_agreement
from llavarad.data.sections import SectionerConfig, split_sections


def test_mimic_style_report_with_deid_marks_and_wrapped_lines() -> None:
    text = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
            " INDICATION:  ___F with new cough, eval for pneumonia\n\n TECHNIQUE:  Chest PA and lateral\n\n"
            " COMPARISON:  ___ at 10:42\n\n FINDINGS: \n\n The heart size is normal.  There is no focal\n"
            " consolidation, effusion, or pneumothorax.\n \n IMPRESSION: \n\n No acute process.\n")
    s = split_sections(text)
    assert s.indication == "___F with new cough, eval for pneumonia"
    assert s.technique == "CHEST (PA AND LAT) Chest PA and lateral"  # EXAMINATION and TECHNIQUE both
    assert s.comparison == "___ at 10:42"
    assert s.findings == "The heart size is normal. There is no focal consolidation, effusion, or pneumothorax."
    assert s.impression == "No acute process."
    assert s.other == {"preamble": "FINAL REPORT"}


@pytest.mark.parametrize("header,section", [
    ("HISTORY", "indication"), ("REASON FOR EXAM", "indication"), ("Clinical information", "indication"),
    ("INDICATON", "indication"), ("COMPARISION", "comparison"), ("FINIDNGS", "findings"),
    ("IMPRESION", "impression"), ("CONCLUSION", "impression"), ("Findings", "findings"),
])
def test_synonyms_and_misspellings(header: str, section: str) -> None:
    s = split_sections(f"{header}: some text here.\nOTHER THING: x")
    assert getattr(s, section) == "some text here."


def test_inline_headers_without_full_stop_and_own_line_headers() -> None:
    s = split_sections("INDICATION: cough COMPARISON: none Findings: Clear lungs. IMPRESSION: Normal.")
    assert (s.indication, s.comparison, s.findings, s.impression) == ("cough", "none", "Clear lungs.", "Normal.")
    s = split_sections("FINDINGS\nLungs are clear.\nIMPRESSION\nNormal chest.")
    assert s.findings == "Lungs are clear." and s.impression == "Normal chest."


def test_words_before_colon_in_text_are_not_headers() -> None:
    s = split_sections("FINDINGS: Heart size: normal. Lungs: clear. Left knee: no fracture at 10:42. cp EXAM history")
    assert s.findings == "Heart size: normal. Lungs: clear. Left knee: no fracture at 10:42. cp EXAM history"


def test_merged_findings_impression_policy() -> None:
    text = "INDICATION: fever\nFINDINGS AND IMPRESSION: Lungs are clear."
    assert split_sections(text).impression == "Lungs are clear." and split_sections(text).findings is None
    assert split_sections(text).merged
    s = split_sections(text, SectionerConfig(merged_to="findings"))
    assert s.findings == "Lungs are clear." and s.impression is None
    s = split_sections(text, SectionerConfig(merged_to="both"))
    assert s.findings == s.impression == "Lungs are clear."


def test_numbered_lists_and_unknown_headers() -> None:
    text = "WET READ: ___ 10:42 PM\nIMPRESSION:\n1. Small left effusion.\n2. Line in place.\nRECOMMENDATION(S): CT."
    s = split_sections(text)
    assert s.impression == "1. Small left effusion. 2. Line in place."
    assert s.other["wet read"] == "___ 10:42 PM" and "recommendation(s)" in s.other
    s = split_sections(text, SectionerConfig(strip_numbering=True))
    assert s.impression == "Small left effusion. Line in place."


def test_empty_and_headerless() -> None:
    assert split_sections(None).as_dict() == dict.fromkeys(("indication", "comparison", "technique", "findings", "impression"))
    s = split_sections("Lungs are clear.")
    assert s.findings is None and s.other == {"untitled": "Lungs are clear."}
    assert split_sections("Lungs are clear.", SectionerConfig(headerless_to="findings")).findings == "Lungs are clear."
    with pytest.raises(ValueError, match="merged_to"):
        SectionerConfig(merged_to="nowhere")  # type: ignore[arg-type]


def test_rejoin_is_deterministic() -> None:
    import random

    row = {"indication": "Cough.", "comparison": "", "findings": "Clear.", "impression": "Normal."}
    assert rejoin_report(row, random.Random(3)) == rejoin_report(row, random.Random(3))


def test_agreement_on_real_openi_reports(shared_data: Path) -> None:
    """Re-join the source-separated Open-I sections with varied headers and re-split them.

    Measured 2026-11: indication 99.63%, comparison 99.96%, findings 99.93%, impression 99.97% of the
    reports that have the section (seed 0); thresholds sit just under.
    """
    rows = read_separated_reports(shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv")
    assert len(rows) == 3080
    result = section_agreement(rows, seed=0)
    thresholds = {"indication": 0.993, "comparison": 0.997, "findings": 0.997, "impression": 0.997}
    for name, minimum in thresholds.items():
        assert result[name]["present"] >= minimum, (name, result[name])
