import json
import os
import signal
import subprocess
import sys

import pytest

from llavarad.io.manifest import (
    CHEXPERT_OBSERVATIONS,
    JsonlWriter,
    ManifestError,
    ManifestRecord,
    read_manifest,
    write_manifest,
)


def _rec(i, **kw):
    base = {"id": f"r{i}", "image": f"img/{i}.png", "dataset": "mimic", "split": "train"}
    base.update(kw)
    return base


def test_round_trip_keeps_unknown_fields(tmp_path):
    recs = [ManifestRecord.from_dict(_rec(1, labels={"Edema": 1, "Cardiomegaly": None}, custom={"a": 1}))]
    path = tmp_path / "m.jsonl"
    assert write_manifest(recs, path) == 1
    back = read_manifest(path)
    assert back[0].labels == {"Edema": 1.0, "Cardiomegaly": None}
    assert back[0].to_dict()["custom"] == {"a": 1}
    assert len(CHEXPERT_OBSERVATIONS) == 14


@pytest.mark.parametrize(
    "row, field",
    [
        ({"image": "a.png", "dataset": "d", "split": "train"}, "id"),
        (_rec(1, split="training"), "split"),
        (_rec(1, labels={"Edema": 2}), "labels.Edema"),
        (_rec(1, text_source="gpt"), "text_source"),
        (_rec(1, findings=["x"]), "findings"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert err.value.line == 2 and err.value.field == field
    assert str(path) in str(err.value)


def test_duplicate_ids_and_bad_json(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(_rec(0)) + "\n")
    with pytest.raises(ManifestError, match="duplicate id"):
        read_manifest(path)
    path.write_text("{not json}\n" + json.dumps(_rec(0)) + "\n")
    with pytest.raises(ManifestError, match=":1: not valid JSON"):
        read_manifest(path)


def test_writer_resumes_and_repairs_torn_tail(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a", "x": 1})
        w.write({"id": "b", "x": 2})
    with path.open("ab") as fh:
        fh.write(b'{"id": "c", "x"')  # a write torn by kill -9
    w2 = JsonlWriter(path)
    assert w2.done == {"a", "b"}
    w2.write({"id": "c", "x": 3})
    w2.close()
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["id"] for l in lines] == ["a", "b", "c"]


def test_writer_survives_sigkill(tmp_path):
    path = tmp_path / "out.jsonl"
    code = (
        "import sys, time\n"
        "from llavarad.io.manifest import JsonlWriter\n"
        f"w = JsonlWriter({str(path)!r})\n"
        "i = len(w.done)\n"
        "while True:\n"
        "    w.write({'id': str(i), 'payload': 'x' * 5000}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    import time

    deadline = time.time() + 20
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 200_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    w = JsonlWriter(path)
    n = len(w.done)
    w.close()
    ids = [json.loads(l)["id"] for l in path.read_text().splitlines()]
    assert n > 0 and ids == [str(i) for i in range(n)]


def test_writer_refuses_to_cut_rows_after_a_damaged_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{broken\n{"id": "b"}\n')
    with pytest.raises(ManifestError, match=":2: not valid JSON"):
        JsonlWriter(path)
    assert path.read_text().count("\n") == 3
