"""The drafting page in a real browser: Debian's chromium, headless, driven by playwright (never
downloads a browser), against the service on a loopback port.

Upload a real DICOM, see the server-rendered preview and the findings, click a word and see its
heat map overlaid, edit the draft; a rejected file shows a clear message. Saves the screenshot the
README shows (docs/serve_screenshot.png) when LLAVARAD_SAVE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from browser import chromium_page  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_screenshot.png"


@pytest.fixture(scope="module")
def server(tiny_bundle):
    from llavarad.generate import ReportGenerator
    from llavarad.serve import ServeConfig, create_app
    from llavarad.serve.background import BackgroundServer

    app = create_app(ServeConfig(max_new_tokens=24), ReportGenerator(tiny_bundle), model_id="tiny-demo")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def page():
    with chromium_page((1280, 860)) as pg:
        yield pg


def test_upload_dicom_draft_and_overlay_a_word(server, page, shared_data, tmp_path):
    external = []
    page.on("request", lambda req: None if req.url.startswith((server.url, "data:", "blob:")) else
            external.append(req.url))
    page.goto(server.url + "/")
    page.set_input_files("#file", str(shared_data / "images" / "siim_pa_jpeg_baseline.dcm"))
    page.wait_for_selector("#figure:not([hidden])", timeout=30_000)
    preview = page.get_attribute("#view", "src")
    assert preview.startswith("data:image/png;base64,")
    assert "DICOM" in page.inner_text("#caption") and "PA" in page.inner_text("#caption")
    page.fill("#indication", "Shortness of breath.")
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    draft = page.input_value("#draft")
    assert draft and page.inner_text("#words").strip() == draft.strip()
    assert page.locator("#labels tr").count() == 14
    word = page.locator("#words .w").first
    word.click()
    assert "on" in (word.get_attribute("class") or "")
    overlay = page.get_attribute("#view", "src")
    assert overlay.startswith("data:image/png;base64,") and overlay != preview
    page.fill("#draft", draft + " Edited by the radiologist.")
    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / "draft.txt"
    dl.value.save_as(saved)
    assert saved.read_text().strip().endswith("Edited by the radiologist.")
    if os.environ.get("LLAVARAD_SAVE_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert external == [], f"the page loaded something from elsewhere: {external}"


def test_a_rejected_file_gets_a_clear_message(server, page, tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("This is a text file with a .dcm name.\n" * 20)
    page.goto(server.url + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = page.inner_text("#error")
    assert "Rejected" in message and "text file" in message and "PNG, JPEG or DICOM" in message
    assert page.is_disabled("#go")


def test_api_reference_renders_offline(server, page):
    external = []
    page.on("request", lambda req: None if req.url.startswith(server.url) else external.append(req.url))
    page.goto(server.url + "/docs")
    page.wait_for_selector("section.op", timeout=30_000)
    titles = page.locator("section.op h2").all_inner_texts()
    assert any("/v1/reports" in t for t in titles) and any("/v1/chat/completions" in t for t in titles)
    assert "multipart/form-data" in page.inner_text("#api")
    assert external == [], f"the API reference loaded something from elsewhere: {external}"
