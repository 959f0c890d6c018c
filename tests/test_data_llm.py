"""LLM steps of data preparation: strict reply validation, and whole runs against the shared
client's scripted local server (valid, invalid and failing replies; cache; resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_fake_server import Drop, Reply, ScriptedServer, Status

from llavarad.data.sections import split_sections
from llavarad.data.structuring import run_llm_step
from llavarad.io.manifest import ManifestRecord, read_jsonl
from llavarad.llm import LLMClient, LLMConfig
from llavarad.prompts.structuring import (
    STRUCTURING_VERSION,
    parse_findings,
    parse_structuring,
    parse_translation,
    structuring_messages,
    support,
    translation_messages,
)

SOURCE = ("EXAMINATION: CHEST PORTABLE\nINDICATION: ___ year old with fever\nIMPRESSION: Compared to prior, "
          "the right lower lobe opacity is unchanged. No pleural effusion.")


def _reply(**sections: object) -> str:
    body = {"EXAMINATION": None, "INDICATION": None, "FINDINGS": None, "IMPRESSION": None}
    body.update(sections)
    return json.dumps(body)


# -- validation ------------------------------------------------------------------------------
def test_structuring_prompt_is_supplementary_table_6() -> None:
    msgs = structuring_messages(SOURCE)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You are an expert medical assistant AI")
    assert "Extract four sections from the input radiology report" in msgs[1]["content"]
    assert msgs[1]["content"].rstrip().endswith(SOURCE.strip() + "\n\nOUTPUT:")


def test_parse_structuring_accepts_valid_and_fenced_json() -> None:
    reply = _reply(EXAMINATION="CHEST PORTABLE", INDICATION="Fever.",
                   FINDINGS="Right lower lobe opacity. No pleural effusion.")
    got = parse_structuring(reply, SOURCE)
    assert got == {"examination": "CHEST PORTABLE", "indication": "Fever.",
                   "findings": "Right lower lobe opacity. No pleural effusion.", "impression": None}
    assert parse_structuring(f"```json\n{reply}\n```", SOURCE) == got
    lower = json.dumps({"examination": None, "indication": None, "findings": "No pleural effusion.", "impression": None})
    assert parse_structuring(lower, SOURCE)["findings"] == "No pleural effusion."


@pytest.mark.parametrize("reply,message", [
    ("The findings are: no effusion.", "not JSON"),
    ("[1, 2]", "expected an object"),
    (_reply(FINDINGS="No pleural effusion.", COMPARISON="prior"), "unexpected COMPARISON"),
    (json.dumps({"FINDINGS": "No pleural effusion."}), "missing EXAMINATION, INDICATION, IMPRESSION"),
    (_reply(FINDINGS=["No pleural effusion."]), "string or null"),
    (_reply(FINDINGS="Large left pneumothorax with mediastinal shift and displaced rib fractures."), "invents"),
])
def test_parse_structuring_rejects(reply: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_structuring(reply, SOURCE)


def test_support_and_findings_and_translation() -> None:
    assert support("No pleural effusion.", SOURCE) == 1.0 and support("", SOURCE) == 1.0
    assert parse_findings('{"FINDINGS": null}', SOURCE) is None
    with pytest.raises(ValueError, match="invents"):
        parse_findings('{"FINDINGS": "Cardiomegaly with pulmonary edema."}', SOURCE)
    es = "cardiomegali . derram pleural izquierd ."
    assert "Spanish" in translation_messages(es)[1]["content"]
    assert parse_translation('{"translation": "Cardiomegaly. Left pleural effusion."}', es) == \
        "Cardiomegaly. Left pleural effusion."
    with pytest.raises(ValueError, match="still Spanish"):
        parse_translation('{"translation": "cardiomegalia con derram pleural izquierd"}', es)
    with pytest.raises(ValueError, match="adds content"):
        parse_translation(json.dumps({"translation": "word " * 40}), es)
    with pytest.raises(ValueError, match="empty"):
        parse_translation('{"translation": null}', es)


# -- runs against the scripted server ----------------------------------------------------------
def _records(tmp_path: Path) -> list[ManifestRecord]:
    reports = {
        "s1": "INDICATION: cough\nFINDINGS: Heart size is normal. No effusion.\nIMPRESSION: Normal.",
        "s2": "INDICATION: fever\nIMPRESSION: Compared to prior, lungs are clear. Line in place.",
        "s3": "FINDINGS: Mild cardiomegaly.",
    }
    recs = []
    for i, (study, text) in enumerate([*reports.items(), ("s1", reports["s1"])]):
        p = tmp_path / f"{study}.txt"
        p.write_text(text)
        sec = split_sections(text)
        recs.append(ManifestRecord(id=f"mimic-cxr/d{i}", image=f"d{i}.jpg", dataset="mimic-cxr", split="train",
                                   study_id=study, findings=sec.findings, text_source="rule_based",
                                   extra={"report_path": str(p)}))
    recs.append(ManifestRecord(id="mimic-cxr/d9", image="d9.jpg", dataset="mimic-cxr", split="train", study_id="s9",
                               extra={"report_path": str(tmp_path / "missing.txt")}))
    return recs


def _sectioner_responder(body: dict, index: int) -> Reply:
    """A stand-in model: structures the report it is sent with the rule-based sectioner."""
    user = body["messages"][1]["content"]
    report = user.rsplit("INPUT:\n\n", 1)[1].rsplit("\n\nOUTPUT:", 1)[0]  # after the prompt's worked example
    s = split_sections(report)
    findings = s.findings or (s.impression.replace("Compared to prior, l", "L") if s.impression else None)
    return Reply(_reply(INDICATION=s.indication, FINDINGS=findings, IMPRESSION=s.impression), prompt_tokens=50)


def _client(srv: ScriptedServer, tmp_path: Path, **kw: object) -> LLMClient:
    cfg = LLMConfig(backend="openai_compatible", base_url=srv.base_url, model="m", api_key_env=None, timeout_s=2.0,
                    max_retries=2, max_parse_retries=1, backoff_base_s=0.001, backoff_max_s=0.01, concurrency=2,
                    cache_path=str(tmp_path / "cache.sqlite"), **kw)
    return LLMClient(cfg)


def test_structure_run_valid_invalid_failing_then_resume(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    out = tmp_path / "structured.jsonl"
    # s1: server error then a valid reply; s2: invented findings twice -> failure; s3: valid
    def responder(body: dict, index: int):
        user = body["messages"][1]["content"]
        if "fever" in user and responder.bad_s2:
            return Reply(_reply(FINDINGS="Large left pneumothorax with deep sulcus sign."))
        if "cough" in user and not responder.s1_failed:
            responder.s1_failed = True
            return Status(500)
        return _sectioner_responder(body, index)

    responder.bad_s2 = True
    responder.s1_failed = False
    with ScriptedServer(responder=responder) as srv, _client(srv, tmp_path) as client:
        summary = run_llm_step(recs, out, client, "structure", chunk_size=2)
        sent_first = client.stats.requests_sent
    assert (summary.reports, summary.ok, summary.failed, summary.unreadable) == (3, 2, 1, 1)
    rows = {obj["id"]: obj for _l, obj in read_jsonl(out)}
    assert set(rows) == {"mimic-cxr/s1", "mimic-cxr/s3"}
    assert rows["mimic-cxr/s1"]["sections"]["findings"] == "Heart size is normal. No effusion."
    assert rows["mimic-cxr/s1"]["prompt_version"] == STRUCTURING_VERSION
    assert rows["mimic-cxr/s1"]["text_source"] == "llm_structured"
    errors = [obj for _l, obj in read_jsonl(tmp_path / "structured.errors.jsonl")]
    s2 = next(e for e in errors if e["id"] == "mimic-cxr/s2")
    assert "invents" in s2["error"] and len(s2["raw_replies"]) == 2  # first try + one parse retry
    assert any(e["id"] == "mimic-cxr/s9" and "not readable" in e["error"] for e in errors)
    assert sent_first >= 5  # 500 + valid for s1, two for s2, one for s3

    # rerun: finished reports are skipped, the failed one is retried and now succeeds
    responder.bad_s2 = False
    with ScriptedServer(responder=responder) as srv, _client(srv, tmp_path) as client:
        summary = run_llm_step(recs, out, client, "structure")
        assert client.stats.requests_sent == 1
    assert (summary.already_done, summary.ok, summary.failed) == (2, 1, 0)
    rows = {obj["id"]: obj for _l, obj in read_jsonl(out)}
    assert rows["mimic-cxr/s2"]["sections"]["findings"] == "Lungs are clear. Line in place."

    # a fresh output with the same cache costs nothing
    with ScriptedServer([Drop()] * 10) as srv, _client(srv, tmp_path) as client:
        summary = run_llm_step(recs, tmp_path / "again.jsonl", client, "structure")
        assert client.stats.requests_sent == 0 and summary.cached == 3


def test_findings_step_only_asks_for_reports_without_findings(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    with ScriptedServer(responder=lambda body, i: Reply('{"FINDINGS": "Lungs are clear. Line in place."}')) as srv, \
            _client(srv, tmp_path) as client:
        summary = run_llm_step(recs, tmp_path / "f.jsonl", client, "findings")
        assert len(srv.requests) == 1
    assert summary.ok == 1 and summary.not_applicable == 2
    row = next(obj for _l, obj in read_jsonl(tmp_path / "f.jsonl"))
    assert row["id"] == "mimic-cxr/s2" and row["findings"] == "Lungs are clear. Line in place."


def test_translate_step_with_rate_limit_and_token_counts(tmp_path: Path) -> None:
    recs = [ManifestRecord(id=f"padchest/i{i}", image="x.png", dataset="padchest", split="train", study_id=f"st{i // 2}",
                           extra={"report_es": "cardiomegali . derram pleural izquierd ."}) for i in range(4)]
    with ScriptedServer(responder=lambda body, i: Reply('{"translation": "Cardiomegaly. Left pleural effusion."}',
                                                        prompt_tokens=40, completion_tokens=8)) as srv, \
            _client(srv, tmp_path, requests_per_minute=6000.0) as client:
        summary = run_llm_step(recs, tmp_path / "t.jsonl", client, "translate")
        stats = client.stats
    assert summary.ok == 2  # two studies, four images
    assert stats.prompt_tokens == 80 and stats.completion_tokens == 16
    rows = [obj for _l, obj in read_jsonl(tmp_path / "t.jsonl")]
    assert {r["id"] for r in rows} == {"padchest/st0", "padchest/st1"}
    assert all(r["text_source"] == "translated" and r["findings"] == "Cardiomegaly. Left pleural effusion." for r in rows)


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="task"):
        run_llm_step([], "x.jsonl", None, "summarise")  # type: ignore[arg-type]
