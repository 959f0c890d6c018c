"""label and evaluate on damaged CSV / JSONL inputs: every bad row is named, good rows equal a clean run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPORTS = ["Large right pleural effusion.", "Heart size is enlarged.", "No pneumothorax. Lungs are clear.",
           "Café au lait: mild pulmonary edema."]


def _labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def clean(run, tmp_path) -> list[dict[str, str]]:
    src = tmp_path / "clean.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["id", "report"], *([str(i), t] for i, t in enumerate(REPORTS))])
    assert run("label", src, "--out", tmp_path / "clean.labels.csv").rc == 0
    return _labels(tmp_path / "clean.labels.csv")


def _good(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["report"] in REPORTS]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "latin-1", "cp1252"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_encodings_and_delimiters_give_the_clean_labels(run, clean, tmp_path, caplog, encoding, delimiter):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh, delimiter=delimiter).writerows([["id", "report"], *([str(i), t] for i, t in enumerate(REPORTS))])
    r = run("label", src, "--out", tmp_path / "out.csv")
    assert r.rc == 0, r.err
    assert _labels(tmp_path / "out.csv") == clean
    if encoding in ("latin-1", "cp1252"):
        assert "not UTF-8" in caplog.text and "read as Latin-1" in caplog.text


def test_damaged_rows_are_counted_and_good_rows_kept(run, clean, tmp_path):
    src = tmp_path / "in.csv"
    body = ["id,report"] + [f'{i},"{t}"' for i, t in enumerate(REPORTS[:2])]
    body += ["9,short,extra,fields", "10", "11,x\x00y", f'12,"{"a" * 1_100_000}"']
    body += [f'{i},"{t}"' for i, t in enumerate(REPORTS[2:], 2)]
    body += ['13,"an unclosed quote', "14,swallowed"]
    src.write_text("\n".join(body) + "\n", encoding="utf-8")
    r = run("label", src, "--out", tmp_path / "out.csv")
    assert r.rc == 1
    assert _good(_labels(tmp_path / "out.csv")) == clean
    for fragment in ("4: 4 fields where the header has 2", "5: 1 fields", "6: a NUL character",
                     "cell longer than", "10: a quote opened here is never closed (lines 10-11"):
        assert fragment in r.err, fragment
    assert "5 row(s) could not be labeled" in r.err


def test_unknown_header_is_refused_with_its_columns(run, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,Large effusion.\n")
    r = run("label", src)
    assert r.rc == 1 and "the file has 'id', 'body'" in r.err and "--text-column" in r.err
    assert not (tmp_path / "in.labels.csv").exists()
    assert run("label", src, "--text-column", "body", "--out", tmp_path / "o.csv").rc == 0
    r = run("label", src, "--out", src)
    assert r.rc == 1 and "is the input" in r.err and src.read_text() == "id,body\n1,Large effusion.\n"


def test_jsonl_bad_lines_and_null_reports(run, tmp_path):
    lines = [json.dumps({"id": i, "report": t}) for i, t in enumerate(REPORTS)]
    clean_src = tmp_path / "clean.jsonl"
    clean_src.write_text("\n".join(lines) + "\n")
    assert run("label", clean_src, "--out", tmp_path / "clean.csv").rc == 0
    hostile = ["\ufeff" + lines[0], lines[1], '{"id": 9, "report": "\\ud800"}', "[" * 3000 + "]" * 3000,
               '{"id": 10, "report": null}', '{"id": 11, "report": "a\\u0000b"}', "{oops", lines[2], lines[3]]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(hostile) + "\n", encoding="utf-8")
    r = run("label", src, "--out", tmp_path / "out.csv")
    assert r.rc == 1
    assert _good(_labels(tmp_path / "out.csv")) == _labels(tmp_path / "clean.csv")
    for fragment in (":3: a lone surrogate", ":4: JSON nested deeper", ":5: column 'report' is null",
                     ":6: a NUL character", ":7: not valid JSON"):
        assert fragment in r.err, fragment


def test_evaluate_scores_good_rows_as_a_clean_run(run, tmp_path):
    rows = [{"id": f"r{i}", "reference": t, "prediction": REPORTS[(i + 1) % 4], "error": None}
            for i, t in enumerate(REPORTS)]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["--bootstrap", 20, "--no-radgraph", "--no-plot"]
    assert run("evaluate", clean, "--out", tmp_path / "e_clean", *args).rc == 0
    ok_false = {"id": "f", "reference": "No effusion.", "prediction": "No effusion.", "error": False}
    hostile = ["\ufeff" + json.dumps(rows[0]), '{"id": "s", "reference": "\\udc00", "prediction": "x"}',
               "{" * 2000 + "}" * 2000, json.dumps(rows[1]), "\x00", json.dumps(rows[2]), json.dumps(rows[3])]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(hostile) + "\n", encoding="utf-8")
    r = run("evaluate", src, "--out", tmp_path / "e", *args)
    assert r.rc == 1 and "Traceback" not in r.err
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    want = json.loads((tmp_path / "e_clean" / "metrics.json").read_text())
    assert got["n"] == want["n"] == 4 and got["metrics"] == want["metrics"]
    problems = " ".join(p["error"] for p in got["problems"])
    assert ":2: a lone surrogate" in problems and ":3: JSON nested deeper" in problems and ":5: a NUL byte" in problems
    src.write_text(json.dumps(ok_false) + "\n")  # "error": false is a success, not a generation error
    run("evaluate", src, "--out", tmp_path / "e2", *args)
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["generation_errors"] == []


def test_a_quote_closed_rows_later_is_reported(run, tmp_path, caplog):
    src = tmp_path / "in.csv"
    src.write_text('id,report\n1,"Effusion.\n2,Cardiomegaly.\n3,Edema."\n4,Clear.\n')
    r = run("label", src, "--out", tmp_path / "o.csv")
    assert r.rc == 0  # valid CSV: two fields per record
    assert "lines 2-4" in caplog.text and "a quote is not closed there" in caplog.text
