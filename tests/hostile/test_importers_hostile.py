"""Importers on damaged release files: wrong labels never reach a record, good records equal a clean run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_data_importers import CHEXPERT_COLS, _csv, collect, make_chexpert, make_objectcxr, make_padchest, make_vindr

from llavarad.data.importers import DatasetLayoutError


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def _by_id(recs):
    """Records by id, image paths made relative to the fixture tree's own root (clean/ or bad/)."""
    out = {}
    for r in recs:
        d = r.to_dict()
        d["image"] = d["image"].split("/clean/")[-1].split("/bad/")[-1]
        out[r.id] = d
    return out


def test_chexpert_short_rows_duplicates_and_missing_columns(tmp_path):
    clean, _ = collect("chexpert", make_chexpert(tmp_path / "clean"))
    root = make_chexpert(tmp_path / "bad")
    _append(root / "train.csv", "CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg,Female,60\n")
    first = (root / "train.csv").read_text().splitlines()[1]
    _append(root / "train.csv", first + "\n")  # the same image listed twice
    recs, probs = collect("chexpert", root)
    assert _by_id(recs) == _by_id(clean)
    messages = " | ".join(p.message for p in probs)
    assert "train.csv:6: 3 fields where the header has 19" in messages
    assert "duplicate id 'chexpert/train/patient00001/study1/view1_frontal.jpg'" in messages
    _csv(root / "train.csv", [c for c in CHEXPERT_COLS if c != "Edema"], [])
    with pytest.raises(DatasetLayoutError, match="missing column.*Edema"):
        collect("chexpert", root)


def test_vindr_physionet_repeated_reader_rows_bad_cells_and_no_label_columns(tmp_path):
    cols = ["image_id", "rad_id", "Pneumonia", "Tuberculosis", "No finding"]
    rows = [["x1", "R1", 1, 0, 0], ["x1", "R2", 0, 0, 0], ["x2", "R1", 0, 1, 0], ["x2", "R2", 0, 1, 0]]
    clean_dir, bad_dir = tmp_path / "clean", tmp_path / "bad"
    _csv(clean_dir / "annotations" / "image_labels_train.csv", cols, rows)
    _csv(bad_dir / "annotations" / "image_labels_train.csv", cols,
         [*rows, ["x1", "R1", 1, 0, 0], ["x3", "R1", "yes", 0, 0], ["x4", "R1"]])
    clean, _ = collect("vindr-cxr", clean_dir, min_votes=2)
    recs, probs = collect("vindr-cxr", bad_dir, min_votes=2)
    assert _by_id(recs) == _by_id(clean)  # x1 stays negative under 2 votes: R1's repeated row counts once
    assert _by_id(recs)["vindr-cxr/x1"]["source_labels"]["Pneumonia"] == 0.0
    messages = " | ".join(p.message for p in probs)
    assert "reader 'R1' already read x1" in messages and "'yes'" in messages and "the image is not written" in messages
    assert "2 fields where the header has 5" in messages and "vindr-cxr/x3" not in _by_id(recs)
    _csv(bad_dir / "annotations" / "image_labels_train.csv", ["image_id", "rad_id"], [["x1", "R1"]])
    with pytest.raises(DatasetLayoutError, match="no label columns"):
        collect("vindr-cxr", bad_dir)


def test_vindr_kaggle_short_row(tmp_path):
    clean, _ = collect("vindr-cxr", make_vindr(tmp_path / "clean"))
    root = make_vindr(tmp_path / "bad")
    _append(root / "train.csv", "ddd,Cardiomegaly\n")
    recs, probs = collect("vindr-cxr", root)
    assert _by_id(recs) == _by_id(clean) and any("2 fields where the header has 8" in p.message for p in probs)


def test_objectcxr_short_row_is_not_a_negative(tmp_path):
    clean, _ = collect("object-cxr", make_objectcxr(tmp_path / "clean"))
    root = make_objectcxr(tmp_path / "bad")
    _append(root / "train.csv", "00003.jpg\n")
    recs, probs = collect("object-cxr", root)
    assert _by_id(recs) == _by_id(clean) and "object-cxr/train/00003.jpg" not in _by_id(recs)
    assert any("1 fields where the header has 2" in p.message for p in probs)


def test_padchest_short_row_and_latin1(tmp_path):
    clean, _ = collect("padchest", make_padchest(tmp_path / "clean"))
    root = make_padchest(tmp_path / "bad")
    path = next(root.glob("*.csv*"))
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    data += b"99,img_short.png,1\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    recs, probs = collect("padchest", root)
    assert _by_id(recs) == _by_id(clean) and any("fields where the header has" in p.message for p in probs)


def test_truncated_and_garbage_gz_are_named(tmp_path):
    root = make_chexpert(tmp_path / "gz")
    data = gzip.compress((root / "train.csv").read_bytes() * 200)
    (root / "train.csv").unlink()
    (root / "train.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="damaged gzip archive"):
        collect("chexpert", root)
    (root / "train.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(Exception, match="damaged gzip archive"):
        collect("chexpert", root)


def test_templates_refuse_unknown_and_contradictory_labels(run):
    r = run("data", "templates", "--labels", '{"Foo": 1}')
    assert r.rc == 1 and "unknown label(s) 'Foo'" in r.err and "present" not in r.out
    r = run("data", "templates", "--labels", '{"No Finding": 1, "Cardiomegaly": 1}')
    assert r.rc == 1 and "contradict" in r.err
    assert run("data", "templates", "--labels", '{"No Finding": 1, "Support Devices": 1}').rc == 0


def test_repeats_that_disagree_leave_no_record(run, tmp_path):
    root = make_objectcxr(tmp_path / "bad")
    _append(root / "train.csv", "00001.jpg,\n00002.jpg,\n")  # 00001 now both positive and negative; 00002 repeated
    out = tmp_path / "m.jsonl"
    r = run("data", "import", "object-cxr", root, "--out", out)
    recs = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert "object-cxr/train/00001.jpg" not in recs  # no one can tell which row is right
    assert recs["object-cxr/train/00002.jpg"]["source_labels"]["Foreign Object"] == 0.0
    problems = (tmp_path / "m.problems.jsonl").read_text()
    assert "with different content; neither is kept" in problems and "only the first is kept" in problems
    assert "2 problem row(s)" in r.out
