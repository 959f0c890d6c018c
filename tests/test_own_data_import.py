"""The DICOM archive import on a generated export of the real DICOMs in ../shared/data: every planted
oddity counted and listed, study grouping, report join and sectioning, patient split, parallel =
serial, and a SIGKILL mid-import followed by a rerun that equals an uninterrupted run byte for byte."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from own_data_archive import kill_while_reading_headers, llavarad_command, make_own_data

from llavarad.cli import main
from llavarad.data.importers._common import DatasetLayoutError
from llavarad.data.importers._dicom_headers import classify, iter_files, read_header
from llavarad.data.importers.dicom_archive import (
    DicomImportConfig,
    import_dicom_archive,
    output_paths,
    patient_split,
)
from llavarad.data.importers.report_sources import ReportColumns
from llavarad.data.sections import split_sections
from llavarad.io.manifest import read_jsonl, read_manifest


@pytest.fixture(scope="module")
def own(shared_data, tmp_path_factory):
    return make_own_data(shared_data, tmp_path_factory.mktemp("own"))


@pytest.fixture(scope="module")
def imported(own, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "m.jsonl"
    summary = import_dicom_archive(own.plan.root, own.reports, out, DicomImportConfig(workers=1))
    return out, summary


def test_every_planted_problem_is_counted_and_listed(own, imported):
    out, s = imported
    plan = own.plan
    assert s.files == plan.files
    assert s.images == plan.kept_images
    for reason, n in plan.planted.items():
        assert s.problems[reason] == n, reason
    assert s.problems["study_without_report"] == len(own.without_report)
    assert s.problems["report_without_study"] == len(own.extra_reports)
    assert s.problems["report_without_findings"] == len(own.headerless)
    views = Counter(v for st in plan.studies for v in st.views)
    assert (s.frontal, s.lateral, s.view_unknown) == (views["PA"] + views["AP"], views["LATERAL"], views[""])
    problems = [obj for _, obj in read_jsonl(output_paths(out)["problems"])]
    assert Counter(p["reason"] for p in problems) == Counter(s.problems)
    assert sum(p["action"] == "excluded" for p in problems) == s.excluded == sum(plan.planted.values()) + 2
    summary = json.loads(output_paths(out)["summary"].read_text())
    assert summary["problems"] == s.problems and summary["config"]["join"] == "accession"


def test_records_follow_the_contract_grouped_by_study_with_sectioned_reports(own, imported):
    out, s = imported
    records = read_manifest(out)  # validates every line against the DESIGN.md contract
    assert len(records) == s.images
    studies = [r.study_id for r in records]
    assert studies == sorted(studies)  # grouped (sorted) by study
    by_acc = {st.accession: st for st in own.plan.studies}
    for r in records:
        st = by_acc[r.extra["accession_number"]]
        assert r.patient_id == st.patient_id and r.study_id == st.study_uid and r.dataset == "local"
        assert Path(r.image).is_file() and r.id == f"local/{r.extra['sop_instance_uid']}"
        assert r.view == (r.view or None) and r.extra["frontal"] == (r.view in ("PA", "AP") if r.view else None)
        text = own.texts.get(st.accession)
        if text is None:
            assert r.findings is None and r.extra["report_source"] is None
        else:
            expect = split_sections(text)
            assert (r.findings, r.impression, r.indication) == (expect.findings, expect.impression, expect.indication)
    laterals = [r for r in records if r.view == "LATERAL"]
    assert laterals and all(r.extra["frontal"] is False for r in laterals)


def test_split_is_by_patient_and_deterministic(imported):
    out, _ = imported
    split_of: dict[str, set[str]] = {}
    for r in read_manifest(out):
        split_of.setdefault(r.patient_id, set()).add(r.split)
        assert r.split == patient_split(r.patient_id, (0.8, 0.1, 0.1), "llavarad")
    assert all(len(v) == 1 for v in split_of.values())
    draws = Counter(patient_split(f"P{i}", (0.8, 0.1, 0.1), "salt") for i in range(20000))
    assert abs(draws["train"] / 20000 - 0.8) < 0.02 and abs(draws["test"] / 20000 - 0.1) < 0.02


def test_parallel_workers_give_the_same_files(own, imported, tmp_path):
    out, _ = imported
    out2 = tmp_path / "m.jsonl"
    import_dicom_archive(own.plan.root, own.reports, out2, DicomImportConfig(workers=2, batch=3))
    assert out2.read_bytes() == out.read_bytes()
    assert output_paths(out2)["problems"].read_bytes() == output_paths(out)["problems"].read_bytes()
    assert not output_paths(out2)["workspace"].exists()


def test_join_by_study_uid_and_indication_column(own, tmp_path):
    csv_path = tmp_path / "by_uid.csv"
    first = own.plan.studies[0]
    csv_path.write_text("StudyInstanceUID,text,why\n"
                        f"{first.study_uid},\"The heart is normal. Lungs are clear.\",Chest pain.\n", encoding="utf-8")
    out = tmp_path / "m.jsonl"
    s = import_dicom_archive(own.plan.root, csv_path, out, DicomImportConfig(
        workers=1, join="study-uid", headerless_to="findings", columns=ReportColumns(text="text", indication="why")))
    recs = [r for r in read_manifest(out) if r.study_id == first.study_uid]
    assert recs and all(r.findings == "The heart is normal. Lungs are clear." and r.indication == "Chest pain."
                        for r in recs)
    assert s.studies_with_report == 1 and s.problems["study_without_report"] == s.studies - 1


def test_header_reader_and_rules_on_real_files(shared_data):
    images = shared_data / "images"
    h = read_header(str(images), "cr_monochrome1_10bit_nopreamble.dcm")  # no preamble, implicit VR
    assert h["status"] == "ok" and h["ViewPosition"] == "PA" and h["AccessionNumber"] == "FUJI95714"
    assert classify(h).reason is None and classify(h).view == "PA"
    sc = read_header(str(images), "siim_pa_jpeg_baseline.dcm")  # the SIIM set stores CR as secondary capture
    assert classify(sc).reason == "secondary_capture"
    assert classify(sc, keep_secondary_capture=True).reason is None
    assert read_header(str(images), "00000001_000.png")["status"] == "not_dicom"
    from pydicom.data import get_testdata_file

    dicomdir = Path(get_testdata_file("DICOMDIR"))
    assert read_header(str(dicomdir.parent), dicomdir.name)["status"] == "not_image"
    base = {**h, "ViewPosition": None, "ViewCodeMeaning": "postero-anterior"}
    assert classify(base).view == "PA" and classify(base).view_source == "ViewCodeSequence"
    raw = {**h, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}
    assert classify(raw).reason == "for_processing"
    nobody = {**h, "BodyPartExamined": None, "SeriesDescription": "KNEE"}
    assert classify(nobody).reason == "body_part_unknown"
    assert ("body_part_unknown" in [f for f, _ in classify(nobody, unknown_body_part="keep").flags])
    one_side = classify({**h, "ImageLaterality": "L", "PatientID": None})
    assert {f for f, _ in one_side.flags} == {"unilateral_frontal", "missing_patient_id"}


def test_walk_is_lazy_and_skips_hidden(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.dcm").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"")
    (tmp_path / "y").write_bytes(b"")
    walk = iter_files(tmp_path)
    assert iter(walk) is walk  # a generator, not a list
    assert sorted(walk) == ["a/b/x.dcm", "y"]


def test_cli_import_and_build_local(own, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    args = ["data", "import", "dicom", str(own.plan.root), "--reports", str(own.reports), "--out", str(out),
            "--workers", "1"]
    assert main(args) == 1  # the planted truncated file is unreadable: non-zero by default
    text = capsys.readouterr().out
    assert "unreadable" in text and "secondary_capture" in text and "kept" in text
    assert main(args + ["--max-unreadable", "1"]) == 0
    assert main(["data", "build", "local", str(out), "--out-dir", str(tmp_path / "sets")]) == 0
    kept = [r for s in ("train", "validate", "test") for r in read_manifest(tmp_path / "sets" / f"local_{s}.jsonl")]
    assert kept and all(r.view in ("PA", "AP") and r.findings for r in kept)
    assert all(Path(r.image).is_file() for r in kept)
    assert main(["data", "import", "chexpert", str(tmp_path), "--out", str(tmp_path / "c.jsonl")]) != 0  # still routed
    inside = own.plan.root / "out" / "m.jsonl"
    assert main(["data", "import", "dicom", str(own.plan.root), "--reports", str(own.reports), "--out", str(inside)]) == 1
    assert "inside the DICOM tree" in capsys.readouterr().err and not inside.parent.exists()


def test_kill_mid_import_then_rerun_equals_uninterrupted_run(shared_data, tmp_path):
    own = make_own_data(shared_data, tmp_path, n_patients=60, seed=1)  # ~200 files
    cmd = [*llavarad_command(), "data", "import", "dicom", str(own.plan.root), "--reports", str(own.reports),
           "--max-unreadable", "1", "--workers", "2"]
    ref = tmp_path / "ref" / "m.jsonl"
    import_dicom_archive(own.plan.root, own.reports, ref, DicomImportConfig(workers=2))  # uninterrupted
    out = tmp_path / "killed" / "m.jsonl"
    done = kill_while_reading_headers([*cmd, "--out", str(out)], output_paths(out)["state"], own.plan.files)
    assert not out.exists()
    rerun = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{own.plan.files - done:,} headers read now" in rerun.stdout
    for name in ("manifest", "problems"):
        assert output_paths(out)[name].read_bytes() == output_paths(ref)[name].read_bytes(), name


def test_a_whole_row_without_its_newline_is_read_again(own, imported, tmp_path):
    """A kill between a row's text and its newline: the writer drops the row, so the rerun reads that file."""
    ref, _ = imported
    out = tmp_path / "m.jsonl"
    import_dicom_archive(own.plan.root, own.reports, out, DicomImportConfig(workers=1))
    state = output_paths(out)["state"]
    lines = state.read_bytes().splitlines(keepends=True)
    state.write_bytes(b"".join(lines[:5]) + lines[5].rstrip(b"\n"))  # meta + 4 rows + a row missing "\n"
    s = import_dicom_archive(own.plan.root, own.reports, out, DicomImportConfig(workers=1))
    assert s.headers_read_now == own.plan.files - 4
    assert out.read_bytes() == ref.read_bytes()


def test_files_deleted_between_runs_are_listed_not_imported(own, tmp_path):
    import shutil

    root = tmp_path / "export"
    shutil.copytree(own.plan.root, root)
    out = tmp_path / "m.jsonl"
    first = import_dicom_archive(root, own.reports, out, DicomImportConfig(workers=1))
    victim = next(r for r in read_manifest(out) if r.view == "LATERAL")
    (out.parent / victim.image).unlink()  # under the manifest folder: the path is relative to it
    second = import_dicom_archive(root, own.reports, out, DicomImportConfig(workers=1))
    assert second.headers_read_now == 0 and second.problems["vanished"] == 1
    assert second.images == first.images - 1 and victim.id not in {r.id for r in read_manifest(out)}


def test_a_wrong_report_column_fails_before_any_header_is_read(own, tmp_path):
    out = tmp_path / "m.jsonl"
    with pytest.raises(DatasetLayoutError, match="REPORT_TEXT"):
        import_dicom_archive(own.plan.root, own.reports, out,
                             DicomImportConfig(workers=1, columns=ReportColumns(text="REPORT_TEXT")))
    assert not output_paths(out)["state"].exists()
