"""The CheXprompt prompt: worked examples, message layout and the strict answer parser."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llavarad.prompts.chexprompt import (
    COUNT_COLUMNS,
    ERROR_TYPES,
    EXAMPLES,
    SYSTEM_PROMPT,
    build_messages,
    format_answer,
    parse_answer,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZERO = {key: {"significant": 0, "insignificant": 0} for key, _, _ in ERROR_TYPES}


def test_twelve_columns_in_paper_order():
    assert len(ERROR_TYPES) == 6 and [letter for _, letter, _ in ERROR_TYPES] == list("abcdef")
    assert len(COUNT_COLUMNS) == 12
    assert COUNT_COLUMNS[:2] == ("false_finding_significant", "false_finding_insignificant")


def test_five_worked_examples_round_trip_through_the_parser():
    assert len(EXAMPLES) == 5
    kinds_shown = set()
    for ref, cand, counts, notes in EXAMPLES:
        assert ref and cand and notes
        assert parse_answer(format_answer(counts, notes)) == counts
        kinds_shown |= {c.rsplit("_", 1)[0] for c, v in counts.items() if v}
    # together the examples show every one of the six error types
    assert kinds_shown == {key for key, _, _ in ERROR_TYPES}
    assert sum(sum(c.values()) for _, _, c, _ in EXAMPLES) > 0 and sum(EXAMPLES[0][2].values()) == 0


def test_examples_are_not_copied_from_the_openi_reports():
    path = DATA / "reports" / "openi_dev" / "openi_reports_dev.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared data folder sits beside the checkout)")
    with path.open(newline="", encoding="utf-8") as fh:
        corpus = " ".join(" ".join(filter(None, (r.get("findings"), r.get("impression")))) for r in csv.DictReader(fh)).lower()
    # stock phrases ("no pleural effusion") are shared by every radiologist; a copied report is not:
    # no example text, and no run of 9 consecutive words, may appear in the Open-I reports
    corpus = " ".join(corpus.replace(".", " ").replace(",", " ").split())
    for ref, cand, _, _ in EXAMPLES:
        for text in (ref, cand):
            words = text.lower().replace(".", " ").replace(",", " ").split()
            assert " ".join(words) not in corpus
            for i in range(len(words) - 8):
                span = " ".join(words[i:i + 9])
                assert span not in corpus, f"example text found verbatim in Open-I: {span!r}"


def test_messages_layout():
    msgs = build_messages("  Ref text.  ", "Cand text.")
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert [m["role"] for m in msgs[1:11]] == ["user", "assistant"] * 5
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"] == "Reference report:\nRef text.\n\nCandidate report:\nCand text."
    for key, letter, _ in ERROR_TYPES:
        assert f"({letter}) {key}" in SYSTEM_PROMPT
    assert "clinically significant" in SYSTEM_PROMPT


def test_parse_accepts_plain_fenced_and_notes():
    obj = dict(ZERO, wrong_severity={"significant": 2, "insignificant": 1})
    counts = parse_answer(json.dumps(obj))
    assert counts["wrong_severity_significant"] == 2 and counts["wrong_severity_insignificant"] == 1
    assert sum(counts.values()) == 3 and list(counts) == list(COUNT_COLUMNS)
    assert parse_answer("```json\n" + json.dumps(dict(obj, notes="x")) + "\n```") == counts


@pytest.mark.parametrize(
    "reply, message",
    [
        ("", "empty reply"),
        ("The candidate has no errors.", "not a single JSON object"),
        ("Here you go: " + json.dumps(ZERO), "not a single JSON object"),
        (json.dumps(ZERO)[:-5], "not a single JSON object"),  # partial reply
        ("[1, 2]", "not an object"),
        (json.dumps({k: v for k, v in ZERO.items() if k != "wrong_location"}), "missing keys wrong_location"),
        (json.dumps(dict(ZERO, extra_errors={"significant": 0, "insignificant": 0})), "unexpected keys extra_errors"),
        (json.dumps(dict(ZERO, false_finding={"significant": -1, "insignificant": 0})), r"must be an integer in \[0, 100\]"),
        (json.dumps(dict(ZERO, false_finding={"significant": 1.5, "insignificant": 0})), r"must be an integer in \[0, 100\]"),
        (json.dumps(dict(ZERO, false_finding={"significant": True, "insignificant": 0})), r"must be an integer in \[0, 100\]"),
        (json.dumps(dict(ZERO, false_finding={"significant": "1", "insignificant": 0})), r"must be an integer in \[0, 100\]"),
        (json.dumps(dict(ZERO, false_finding={"significant": 1})), "exactly 'significant' and 'insignificant'"),
        (json.dumps(dict(ZERO, notes=3)), "'notes' must be a string"),
    ],
)
def test_parse_rejects_anything_else(reply, message):
    with pytest.raises(ValueError, match=message):
        parse_answer(reply)
