"""The report drafting service end to end: a real uvicorn server on a free loopback port, tiny model.

Dynamic batching gives the one-at-a-time answers, the report carries labels/warnings/heat maps, the
OpenAI client works unchanged (plain and streaming), health/metrics/docs answer offline, and a
fast subset of the benchmark's fuzz corpus gets only 4xx JSON errors.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import random
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

MAX_NEW = 12
DCM = "siim_pa_jpeg_baseline.dcm"
STATIC = Path(__file__).resolve().parents[1] / "src" / "llavarad" / "serve" / "static"


@pytest.fixture(scope="module")
def server(tiny_bundle):
    """The service on the tiny model; a long batching window so concurrent requests share batches."""
    from llavarad.generate import ReportGenerator
    from llavarad.serve import ServeConfig, create_app
    from llavarad.serve.background import BackgroundServer

    config = ServeConfig(max_new_tokens=MAX_NEW, max_wait_ms=300, max_batch_size=8)
    app = create_app(config, ReportGenerator(tiny_bundle), model_id="tiny-test")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def images(shared_data) -> dict[str, bytes]:
    d = shared_data / "images"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".png", ".dcm")}


def _post(url: str, image: bytes, name: str = "x", **fields: str) -> httpx.Response:
    headers = {"X-Request-Id": fields.pop("rid")} if "rid" in fields else {}
    return httpx.post(url + "/v1/reports", files={"image": (name, image)}, data=fields, headers=headers, timeout=120)


def test_report_from_dicom(server, images):
    from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

    r = _post(server.url, images[DCM], "study.dcm", indication="Cough.", rid="req-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and r.headers["x-request-id"] == "req-1"
    assert isinstance(body["findings"], str) and body["findings"]
    assert list(body["labels"]) == list(CHEXPERT_OBSERVATIONS)
    assert all(v in (None, 1.0, 0.0, -1.0) for v in body["labels"].values())
    assert body["model"]["id"] == "tiny-test" and body["settings"]["max_new_tokens"] == MAX_NEW
    assert body["settings"]["decoding"] == "greedy" and body["words"] is None
    assert body["timings"]["total_ms"] >= body["timings"]["generate_ms"] > 0
    assert isinstance(body["warnings"], list)
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"


def test_dynamic_batches_equal_one_at_a_time(server, images, tiny_bundle):
    from llavarad.generate import GenerationSettings, generate_reports
    from llavarad.io.images import read_cxr

    metrics = server.app.state.service.metrics
    n0, s0 = metrics.value("llavarad_batch_size_count"), metrics.value("llavarad_batch_size_sum")
    names = sorted(images)[:6]
    inds = [None, "Shortness of breath.", "Fever.", None, "Chest pain after a fall.", "Cough."]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_post, server.url, images[n], n, **({"indication": i} if i else {}))
                   for n, i in zip(names, inds)]
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    batches, items = metrics.value("llavarad_batch_size_count") - n0, metrics.value("llavarad_batch_size_sum") - s0
    assert items == 6 and batches < 6, "concurrent requests were not batched"
    assert max(a.json()["timings"]["batch_size"] for a in answers) > 1
    settings = GenerationSettings(max_new_tokens=MAX_NEW, batch_size=1)
    for name, ind, answer in zip(names, inds, answers):
        alone = generate_reports(tiny_bundle, [read_cxr(io.BytesIO(images[name])).image], [ind], settings)[0]
        assert answer.json()["findings"] == alone, name


def test_explain_returns_each_words_heat_map(server, images, tiny_bundle):
    r = _post(server.url, images["00000001_000.png"], explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    grid = tiny_bundle.preset.grid_size
    assert body["words"], "no words came back"
    for w in body["words"]:
        assert body["findings"][w["start"]:w["end"]] == w["text"]
        assert len(w["grid"]) == grid and all(len(row) == grid for row in w["grid"])
        assert w["overlay"].startswith("data:image/png;base64,")
    png = base64.b64decode(body["words"][0]["overlay"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")


def test_preview_renders_dicom_on_the_server(server, images):
    from PIL import Image

    r = httpx.post(server.url + "/v1/preview", files={"image": ("a.dcm", images[DCM])}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["source_format"], body["view"], body["width"], body["height"]) == ("dicom", "PA", 1024, 1024)
    img = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1])))
    assert img.size == (1024, 1024) and img.mode == "L"


def test_openai_client_unchanged(server, images):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-loopback", timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny-test"]
    uri = "data:application/dicom;base64," + base64.b64encode(images[DCM]).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Cough."},
                                             {"type": "image_url", "image_url": {"url": uri}}]}]
    plain = client.chat.completions.create(model="tiny-test", messages=messages)
    expected = _post(server.url, images[DCM], indication="Cough.").json()["findings"]
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="tiny-test", messages=messages, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.BadRequestError, match="remote URLs"):
        client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.org/cxr.png"}}]}])


def test_health_ready_metrics_and_offline_docs(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    text = httpx.get(server.url + "/metrics").text
    for name in ("llavarad_requests_total", "llavarad_request_seconds_bucket", "llavarad_batch_size_bucket",
                 "llavarad_queue_depth", "llavarad_errors_total", "llavarad_ready 1.0"):
        assert name in text, name
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/reports", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/reports"]["post"]["requestBody"]["content"]
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in STATIC.iterdir():  # every asset ships in the package and nothing loads from elsewhere
        assert httpx.get(server.url + "/static/" + asset.name).status_code == 200
        assert not re.search(r"https?://", asset.read_text(encoding="utf-8")), asset.name


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_malformed_requests_get_4xx_json_errors(server, images):
    bench = _benchmark()
    bad = bench.malformed_requests(random.Random(1), 40, [images["00000001_000.png"]])
    with httpx.Client(timeout=60) as http:
        for method, path, headers, body in bad:
            r = http.request(method, server.url + path, headers=headers, content=body)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:200])
            err = r.json()["error"]
            assert set(err) == {"code", "message"} and err["code"] and err["message"]
    statuses = bench.schema_fuzz(server.url, 24)
    assert sum(statuses.values()) >= 10
    assert not [s for s in statuses if s >= 500 or s < 0], statuses
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_errors_and_logs_never_carry_the_input(server, images, caplog):
    marker = "PATIENT-JANE-DOE-4711"
    caplog.set_level(logging.DEBUG)
    r = _post(server.url, images["00000001_000.png"], indication=marker + " \x07")
    assert r.status_code == 400 and marker not in r.text
    r = httpx.post(server.url + "/v1/reports", files={"image": ("a.png", marker.encode() * 50)}, timeout=60)
    assert r.status_code == 415 and marker not in r.text
    ok = _post(server.url, images[DCM], indication=marker)
    assert ok.status_code == 200
    assert marker not in caplog.text and ok.json()["findings"] not in caplog.text
    tagged_dicom = _dicom_with_patient_tags(images[DCM], marker)
    caplog.clear()  # building the file above logs pydicom's own complaints about the invalid values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagged = _post(server.url, tagged_dicom)
    assert tagged.status_code == 200
    assert marker not in tagged.text
    assert marker not in caplog.text
    assert not [w for w in caught if marker in str(w.message)]


def _dicom_with_patient_tags(data: bytes, marker: str) -> bytes:
    """The DICOM with the marker in its patient tags, some of them invalid for their VR."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    out = io.BytesIO()
    with warnings.catch_warnings():  # pydicom objects to the invalid values we write on purpose
        warnings.simplefilter("ignore")
        ds.PatientName = marker
        ds.PatientID = marker
        ds.add_new((0x0010, 0x0030), "DA", marker)  # PatientBirthDate: not a date
        ds.add_new((0x0008, 0x1030), "LO", marker * 4)  # StudyDescription: over 64 characters
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_read_cxr_from_memory_equals_from_file(images, shared_data):
    import numpy as np

    from llavarad.io.images import read_cxr

    for name in (DCM, "00000001_000.png", "cr_monochrome1_10bit_nopreamble.dcm"):
        a = read_cxr(shared_data / "images" / name)
        b = read_cxr(io.BytesIO(images[name]))
        assert np.array_equal(a.array, b.array) and (a.view, b.path) == (b.view, None)


def test_lateral_view_and_prior_comparison_warnings(server, images):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(images[DCM]))
    ds.ViewPosition = "LL"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    r = _post(server.url, out.getvalue())
    assert r.status_code == 200
    assert [w["code"] for w in r.json()["warnings"]][:1] == ["lateral_view"]
    service = server.app.state.service
    from llavarad.serve.limits import read_image

    cxr = read_image(images[DCM], 50_000_000)
    warned = service.warnings(cxr, "Heart size is normal. Unchanged from the prior radiograph.")
    assert [(w["code"], w["sentence"]) for w in warned] == [
        ("prior_comparison", "Unchanged from the prior radiograph.")]
    assert service.warnings(cxr, "Heart size is normal. No pleural effusion.") == []
