"""The explain page in a real browser (Debian's chromium, headless, via playwright; never downloads a
browser): its visible text is the generated findings, and clicking a word shows that word's overlay."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium_page


@pytest.fixture(scope="module")
def page():
    with chromium_page((1200, 800)) as pg:
        yield pg


def _pixels(src: str | Path) -> np.ndarray:
    if isinstance(src, str):
        assert src.startswith("data:image/png;base64,")
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    return np.asarray(Image.open(src).convert("RGB"))


def test_page_text_is_the_findings_and_a_click_shows_that_words_overlay(page, tiny_bundle, shared_data, tmp_path):
    from llavarad._attention_render import write_explanation
    from llavarad.attention import explain
    from llavarad.io.images import read_cxr

    image = read_cxr(shared_data / "images" / "00000001_000.png").image
    expl = explain(tiny_bundle, image, "Cough.", max_new_tokens=20)
    assert len(expl.words) >= 2
    out = write_explanation(expl, image, tmp_path / "ex")
    external = []
    page.on("request", lambda req: None if req.url.startswith(("file:", "data:")) else external.append(req.url))
    page.goto((out / "index.html").as_uri())
    assert page.inner_text("p.r") == expl.text
    anchors = page.query_selector_all("p.r a")
    assert [a.inner_text() for a in anchors] == [w["word"] for w in expl.words]
    overlays = sorted((out / "overlays").glob("*.png"))
    for i in (len(expl.words) - 1, 1):
        anchors[i].click()
        assert page.inner_text("#cap") == expl.words[i]["word"]
        assert page.eval_on_selector_all("p.r a.on", "els => els.map(e => e.dataset.i)") == [str(i)]
        shown = _pixels(page.get_attribute("#view", "src"))
        assert np.array_equal(shown, _pixels(overlays[i]))
        assert not np.array_equal(shown, _pixels(overlays[0])) or np.allclose(expl.word_maps[i], expl.word_maps[0])
    assert external == []
