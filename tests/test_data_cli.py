"""Smoke tests of the small ``llavarad data`` verbs through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

from llm_fake_server import Reply, ScriptedServer

from llavarad.cli import main
from llavarad.io.manifest import ManifestRecord, read_jsonl, write_manifest


def test_help_of_every_verb(capsys) -> None:
    for argv in (["data"], ["data", "section"], ["data", "templates"], ["data", "import"], ["data", "structure"],
                 ["data", "translate"], ["data", "findings"], ["data", "build"], ["data", "build", "cxr697k"],
                 ["data", "build", "mimic"], ["data", "build", "openi"], ["data", "counts"]):
        assert main([*argv, "--help"]) == 0
        assert "Example" in capsys.readouterr().out


def test_section_verb_file_and_evaluate(tmp_path: Path, capsys, shared_data: Path) -> None:
    report = tmp_path / "r.txt"
    report.write_text("INDICATION: cough\nFINDINGS AND IMPRESSION: Clear lungs.\n")
    assert main(["data", "section", str(report), "--merged-to", "both"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["findings"] == out["impression"] == "Clear lungs." and out["merged"] is True
    assert main(["data", "section", str(tmp_path / "missing.txt")]) != 0
    csv_path = shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv"
    assert main(["data", "section", "--evaluate", str(csv_path)]) == 0
    assert "findings    99." in capsys.readouterr().out


def test_templates_verb(capsys) -> None:
    assert main(["data", "templates", "--labels", '{"No Finding": 1, "Support Devices": 0}', "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["data", "templates", "--labels", '{"No Finding": 1, "Support Devices": 0}', "--seed", "3"]) == 0
    assert capsys.readouterr().out == first and "support devices" in first
    assert main(["data", "templates", "--labels", '{"Edema": 5}']) == 1
    assert main(["data", "templates", "--labels", "[1]"]) == 1


def test_import_rejects_options_of_other_datasets(tmp_path: Path) -> None:
    assert main(["data", "import", "chexpert", str(tmp_path), "--out", str(tmp_path / "x.jsonl"),
                 "--metadata", __file__]) == 1


def test_findings_verb_with_config_file(tmp_path: Path) -> None:
    report = tmp_path / "s1.txt"
    report.write_text("IMPRESSION: Lungs are clear.")
    write_manifest([ManifestRecord(id="mimic-cxr/d1", image="d1.jpg", dataset="mimic-cxr", split="train", study_id="s1",
                                   extra={"report_path": str(report)})], tmp_path / "m.jsonl")
    with ScriptedServer(responder=lambda body, i: Reply('{"FINDINGS": "Lungs are clear."}')) as srv:
        cfg = tmp_path / "llm.yaml"
        cfg.write_text(f"backend: openai_compatible\nbase_url: {srv.base_url}\nmodel: local\napi_key_env: null\n"
                       "concurrency: 2\nrequests_per_minute: 600\n")
        assert main(["data", "findings", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "f.jsonl"),
                     "--config", str(cfg)]) == 0
        assert srv.requests[0]["body"]["model"] == "local"
    rows = [obj for _l, obj in read_jsonl(tmp_path / "f.jsonl")]
    assert rows[0]["findings"] == "Lungs are clear." and rows[0]["task"] == "findings"
    assert (tmp_path / "llm_cache.sqlite").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: carrier-pigeon\n")
    assert main(["data", "findings", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "g.jsonl"),
                 "--config", str(bad)]) == 1


def test_import_check_images_lists_missing_files(tmp_path: Path) -> None:
    from test_data_importers import make_objectcxr

    root = make_objectcxr(tmp_path)
    (root / "train" / "00001.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "o.jsonl"
    assert main(["data", "import", "object-cxr", str(root), "--out", str(out), "--check-images"]) == 1
    assert [r["id"] for _l, r in read_jsonl(out)] == ["object-cxr/train/00001.jpg"]
    problems = [p for _l, p in read_jsonl(tmp_path / "o.problems.jsonl")]
    assert {p["id"] for p in problems} == {"object-cxr/train/00002.jpg", "object-cxr/dev/08001.jpg"}
