"""Importers on small fixture trees written in each release's real layout (column names and
folder structure as in the official files / torchxrayvision's copies), plus malformed rows."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from llavarad.data.importers import IMPORTERS, DatasetLayoutError, ImportProblem, import_dataset
from llavarad.data.importers.openi import parse_openi_xml
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS, ManifestRecord

CHEXPERT_COLS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                 "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                 "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
MIMIC_LABEL_COLS = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                    "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]


def _csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(buf.getvalue().encode()))
    else:
        path.write_text(buf.getvalue())
    return path


def _labels14(**values: object) -> dict[str, object]:
    return {k: values.get(k.replace(" ", "_"), "") for k in CHEXPERT_COLS[5:]}


# -- fixture trees (also used by test_data_builders.py) ----------------------------------------
def make_chexpert(root: Path) -> Path:
    d = root / "CheXpert-v1.0-small"
    rows = []
    for rel, fl, appa, labels in [
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", _labels14(No_Finding="1.0", Support_Devices="1.0")),
        ("train/patient00002/study2/view1_frontal.jpg", "Frontal", "AP", _labels14(Cardiomegaly="-1.0", Edema="1.0", Pneumothorax="0.0")),
        ("train/patient00002/study2/view2_lateral.jpg", "Lateral", "", _labels14(Edema="1.0")),
        ("train/patient00003/study1/view1_frontal.jpg", "Frontal", "PA", _labels14(Pleural_Other="1.0", Fracture="0.0")),
    ]:
        rows.append([f"CheXpert-v1.0-small/{rel}", "Female", 60, fl, appa, *labels.values()])
    _csv(d / "train.csv", CHEXPERT_COLS, rows)
    _csv(d / "valid.csv", CHEXPERT_COLS, [["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
                                           "Male", 73, "Frontal", "AP", *_labels14(Edema="0.0").values()]])
    return d


def make_brax(root: Path) -> Path:
    d = root / "brax" / "1.1.0"
    cols = ["DicomPath", "PngPath", "PatientID", "AccessionNumber", "ViewPosition", "Rows", "Columns",
            *CHEXPERT_COLS[5:], "PatientSex", "PatientAge"]
    rows = [
        ["dicom/id_1/a.dcm", "images/id_1/Study_1/Series_1/image-1.png", "id_1", "acc1", "PA", 2000, 2000,
         *_labels14(No_Finding="1.0").values(), "F", "45"],
        ["dicom/id_2/b.dcm", "images/id_2/Study_2/Series_1/image-2.png", "id_2", "acc2", "", 2000, 2000,
         *_labels14(Cardiomegaly="1.0", Pleural_Effusion="-1.0").values(), "M", "85 or more"],
        ["dicom/id_2/c.dcm", "images/id_2/Study_2/Series_2/image-3.png", "id_2", "acc2", "L", 2000, 2000,
         *_labels14(Cardiomegaly="1.0").values(), "M", "85 or more"],
    ]
    _csv(d / "master_spreadsheet_update.csv", cols, rows)
    return d


def make_candid(root: Path) -> Path:
    d = root / "CANDID-PTX"
    _csv(d / "Pneumothorax_reports.csv", ["SOPInstanceUID", "EncodedPixels"],
         [["1.2.3.1", "-1"], ["1.2.3.2", "100 5 300 5"], ["1.2.3.2", "900 4"], ["1.2.3.3", "-1"]])
    _csv(d / "acute_rib_fracture.csv", ["anon_SOPUID", "mask_rle"], [["1.2.3.3", "10 2"]])
    _csv(d / "chest_tube.csv", ["anon_SOPUID", "mask_rle"], [["1.2.3.2", "20 3"], ["1.2.3.3", "40 3"]])
    (d / "dataset").mkdir()
    return d


def make_vindr(root: Path) -> Path:
    d = root / "vinbigdata"
    cols = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    _csv(d / "train.csv", cols, [
        ["aaa", "No finding", 14, "R1", "", "", "", ""],
        ["aaa", "No finding", 14, "R2", "", "", "", ""],
        ["bbb", "Cardiomegaly", 3, "R8", 10, 10, 50, 50],
        ["bbb", "Cardiomegaly", 3, "R9", 11, 10, 50, 52],
        ["bbb", "Cardiomegaly", 3, "R9", 60, 10, 90, 52],
        ["bbb", "Nodule/Mass", 8, "R10", 5, 5, 8, 8],
        ["ccc", "Not a class", 99, "R1", "", "", "", ""],
    ], gz=False)
    return d


def make_objectcxr(root: Path) -> Path:
    d = root / "object-CXR"
    _csv(d / "train.csv", ["image_name", "annotation"], [["00001.jpg", "0 10 10 20 20"], ["00002.jpg", ""]])
    _csv(d / "dev.csv", ["image_name", "annotation"], [["08001.jpg", ""]])
    (d / "train").mkdir()
    (d / "dev").mkdir()
    return d


def make_padchest(root: Path) -> Path:
    d = root / "PadChest"
    cols = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "Projection",
            "MethodProjection", "ReportID", "Report", "MethodLabel", "Labels", "Localizations"]
    _csv(d / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", cols, [
        [0, "img_a.png", 0, 20140915, "st1", "pt1", 1930.0, "PA", "Manual", 1, " sin hallazg patolog edad pacient .",
         "Physician", "['normal']", "[]"],
        [1, "img_b.png", 0, 20140915, "st1", "pt1", 1930.0, "L", "Manual", 1, " sin hallazg patolog edad pacient .",
         "Physician", "['normal']", "[]"],
        [2, "img_c.png", 12, 20150101, "st2", "pt2", 1950.0, "AP_horizontal", "Manual", 2,
         " cardiomegalia . derram pleural izquierd .", "Physician", "['cardiomegaly', 'pleural effusion'", "[]"],
    ], gz=True)
    return d


def _openi_xml(uid: int, sections: dict[str, str], images: list[str]) -> str:
    abstract = "".join(f'<AbstractText Label="{k}">{v}</AbstractText>' for k, v in sections.items())
    imgs = "".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="CXR{uid}"/>'
            f"<MedlineCitation><Article><Abstract>{abstract}</Abstract></Article></MedlineCitation>"
            f"<MeSH><major>normal</major></MeSH>{imgs}</eCitation>")


def make_openi(root: Path) -> Path:
    d = root / "openi"
    xmls = {
        "ecgen-radiology/1.xml": _openi_xml(1, {"COMPARISON": "None.", "INDICATION": "Cough.",
                                               "FINDINGS": "The lungs are clear.", "IMPRESSION": "Normal chest."},
                                            ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        "ecgen-radiology/2.xml": _openi_xml(2, {"INDICATION": "Pain.", "FINDINGS": "",
                                               "IMPRESSION": "No acute disease."}, ["CXR2_IM-0652-1001"]),
        "ecgen-radiology/3.xml": _openi_xml(3, {"FINDINGS": "Heart is enlarged."}, []),
        "ecgen-radiology/4.xml": "<eCitation><broken",
    }
    d.mkdir(parents=True)
    with tarfile.open(d / "NLMCXR_reports.tgz", "w:gz") as tar:
        for name, text in xmls.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _csv(d / "nlmcxr_dicom_metadata.csv", ["imageid", "View Position", "Modality"],
         [["CXR1_1_IM-0001-3001", "PA", "CR"], ["CXR1_1_IM-0001-4001", "LL", "CR"], ["CXR2_IM-0652-1001", "AP", "CR"]],
         gz=True)
    (d / "NLMCXR_png").mkdir()
    return d


MIMIC_REPORTS = {
    ("10000032", "50414267"): "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n INDICATION: ___ with cough\n\n"
                              " COMPARISON: ___.\n\n FINDINGS:\n\n Heart size is normal. No effusion.\n\n"
                              " IMPRESSION:\n\n No acute process.\n",
    ("10000032", "53189527"): "FINAL REPORT\n INDICATION: fever\n\n FINDINGS AND IMPRESSION: Lungs are clear.\n",
    ("10000764", "57375967"): "WET READ: ___ 10:42 PM\n IMPRESSION: 1. Small left effusion. 2. Line in place.\n",
}


def make_mimic(root: Path) -> Path:
    d = root / "mimic-cxr-jpg" / "2.0.0"
    meta_cols = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                 "Columns", "StudyDate", "StudyTime"]
    dicoms = [("d1", "10000032", "50414267", "PA"), ("d2", "10000032", "50414267", "LATERAL"),
              ("d3", "10000032", "53189527", "AP"), ("d4", "10000764", "57375967", "AP"),
              ("d5", "10000764", "57375967", "PA"), ("d6", "10000999", "59999999", "PA")]
    _csv(d / "mimic-cxr-2.0.0-metadata.csv", meta_cols,
         [[i, s, st, "CHEST (PA AND LAT)", v, 3056, 2544, 21800506, 213014.5] for i, s, st, v in dicoms], gz=True)
    splits = {"d1": "train", "d2": "train", "d3": "train", "d4": "validate", "d5": "test", "d6": "train"}
    _csv(d / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
         [[i, st, s, splits[i]] for i, s, st, _v in dicoms if i != "d6"] + [["d6", "59999999", "10000999", "train"]],
         gz=True)
    lab = {c: "" for c in MIMIC_LABEL_COLS[2:]}
    _csv(d / "mimic-cxr-2.0.0-chexpert.csv", MIMIC_LABEL_COLS, [
        ["10000032", "50414267", *{**lab, "No Finding": "1.0"}.values()],
        ["10000764", "57375967", *{**lab, "Pleural Effusion": "1.0", "Support Devices": "-1.0"}.values()],
        ["10000032", "53189527", *{**lab, "Edema": "2.0"}.values()],
    ], gz=True)
    reports = root / "mimic-cxr-reports" / "files"
    for (subject, study), text in MIMIC_REPORTS.items():
        p = reports / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def collect(name: str, root: Path, **kw: object) -> tuple[list[ManifestRecord], list[ImportProblem]]:
    recs, probs = [], []
    for item in import_dataset(name, root, **kw):
        (recs if isinstance(item, ManifestRecord) else probs).append(item)
    for r in recs:  # every record survives a round trip through the validated schema
        assert ManifestRecord.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()
    return recs, probs


# -- tests -------------------------------------------------------------------------------------
def test_chexpert(tmp_path: Path) -> None:
    recs, probs = collect("chexpert", make_chexpert(tmp_path))
    assert probs == [] and len(recs) == 5
    r = recs[1]
    assert r.split == "train" and r.patient_id == "patient00002" and r.study_id == "patient00002/study2"
    assert r.view == "AP" and r.labels["Cardiomegaly"] == -1.0 and r.labels["Edema"] == 1.0
    assert r.labels["Pneumothorax"] == 0.0 and r.labels["Atelectasis"] is None
    assert set(r.labels) == set(CHEXPERT_OBSERVATIONS)
    assert r.image == str(tmp_path / "CheXpert-v1.0-small" / "train/patient00002/study2/view1_frontal.jpg")
    assert recs[2].view == "LATERAL" and recs[2].extra["frontal"] is False
    assert recs[4].split == "validate"


def test_brax(tmp_path: Path) -> None:
    recs, probs = collect("brax", make_brax(tmp_path))
    assert probs == [] and [r.view for r in recs] == ["PA", None, "LATERAL"]
    assert recs[1].labels["Pleural Effusion"] == -1.0 and recs[1].patient_id == "id_2"
    assert all(r.split == "train" for r in recs)


def test_candid_groups_mask_rows(tmp_path: Path) -> None:
    recs, probs = collect("candid-ptx", make_candid(tmp_path))
    assert probs == [] and [r.id for r in recs] == ["candid-ptx/1.2.3.1", "candid-ptx/1.2.3.2", "candid-ptx/1.2.3.3"]
    assert recs[0].extra["source_labels"] == {"Pneumothorax": 0.0, "Rib Fracture": 0.0, "Chest Tube": 0.0}
    assert recs[1].extra["source_labels"] == {"Pneumothorax": 1.0, "Rib Fracture": 0.0, "Chest Tube": 1.0}
    assert recs[2].labels == {"Pneumothorax": 0.0, "Fracture": 1.0, "Support Devices": 1.0}


def test_candid_dicom_headers(tmp_path: Path, shared_data: Path) -> None:
    import shutil

    d = make_candid(tmp_path)
    shutil.copy(shared_data / "images" / "siim_pa_jpeg_baseline.dcm", d / "dataset" / "1.2.3.1.dcm")
    (d / "dataset" / "1.2.3.2.dcm").write_bytes(b"not a dicom")
    recs, probs = collect("candid-ptx", d, read_dicom_headers=True)
    assert recs[0].view == "PA" and recs[0].patient_id
    assert len(probs) == 2 and all("DICOM" in p.message for p in probs)  # 1.2.3.2 corrupt, 1.2.3.3 missing
    assert len(recs) == 3  # the records are still there


def test_vindr_votes(tmp_path: Path) -> None:
    recs, probs = collect("vindr-cxr", make_vindr(tmp_path))
    assert len(probs) == 1 and "Not a class" in probs[0].message
    by_id = {r.id: r for r in recs}
    a, b = by_id["vindr-cxr/aaa"], by_id["vindr-cxr/bbb"]
    assert a.extra["source_labels"]["No finding"] == 1.0 and a.labels["No Finding"] == 1.0
    assert b.extra["source_labels"]["Cardiomegaly"] == 1.0 and b.labels["Lung Lesion"] == 1.0
    recs2, _ = collect("vindr-cxr", tmp_path / "vinbigdata", min_votes=2)
    b2 = {r.id: r for r in recs2}["vindr-cxr/bbb"]
    assert b2.extra["source_labels"]["Cardiomegaly"] == 1.0  # R8 and R9 (R9's two boxes count once)
    assert b2.extra["source_labels"]["Nodule/Mass"] == 0.0


def test_vindr_physionet_layout(tmp_path: Path) -> None:
    d = tmp_path / "vindr"
    cols = ["image_id", "rad_id", "Aortic enlargement", "Pneumonia", "Tuberculosis", "No finding"]
    _csv(d / "annotations" / "image_labels_train.csv", cols, [["x1", "R1", 1, 0, 0, 0], ["x1", "R2", 0, 1, 0, 0]])
    _csv(d / "annotations" / "image_labels_test.csv", cols, [["t1", "R3", 0, 0, 0, 1]])
    recs, probs = collect("vindr-cxr", d)
    assert probs == [] and [(r.id, r.split) for r in recs] == [("vindr-cxr/x1", "train"), ("vindr-cxr/t1", "test")]
    assert recs[0].extra["source_labels"] == {"Aortic enlargement": 1.0, "Pneumonia": 1.0, "Tuberculosis": 0.0,
                                              "No finding": 0.0}


def test_objectcxr(tmp_path: Path) -> None:
    recs, probs = collect("object-cxr", make_objectcxr(tmp_path))
    assert probs == [] and [r.split for r in recs] == ["train", "train", "validate"]
    assert [r.extra["source_labels"]["Foreign Object"] for r in recs] == [1.0, 0.0, 0.0]


def test_padchest_keeps_spanish_report_and_reports_bad_labels(tmp_path: Path) -> None:
    recs, probs = collect("padchest", make_padchest(tmp_path))
    assert len(recs) == 3 and len(probs) == 1 and "Labels" in probs[0].message
    assert recs[0].extra["report_es"] == "sin hallazg patolog edad pacient ." and recs[0].findings is None
    assert [r.view for r in recs] == ["PA", "LATERAL", "AP"]
    assert recs[2].image.endswith("PadChest/12/img_c.png")


def test_openi_tgz_with_views(tmp_path: Path) -> None:
    recs, probs = collect("openi", make_openi(tmp_path))
    assert [r.id for r in recs] == ["openi/CXR1_1_IM-0001-3001", "openi/CXR1_1_IM-0001-4001", "openi/CXR2_IM-0652-1001"]
    assert [r.view for r in recs] == ["PA", "LATERAL", "AP"]
    assert recs[0].findings == "The lungs are clear." and recs[0].extra["comparison"] == "None."
    assert recs[2].findings is None and recs[2].impression == "No acute disease."
    assert len(probs) == 2  # report 3 lists no image, report 4 is broken XML
    assert any("no images" in p.message for p in probs) and any("XML" in p.message for p in probs)


def test_openi_real_xml_layout(shared_data: Path) -> None:
    """The real Open-I dev reports, written back into the XML layout, parse to the same sections."""
    rows = list(csv.DictReader((shared_data / "reports/openi_dev/openi_reports_dev.csv").open()))[:50]
    for row in rows:
        secs = {k.upper(): row[k] for k in ("comparison", "indication", "findings", "impression")}
        from xml.sax.saxutils import escape

        xml = _openi_xml(int(row["uid"]), {k: escape(v) for k, v in secs.items()}, [f"CXR{row['uid']}_IM-1"])
        uid, sections, images, _ = parse_openi_xml(xml.encode(), "x")
        assert uid == f"CXR{row['uid']}" and images == [f"CXR{row['uid']}_IM-1"]
        for k in ("findings", "impression"):
            assert (sections[k] or "") == " ".join(row[k].split())


def test_mimic_join_sections_and_problems(tmp_path: Path) -> None:
    recs, probs = collect("mimic-cxr", make_mimic(tmp_path), reports_dir=tmp_path / "mimic-cxr-reports" / "files")
    by_id = {r.id: r for r in recs}
    d1 = by_id["mimic-cxr/d1"]
    assert d1.split == "train" and d1.view == "PA" and d1.text_source == "rule_based"
    assert d1.findings == "Heart size is normal. No effusion." and d1.impression == "No acute process."
    assert d1.indication == "___ with cough" and d1.labels["No Finding"] == 1.0
    assert d1.image.endswith("files/p10/p10000032/s50414267/d1.jpg")
    assert Path(d1.extra["report_path"]).read_text() == MIMIC_REPORTS[("10000032", "50414267")]
    assert by_id["mimic-cxr/d3"].impression == "Lungs are clear." and by_id["mimic-cxr/d3"].findings is None
    assert by_id["mimic-cxr/d4"].split == "validate" and by_id["mimic-cxr/d4"].labels["Support Devices"] == -1.0
    assert by_id["mimic-cxr/d5"].split == "test"
    # the bad label row (Edema 2.0) and the missing report of d6 are reported, not dropped silently
    assert any("Edema" in p.message for p in probs)
    assert any(p.id == "d6" and "report" in p.message for p in probs)
    assert "mimic-cxr/d6" in by_id and by_id["mimic-cxr/d6"].findings is None


def test_layout_errors_name_the_fix(tmp_path: Path) -> None:
    for name in IMPORTERS:
        with pytest.raises((DatasetLayoutError, FileNotFoundError)) as info:
            list(import_dataset(name, tmp_path))
        assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        import_dataset("nope", tmp_path)
    bad = tmp_path / "bad"
    _csv(bad / "train.csv", ["Path", "Sex"], [["x", "F"]])
    with pytest.raises(DatasetLayoutError, match="missing column"):
        list(import_dataset("chexpert", bad))
