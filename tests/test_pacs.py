"""The DICOMweb loop against a real PACS: Orthanc + its DICOMweb plugin, started on a loopback port.

The studies are the real DICOMs of ../shared/data (each under fresh UIDs and a made-up patient), plus
a lateral-only study and one with damaged pixel data. The no-preamble CR file is re-encoded as a
Part 10 file first: Orthanc stores what STOW-RS posts, and dicomweb-client posts a dataset read
without a preamble as it was read, which its own WADO-RS reader then refuses to parse.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

from dicom3tools import DCIODVFY, dciodvfy_errors
from orthanc_server import OrthancServer, orthanc_missing_reason

from llavarad.report_formats import ModelInfo
from llavarad.report_formats._common import values_never_quoted

SECRET_NAME, SECRET_ID, SECRET_DOB = "Quixote^Dulcinea^Secretname", "PID-SECRET-4711", "DOB-SECRET-1931"
REAL = ("siim_pa_jpeg_baseline.dcm", "siim_pa_flagged_monochrome1.dcm", "cr_monochrome1_10bit_nopreamble.dcm")
CRED_ENV = "LLAVARAD_TEST_PACS_LOGIN"


@pytest.fixture(scope="session")
def orthanc():
    """One Orthanc for the whole test session (emptied by each test that loads studies); always stopped."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    with OrthancServer() as server:
        yield server


@pytest.fixture
def login(orthanc, monkeypatch):
    monkeypatch.setenv(CRED_ENV, f"{orthanc.user}:{orthanc.password}")
    return CRED_ENV


def _part10(ds):
    """``ds`` written and read back as a Part 10 file (preamble + file meta)."""
    import pydicom

    buf = io.BytesIO()
    with values_never_quoted():
        ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def make_studies(shared_data: Path, copies: int = 1) -> tuple[list, dict[str, object]]:
    """(datasets to STOW, {study uid: source dataset of a study that should get an SR})."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets, expected = [], {}
    for n in range(copies):
        for i, name in enumerate(REAL):
            ds = pydicom.dcmread(shared_data / "images" / name, force=True)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
            ds.PatientName, ds.PatientID = SECRET_NAME, f"{SECRET_ID}-{n}-{i}"
            ds.StudyDate = "20240105"
            if i == 0:  # as a modality copies it from the worklist
                request = pydicom.Dataset()
                request.ReasonForTheRequestedProcedure = "Fever and cough."
                ds.RequestAttributesSequence = [request]
            if i == 1:  # a malformed birth date: the SR leaves it empty, no log quotes it
                with values_never_quoted():
                    ds.PatientBirthDate = SECRET_DOB
                    ds = _part10(ds)
            ds = _part10(ds)
            datasets.append(ds)
            expected[ds.StudyInstanceUID] = ds
    lateral = pydicom.dcmread(shared_data / "images" / REAL[0])
    lateral.StudyInstanceUID, lateral.SeriesInstanceUID, lateral.SOPInstanceUID = (generate_uid(), generate_uid(),
                                                                                   generate_uid())
    lateral.ViewPosition, lateral.PatientName, lateral.PatientID = "LL", SECRET_NAME, SECRET_ID
    lateral.StudyDate = "20240105"
    # An AP image in the first study (a second series): the PA image must still be the one drafted from.
    ap = pydicom.dcmread(shared_data / "images" / REAL[1])
    ap.StudyInstanceUID, ap.SeriesInstanceUID, ap.SOPInstanceUID = (datasets[0].StudyInstanceUID, generate_uid(),
                                                                    generate_uid())
    ap.ViewPosition, ap.PatientName, ap.PatientID = "AP", SECRET_NAME, datasets[0].PatientID
    hand = pydicom.dcmread(shared_data / "images" / REAL[0])  # not a chest image
    hand.StudyInstanceUID, hand.SeriesInstanceUID, hand.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    hand.BodyPartExamined, hand.PatientName, hand.PatientID, hand.StudyDate = "HAND", SECRET_NAME, SECRET_ID, "20240105"
    broken = pydicom.dcmread(shared_data / "images" / REAL[2], force=True)
    broken.StudyInstanceUID, broken.SeriesInstanceUID, broken.SOPInstanceUID = (generate_uid(), generate_uid(),
                                                                                generate_uid())
    broken.PatientName, broken.PatientID, broken.StudyDate = SECRET_NAME, SECRET_ID, "20100101"
    broken.Rows = int(broken.Rows) * 2  # the pixel data is now half of what the header says
    return [*datasets, _part10(ap), _part10(lateral), _part10(hand), _part10(broken)], expected


@pytest.fixture
def loaded(orthanc, shared_data):
    orthanc.delete_all()
    datasets, expected = make_studies(shared_data)
    orthanc.client().store_instances(datasets)
    return expected


@pytest.fixture(scope="session")
def drafting(tiny_bundle, tiny_model_dir):
    """(ReportGenerator, ModelInfo) of the tiny model, short drafts."""
    from llavarad.generate import GenerationSettings, ReportGenerator

    settings = GenerationSettings(max_new_tokens=8, batch_size=1)
    info = ModelInfo.from_model_dir(tiny_model_dir, settings={"max_new_tokens": 8, "prompt_format": "v1"},
                                    bundle=tiny_bundle)
    return ReportGenerator(tiny_bundle, settings), info


def config(orthanc, tmp_path, login, **kw):
    from llavarad.pacs import PacsConfig

    return PacsConfig(orthanc.dicomweb_url, state_path=tmp_path / "state.jsonl", auth="basic", auth_env=login, **kw)


def sr_instances(orthanc, study_uid: str) -> list:
    """Every SR instance of a study, read back through WADO-RS."""
    client = orthanc.client()
    out = []
    for series in client.search_for_series(study_uid, search_filters={"Modality": "SR"}):
        series_uid = series["0020000E"]["Value"][0]
        for inst in client.search_for_instances(study_uid, series_uid):
            out.append(client.retrieve_instance(study_uid, series_uid, inst["00080018"]["Value"][0]))
    return out


def finding_text(sr) -> tuple[str, str]:
    """(findings text, referenced source SOP Instance UID) of an SR written by llavarad."""
    findings = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Findings")
    item = findings.ContentSequence[0]
    return item.TextValue, item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def test_loop_drafts_each_study_once_and_reruns_add_nothing(orthanc, loaded, drafting, tmp_path, login, caplog):
    from llavarad.io.images import read_cxr
    from llavarad.pacs import run_loop
    from llavarad.report_formats import indication_from_dicom

    generator, info = drafting
    assert sum(indication_from_dicom(ds) == "Fever and cough." for ds in loaded.values()) == 1
    cfg = config(orthanc, tmp_path, login, max_attempts=2)
    caplog.set_level(logging.DEBUG)
    first = run_loop(cfg, generator, info, once=True)
    assert (first.found, first.stored, first.no_frontal, first.failed) == (6, 3, 2, 1)
    assert "ImageReadError" in first.errors[0]["error"]

    for study_uid, source in loaded.items():
        srs = sr_instances(orthanc, study_uid)
        assert len(srs) == 1
        sr = srs[0]
        buf = io.BytesIO()
        source.save_as(buf, enforce_file_format=True)
        text, referenced = finding_text(sr)
        indication = indication_from_dicom(source)
        assert text == generator.generate(read_cxr(buf).image, indication=indication)  # as plain generation
        comment = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Comment")
        assert ("Indication given to the model: Fever and cough." in comment.TextValue) == (indication is not None)
        assert referenced == source.SOPInstanceUID
        assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
        assert str(sr.PatientName) == SECRET_NAME and sr.PatientID == source.PatientID  # where DICOM puts them
        with values_never_quoted():
            birth = source.get("PatientBirthDate", "")
            assert sr.PatientBirthDate == ("" if birth == SECRET_DOB else birth)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
        if DCIODVFY:  # the SR as the PACS serves it back is valid too
            sr.save_as(tmp_path / "back.dcm", enforce_file_format=True)
            assert dciodvfy_errors(tmp_path / "back.dcm")[0] == []

    # Privacy: names and IDs never reach a log line, the state file or an error message.
    state_text = cfg.state_path.read_text(encoding="utf-8")
    for secret in (SECRET_NAME, SECRET_ID, "Dulcinea", "Secretname", SECRET_DOB):
        assert secret not in caplog.text and secret not in state_text and secret not in str(first.errors)

    second = run_loop(cfg, generator, info, once=True)  # state file: finished studies are not touched
    assert (second.stored, second.skipped_done, second.failed) == (0, 5, 1)
    third = run_loop(cfg, generator, info, once=True)  # the damaged study was tried max_attempts times
    assert (third.failed, third.gave_up) == (0, 1)

    cfg.state_path.unlink()  # state lost: the PACS itself says which studies are answered
    fourth = run_loop(cfg, generator, info, once=True)
    assert (fourth.stored, fourth.answered) == (0, 3)
    assert all(len(sr_instances(orthanc, uid)) == 1 for uid in loaded)


def test_since_limits_the_search_and_errors_name_the_problem(orthanc, loaded, drafting, tmp_path, login, monkeypatch,
                                                             caplog):
    import datetime as dt

    from llavarad.pacs import PacsError, run_loop, run_pass
    from llavarad.pacs.loop import StudyState

    generator, info = drafting
    cfg = config(orthanc, tmp_path, login, since=dt.date(2024, 1, 1))
    state = StudyState(cfg.state_path)
    try:
        summary = run_pass(cfg.client(), generator, info, cfg, state)
        assert summary.found == 5  # the damaged study is from 2010
        # Orthanc 1.10 + DICOMweb 1.7 ignore QIDO offset with ModalitiesInStudy: paging finds 2, and says so.
        paged = config(orthanc, tmp_path, login, since=dt.date(2024, 1, 1), page_size=2)
        with caplog.at_level(logging.WARNING, logger="llavarad.pacs"):
            found = run_pass(paged.client(), generator, info, paged, state).found
    finally:
        state.close()
    assert found == 2 and "the PACS may ignore offset" in caplog.text
    with pytest.raises(PacsError, match="in the future"):
        config(orthanc, tmp_path, login, since=dt.date.today() + dt.timedelta(days=2))

    monkeypatch.setenv(login, f"{orthanc.user}:wrong-password")
    with pytest.raises(PacsError, match="HTTP 401") as err:
        run_loop(cfg, generator, info, once=True)
    assert "wrong-password" not in str(err.value)
    monkeypatch.delenv(login)
    with pytest.raises(PacsError, match=f"environment variable {login} is not set"):
        run_loop(cfg, generator, info, once=True)


def test_bearer_token_from_a_file_is_sent(httpserver, tmp_path, drafting):
    from llavarad.pacs import PacsConfig, run_loop

    token = tmp_path / "token.txt"
    token.write_text("tok-123\n", encoding="utf-8")
    httpserver.expect_request("/dicom-web/studies", headers={"Authorization": "Bearer tok-123"}).respond_with_json([])
    cfg = PacsConfig(httpserver.url_for("/dicom-web"), state_path=tmp_path / "s.jsonl", auth="bearer", auth_file=token)
    summary = run_loop(cfg, *drafting, once=True)
    assert summary.found == 0 and len(httpserver.log) == 2  # one QIDO per modality (CR, DX)


def test_a_pacs_failing_mid_pass_costs_no_study_an_attempt(httpserver, tmp_path, drafting):
    from llavarad.pacs import PacsConfig, PacsError, run_loop

    study = {"0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}}
    httpserver.expect_request("/dicom-web/studies").respond_with_json([study])
    httpserver.expect_request("/dicom-web/studies/1.2.3.4/series").respond_with_data("busy", status=503)
    cfg = PacsConfig(httpserver.url_for("/dicom-web"), state_path=tmp_path / "s.jsonl", poll_seconds=1.0)
    waits: list[float] = []
    run_loop(cfg, *drafting, max_passes=2, sleep=waits.append)
    assert waits == [2.0] and cfg.state_path.read_text() == ""  # backed off; nothing charged to the study
    with pytest.raises(PacsError, match="HTTP 503"):
        run_loop(cfg, *drafting, once=True)


def test_unreachable_pacs_backs_off_and_once_fails_fast(tmp_path, drafting):
    import socket

    from llavarad.pacs import PacsConfig, PacsError, run_loop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = PacsConfig(f"http://127.0.0.1:{port}/dicom-web", state_path=tmp_path / "s.jsonl", poll_seconds=1.0,
                     max_backoff_seconds=5.0, timeout_seconds=2.0)
    waits: list[float] = []
    run_loop(cfg, *drafting, max_passes=4, sleep=waits.append)
    assert waits == [2.0, 4.0, 5.0]
    with pytest.raises(PacsError, match="cannot be reached"):
        run_loop(cfg, *drafting, once=True)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_leaves_one_sr_per_study(orthanc, shared_data, tiny_model_dir, tmp_path, login):
    orthanc.delete_all()
    datasets, expected = make_studies(shared_data, copies=4)
    orthanc.client().store_instances(datasets)
    state = tmp_path / "state.jsonl"
    argv = [sys.executable, "-m", "llavarad", "pacs", "--dicomweb", orthanc.dicomweb_url, "--model",
            str(tiny_model_dir), "--once", "--state", str(state), "--auth", "basic", "--auth-env", login,
            "--max-new-tokens", "24"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and b'"stored"' in state.read_bytes():
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the loop ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    done_at_kill = state.read_bytes().count(b'"stored"')
    assert 1 <= done_at_kill < len(expected)

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ.copy(), check=False)
    assert rerun.returncode == 1, rerun.stderr  # the damaged study fails; everything else is drafted
    for study_uid, source in expected.items():
        srs = sr_instances(orthanc, study_uid)
        assert len(srs) == 1, f"study {study_uid}: {len(srs)} SRs"
        assert finding_text(srs[0])[1] == source.SOPInstanceUID


def test_pacs_cli_once(orthanc, loaded, tiny_model_dir, tmp_path, login, capsys):
    from llavarad.cli import main

    argv = ["pacs", "--dicomweb", orthanc.dicomweb_url, "--model", str(tiny_model_dir), "--once", "--state",
            str(tmp_path / "state.jsonl"), "--auth", "basic", "--auth-env", login, "--max-new-tokens", "4"]
    assert main(argv) == 1  # one damaged study
    out = capsys.readouterr()
    assert "6 studies found: 3 drafted and stored" in out.out and "failed study" in out.err
    assert SECRET_NAME not in out.out + out.err and SECRET_ID not in out.out + out.err
    assert main(["pacs", "--dicomweb", "ftp://x", "--model", str(tiny_model_dir), "--once"]) != 0


def test_state_file_torn_by_a_kill_is_repaired_and_the_last_line_wins(tmp_path):
    from llavarad.pacs import StudyState

    path = tmp_path / "state.jsonl"
    path.write_text('{"study": "1.2", "status": "failed", "attempts": 1}\n{"study": "1.2", "status": "stored"}\n'
                    '{"study": "1.3", "sta', encoding="utf-8")  # the last write was cut by kill -9
    state = StudyState(path)
    try:
        assert {uid: rec["status"] for uid, rec in state.last.items()} == {"1.2": "stored"}
        state.record("1.3", "failed", attempts=1, error="x")
    finally:
        state.close()
    again = StudyState(path)
    again.close()
    assert again.last["1.3"]["attempts"] == 1
