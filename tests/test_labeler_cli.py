"""``llavarad label`` end to end through ``main(argv)``."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from llavarad.cli import main
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = DATA / "reports" / "chexpert_labeler_sample"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"{SAMPLE} not present")
def test_label_reproduces_the_original_output_file_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "labeled.csv"
    assert main(["label", str(SAMPLE / "sample_reports.csv"), "--out", str(out)]) == 0
    assert out.read_bytes() == (SAMPLE / "labeled_reports.csv").read_bytes()


def test_label_jsonl_keeps_every_row_and_reports_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "preds.jsonl"
    lines = [
        json.dumps({"id": "a", "reference": "No effusion.", "prediction": "Large right pleural effusion."}),
        "{not json",
        json.dumps({"id": "c", "reference": "x", "prediction": None}),
        json.dumps({"id": "d", "reference": "x", "prediction": 3}),
        json.dumps({"id": "e", "reference": "x", "prediction": "No pneumothorax."}),
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "labels.csv"
    code = main(["label", str(src), "--text-column", "prediction", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{src}:2: not valid JSON" in err and f"{src}:4: column 'prediction' holds int" in err
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["prediction", *CHEXPERT_OBSERVATIONS]
    assert len(rows) == 5  # nothing dropped: unreadable rows are kept with blank labels
    assert rows[0]["Pleural Effusion"] == "1.0" and rows[0]["No Finding"] == ""
    assert all(rows[1][obs] == "" for obs in CHEXPERT_OBSERVATIONS)
    # null is no report at all (not an empty one): an error row with blank labels, never "No Finding"
    assert rows[2]["prediction"] == "" and all(rows[2][obs] == "" for obs in CHEXPERT_OBSERVATIONS)
    assert f"{src}:3: column 'prediction' is null" in err
    assert rows[4]["Pneumothorax"] == "0.0" and rows[4]["No Finding"] == "1.0"


def test_label_csv_joins_columns_and_checks_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "reports.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "findings", "impression"])
        w.writerow(["1", "The heart is enlarged.", "No acute disease."])
        w.writerow(["2", "", "Left lower lobe pneumonia."])
    out = tmp_path / "o.csv"
    assert main(["label", str(src), "--out", str(out), "--alternatives", "uncertain"]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["findings+impression"] == "The heart is enlarged. No acute disease."
    assert rows[0]["Cardiomegaly"] == "1.0" and rows[1]["Pneumonia"] == "1.0"
    assert main(["label", str(src), "--text-column", "report", "--out", str(out)]) == 1
    assert "no column 'report'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("f1chexbert") is not None, reason="f1chexbert is installed here")
def test_label_with_unavailable_chexbert_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAVARAD_CHEXBERT_WEIGHTS", raising=False)
    src = tmp_path / "r.csv"
    src.write_text("No effusion.\n")
    assert main(["label", str(src), "--labeler", "chexbert", "--out", str(tmp_path / "o.csv")]) == 1
    assert "LLAVARAD_CHEXBERT_WEIGHTS" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_label_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--help"]) == 0
    assert "llavarad label sample_reports.csv" in capsys.readouterr().out
