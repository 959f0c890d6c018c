"""Report sources of the own-data import: CSV / JSONL with configurable columns and FHIR bulk NDJSON
DiagnosticReports (read with fhir.resources), and a FHIR export joined to a generated DICOM archive."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from own_data_archive import make_own_data

from llavarad.data.importers._common import DatasetLayoutError, ImportProblem
from llavarad.data.importers.dicom_archive import (
    DicomImportConfig,
    import_dicom_archive,
)
from llavarad.data.importers.report_sources import (
    ReportColumns,
    ReportRow,
    detect_report_format,
    iter_reports,
)
from llavarad.io.manifest import read_manifest

pytest.importorskip("fhir.resources", reason="FHIR report sources need the fhir.resources package")

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _report(rid: str, *, acc: str | None = None, uid: str | None = None, text: str | None = None,
            conclusion: str | None = None, status: str = "final", **more) -> dict:
    r = {"resourceType": "DiagnosticReport", "id": rid, "status": status, "code": {"text": "XR Chest 2 views"}}
    if acc:
        r["identifier"] = [{"type": {"coding": [{"system": V2, "code": "ACSN"}]}, "value": acc}]
    if uid:
        r["imagingStudy"] = [{"reference": f"ImagingStudy/x{rid}", "identifier": {"system": "urn:dicom:uid",
                                                                                   "value": f"urn:oid:{uid}"}}]
    if text:
        r["presentedForm"] = [{"contentType": "text/plain; charset=utf-8",
                               "data": base64.b64encode(text.encode()).decode()}]
    if conclusion:
        r["conclusion"] = conclusion
    r.update(more)
    return r


def _ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def _split(items):
    rows = [i for i in items if isinstance(i, ReportRow)]
    problems = [i for i in items if isinstance(i, ImportProblem)]
    return rows, problems


def test_csv_and_jsonl_with_named_columns(tmp_path):
    csv_path = tmp_path / "ris.csv"
    csv_path.write_text("ACC,REPORT_TEXT,REASON\nA1,\"FINDINGS: Clear.\",Cough\n,\"FINDINGS: x\",\nA3,,\n",
                        encoding="utf-8")
    cols = ReportColumns(key="ACC", text="REPORT_TEXT", indication="REASON")
    rows, problems = _split(list(iter_reports(csv_path, "accession", columns=cols)))
    assert [(r.key, r.text, r.indication, r.where) for r in rows] == [("A1", "FINDINGS: Clear.", "Cough", f"{csv_path}:2")]
    assert [p.where for p in problems] == [f"{csv_path}:3", f"{csv_path}:4"]
    with pytest.raises(DatasetLayoutError, match="ACC.*REPORT_TEXT|--key-column"):
        list(iter_reports(csv_path, "accession"))  # default column names are not there: say which are
    jl = tmp_path / "ris.jsonl"
    jl.write_text(json.dumps({"study_instance_uid": "1.2.3", "report": "Lungs clear."}) + "\n", encoding="utf-8")
    assert detect_report_format(jl) == "jsonl"
    rows, _ = _split(list(iter_reports(jl, "study-uid")))
    assert rows[0].key == "1.2.3" and rows[0].text == "Lungs clear."


def test_fhir_text_links_and_problems(tmp_path):
    contained = {"resourceType": "ImagingStudy", "id": "is1", "status": "available", "subject": {"reference": "Patient/p"},
                 "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.3"}]}
    pdf_only = _report("r5", acc="A5", uid="1.5")
    pdf_only["presentedForm"] = [{"contentType": "application/pdf", "data": base64.b64encode(b"%PDF-1.4").decode()}]
    path = _ndjson(tmp_path / "DiagnosticReport.ndjson", [
        _report("r1", acc="A1", uid="1.2.840.99.1", text="FINDINGS: Lungs clear.\nIMPRESSION: Normal."),
        _report("r2", acc="A2", conclusion="No acute disease.", imagingStudy=[{"reference": "ImagingStudy/1.2.840.99.2"}]),
        _report("r3", acc="A3", text="FINDINGS: Small effusion.", contained=[contained],
                imagingStudy=[{"reference": "#is1"}]),
        _report("r4", text="FINDINGS: x."),
        pdf_only,
        _report("r6", acc="A6", uid="1.6", text="FINDINGS: y.", status="entered-in-error"),
        {"resourceType": "Patient", "id": "p"},
        {"resourceType": "DiagnosticReport", "id": "bad", "status": "final", "code": {"text": "x"},
         "presentedForm": "not a list of attachments"},
    ])
    assert detect_report_format(path) == "fhir"
    rows, problems = _split(list(iter_reports(path, "study-uid")))
    assert [(r.key, r.text) for r in rows] == [("1.2.840.99.1", "FINDINGS: Lungs clear.\nIMPRESSION: Normal."),
                                                ("1.2.840.99.2", "No acute disease."),
                                                ("1.2.840.99.3", "FINDINGS: Small effusion.")]
    reasons = {p.id: p.message for p in problems}
    assert set(reasons) == {"r4", "r5", "r6", "bad"}  # the Patient resource is not a report and not a problem
    assert "imagingStudy" in reasons["r4"] and "presentedForm" in reasons["r5"]
    assert "entered-in-error" in reasons["r6"] and "invalid FHIR" in reasons["bad"]
    by_acc, _ = _split(list(iter_reports(path, "accession")))
    assert [r.key for r in by_acc] == ["A1", "A2", "A3"]  # r5 has an accession but no usable text


def test_fhir_r5_reads_study(tmp_path):
    r = _report("r1", acc="A1", text="FINDINGS: Clear.")
    r["study"] = [{"reference": "ImagingStudy/1.2.3.4"}]
    rows, problems = _split(list(iter_reports(_ndjson(tmp_path / "r5.ndjson", [r]), "study-uid", fhir_version="R5")))
    assert [r.key for r in rows] == ["1.2.3.4"] and not problems


def test_fhir_export_joined_to_the_archive_amendment_wins(shared_data, tmp_path):
    own = make_own_data(shared_data, tmp_path, n_patients=3)
    first, second = own.plan.studies[0], own.plan.studies[1]
    path = _ndjson(tmp_path / "reports.ndjson", [
        _report("d1", uid=first.study_uid, text="FINDINGS: Draft text.", status="preliminary"),
        _report("f1", uid=first.study_uid, text="INDICATION: Fever.\nFINDINGS: Final text.", status="final"),
        _report("f2", uid=second.study_uid, conclusion="FINDINGS: Heart normal."),
    ])
    out = tmp_path / "m.jsonl"
    s = import_dicom_archive(own.plan.root, path, out, DicomImportConfig(workers=1, join="study-uid"))
    recs = {r.study_id: r for r in read_manifest(out)}
    assert recs[first.study_uid].findings == "Final text." and recs[first.study_uid].indication == "Fever."
    assert recs[second.study_uid].findings == "Heart normal."
    assert s.studies_with_report == 2 and s.problems["duplicate_report"] == 1
    problems = [json.loads(x) for x in (tmp_path / "m.problems.jsonl").read_text().splitlines()]
    dup = next(p for p in problems if p["reason"] == "duplicate_report")
    assert dup["where"].endswith(":1") and dup["action"] == "excluded"
