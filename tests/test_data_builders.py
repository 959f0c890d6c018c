"""Builders and the ``llavarad data`` verbs end to end on fixture trees of every dataset:
import -> LLM structuring / translation (scripted local server) -> CXR-697K, MIMIC and Open-I sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_fake_server import Reply, ScriptedServer
from test_data_importers import (
    make_brax,
    make_candid,
    make_chexpert,
    make_mimic,
    make_objectcxr,
    make_openi,
    make_padchest,
    make_vindr,
)

from llavarad.cli import main
from llavarad.data.builders import build_cxr697k, build_mimic, dataset_counts
from llavarad.data.sections import split_sections
from llavarad.io.manifest import (
    JsonlWriter,
    ManifestRecord,
    read_manifest,
    write_manifest,
)


def _structure_reply(body: dict, index: int) -> Reply:
    user = body["messages"][1]["content"]
    if "REPORT:\n" in user:  # translation
        return Reply('{"translation": "Cardiomegaly. Left pleural effusion."}')
    report = user.rsplit("INPUT:\n\n", 1)[1].rsplit("\n\nOUTPUT:", 1)[0]
    s = split_sections(report)
    findings = s.findings or s.impression  # moves an impression-only report's observations to findings
    return Reply(json.dumps({"EXAMINATION": s.technique, "INDICATION": s.indication, "FINDINGS": findings,
                             "IMPRESSION": s.impression if s.findings else None}))


@pytest.fixture()
def imported(tmp_path: Path) -> dict[str, Path]:
    """Every fixture tree imported through the CLI."""
    trees = {"chexpert": make_chexpert(tmp_path), "brax": make_brax(tmp_path), "candid-ptx": make_candid(tmp_path),
             "vindr-cxr": make_vindr(tmp_path), "object-cxr": make_objectcxr(tmp_path),
             "padchest": make_padchest(tmp_path), "openi": make_openi(tmp_path), "mimic-cxr": make_mimic(tmp_path)}
    out: dict[str, Path] = {}
    for name, root in trees.items():
        path = tmp_path / "manifests" / f"{name}.jsonl"
        extra = ["--reports", str(tmp_path / "mimic-cxr-reports" / "files")] if name == "mimic-cxr" else []
        code = main(["data", "import", name, str(root), "--out", str(path), "--max-problems", "5", *extra])
        assert code == 0, name
        out[name] = path
    return out


def test_import_exits_nonzero_on_problems_and_lists_them(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    out = tmp_path / "v.jsonl"
    assert main(["data", "import", "vindr-cxr", str(root), "--out", str(out)]) == 1
    problems = (tmp_path / "v.problems.jsonl").read_text().splitlines()
    assert len(problems) == 1 and "Not a class" in problems[0]
    assert len(read_manifest(out)) == 2  # the good records are written
    assert main(["data", "import", "chexpert", str(tmp_path), "--out", str(out)]) == 1  # wrong layout, clear error


def test_end_to_end_llm_steps_and_builders(imported: dict[str, Path], tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    with ScriptedServer(responder=_structure_reply) as srv:
        common = ["--base-url", srv.base_url, "--model", "scripted", "--set", "api_key_env=null",
                  "--set", "backoff_base_s=0.001"]
        # d6's report file is missing: recorded in structured.errors.jsonl, the exit code says so
        assert main(["data", "structure", str(imported["mimic-cxr"]), "--out", str(work / "structured.jsonl"),
                     *common]) == 1
        assert main(["data", "translate", str(imported["padchest"]), "--out", str(work / "padchest_en.jsonl"),
                     *common]) == 0
        n_requests = len(srv.requests)
        # rerun: everything already done, nothing sent
        assert main(["data", "structure", str(imported["mimic-cxr"]), "--out", str(work / "structured.jsonl"),
                     *common]) == 1
        assert len(srv.requests) == n_requests
    out = capsys.readouterr().out
    assert "translate: 2 ok" in out and "already done" in out

    # MIMIC stage 2/3 sets (Supplementary Table 3 layout)
    sets = tmp_path / "sets"
    assert main(["data", "build", "mimic", str(imported["mimic-cxr"]), "--llm-outputs", str(work / "structured.jsonl"),
                 "--out-dir", str(sets)]) == 0
    train = read_manifest(sets / "mimic_train.jsonl")
    ids = sorted(r.id for r in train)
    # d1 (PA, findings): both variants; d2 lateral: out; d3 (AP, merged -> impression): LLM variant only
    assert ids == ["mimic-cxr/d1/llm_structured", "mimic-cxr/d1/rule_based", "mimic-cxr/d3/llm_structured"]
    assert {r.text_source for r in train} == {"rule_based", "llm_structured"}
    assert read_manifest(sets / "mimic_validate.jsonl")[0].id == "mimic-cxr/d4/llm_structured"
    assert read_manifest(sets / "mimic_test.jsonl") == []  # d5's report has no findings; test is rule-based only
    counts = json.loads((sets / "mimic.counts.json").read_text())
    assert counts["data"]["counts"]["DICOMs (AP/PA)"] == [3, 1, 1]
    assert counts["data"]["counts"]["Total data"] == [3, 1, 0]
    out = capsys.readouterr().out
    assert "Supplementary Table 3" in out and "GPT-structured reports" in out and "237,073" in out

    # CXR-697K (Supplementary Table 4 layout)
    manifests = [str(imported[n]) for n in ("mimic-cxr", "padchest", "chexpert", "brax", "candid-ptx", "vindr-cxr",
                                            "object-cxr", "openi")]
    cxr = tmp_path / "cxr697k.jsonl"
    assert main(["data", "build", "cxr697k", *manifests, "--llm-outputs", str(work / "structured.jsonl"),
                 "--llm-outputs", str(work / "padchest_en.jsonl"), "--out", str(cxr)]) == 0
    records = read_manifest(cxr)
    by_ds: dict[str, list[ManifestRecord]] = {}
    for r in records:
        by_ds.setdefault(r.dataset, []).append(r)
    assert all(r.split == "train" and r.findings for r in records)
    assert len(by_ds["chexpert"]) == 3  # 3 frontal train images; lateral and valid left out
    assert len(by_ds["brax"]) == 1  # PA only: unknown view and lateral left out
    assert len(by_ds["candid-ptx"]) == 3 and len(by_ds["vindr-cxr"]) == 2 and len(by_ds["object-cxr"]) == 2
    assert {r.text_source for d in ("chexpert", "brax", "candid-ptx", "vindr-cxr", "object-cxr") for r in by_ds[d]} \
        == {"label_template"}
    assert all(r.findings == "Cardiomegaly. Left pleural effusion." for r in by_ds["padchest"])
    assert {r.id for r in by_ds["padchest"]} == {"padchest/img_a.png", "padchest/img_c.png"}  # frontal only
    assert all(r.text_source == "translated" for r in by_ds["padchest"])
    mimic_ids = {r.id for r in by_ds["mimic-cxr"]}
    assert mimic_ids == {"mimic-cxr/d1", "mimic-cxr/d2", "mimic-cxr/d3"}  # train, all views, with findings
    assert "openi" not in by_ds
    table = json.loads((tmp_path / "cxr697k.counts.json").read_text())
    assert table["data"]["total_pairs"] == len(records)
    assert table["data"]["candid-ptx"]["label_types"] == 3 and table["data"]["vindr-cxr"]["label_types"] == 15
    assert table["data"]["chexpert"]["excluded"] == {"lateral view": 1, "split validate": 1}
    out = capsys.readouterr().out
    assert "Supplementary Table 4" in out and "697,435" in out and "JF Healthcare" in out

    # Open-I evaluation set: frontal with findings
    assert main(["data", "build", "openi", str(imported["openi"]), "--out", str(tmp_path / "openi_test.jsonl")]) == 0
    assert [r.id for r in read_manifest(tmp_path / "openi_test.jsonl")] == ["openi/CXR1_1_IM-0001-3001"]

    # counts of any manifest
    assert main(["data", "counts", str(cxr)]) == 0
    assert "label_template" in capsys.readouterr().out


def test_cxr697k_is_deterministic_and_streams_resumed_llm_rows(tmp_path: Path) -> None:
    recs = [ManifestRecord(id=f"chexpert/p{i}", image=f"{i}.jpg", dataset="chexpert", split="train", view="PA",
                           patient_id=f"p{i % 3}", labels={"Edema": 1.0, "Cardiomegaly": 0.0}) for i in range(50)]
    recs.append(ManifestRecord(id="mimic-cxr/x", image="x.jpg", dataset="mimic-cxr", split="train", study_id="9",
                               view="LATERAL", findings="Rule-based text.", text_source="rule_based"))
    recs.append(ManifestRecord(id="mimic-cxr/y", image="y.jpg", dataset="mimic-cxr", split="train", study_id="8",
                               view="PA", text_source="rule_based"))
    write_manifest(recs, tmp_path / "in.jsonl")
    with JsonlWriter(tmp_path / "llm.jsonl") as w:
        w.write({"id": "mimic-cxr/9", "task": "structure", "text_source": "llm_structured",
                 "sections": {"findings": "LLM text."}})
        w.write({"id": "mimic-cxr/9", "task": "findings", "text_source": "llm_structured", "findings": "Other."})
        w.write({"id": "mimic-cxr/8", "task": "structure", "text_source": "llm_structured", "sections": {"findings": None}})
        w.write({"id": "mimic-cxr/8", "task": "findings", "text_source": "llm_structured", "findings": "Extracted."})
    t1 = build_cxr697k([tmp_path / "in.jsonl"], tmp_path / "a.jsonl", llm_outputs=[tmp_path / "llm.jsonl"], seed=1)
    build_cxr697k([tmp_path / "in.jsonl"], tmp_path / "b.jsonl", llm_outputs=[tmp_path / "llm.jsonl"], seed=1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    out = read_manifest(tmp_path / "a.jsonl")
    assert out[-2].findings == "LLM text." and out[-2].text_source == "llm_structured"  # structure first
    assert out[-1].findings == "Extracted."  # then findings extraction where structuring found none
    assert t1.data["chexpert"]["patients"] == 3 and t1.data["chexpert"]["pairs"] == 50
    assert "Paper pairs" in t1.to_markdown()
    assert "3" in dataset_counts(tmp_path / "a.jsonl").notes[0]


def test_build_rejects_malformed_manifest_with_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image": "a.jpg", "dataset": "mimic-cxr", "split": "train"}\n'
                   '{"id": "b", "image": "b.jpg", "dataset": "mimic-cxr", "split": "training"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 field 'split'"):
        build_mimic(bad, tmp_path / "sets")
    assert main(["data", "build", "mimic", str(bad), "--out-dir", str(tmp_path / "sets")]) == 1


def test_streaming_reader_skips_torn_tail_only(tmp_path: Path) -> None:
    from llavarad.data.builders import iter_manifest

    good = '{"id": "a", "image": "a.jpg", "dataset": "openi", "split": "test"}\n'
    path = tmp_path / "m.jsonl"
    path.write_text(good + '{"id": "b", "ima')  # a write torn by a kill
    assert [r.id for r in iter_manifest(path)] == ["a"]
    path.write_text('{"id": "b", "ima\n' + good)
    with pytest.raises(ValueError, match=r"m.jsonl:1"):
        list(iter_manifest(path))
