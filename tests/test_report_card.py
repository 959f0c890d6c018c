"""The demo's HTML report card: self-contained (inline CSS, data-URI images, no script, no
network) and complete (phantoms beside reference and generated findings, the F1 plot, one word's
heat map, stage timings), checked in Debian's headless chromium through playwright (which never
downloads a browser here: it is pointed at /usr/bin/chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium_page
from llavarad.phantom.report_card import card_html, choose_word, read_heat_map



@pytest.fixture(scope="module")
def card_page(tmp_path_factory) -> Path:
    """A report card built from three real phantoms, a plot image and a heat map overlay."""
    from llavarad._attention_render import overlay
    from llavarad.phantom import PhantomConfig, generate_phantoms

    root = tmp_path_factory.mktemp("card")
    generate_phantoms(PhantomConfig(n=3, size=56, seed=1, write_masks=False), root / "ph")
    rows = [json.loads(line) for line in (root / "ph" / "manifest.jsonl").read_text().splitlines()]
    examples = [{"id": r["id"], "image": str(root / "ph" / r["image"]), "indication": r.get("indication"),
                 "reference": r["findings"], "prediction": f"generated <for> {r['id']}"} for r in rows]
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(root / "f1.png")
    explain = root / "explain"
    (explain / "overlays").mkdir(parents=True)
    img = Image.open(examples[0]["image"]).convert("RGB")
    img.save(explain / "image.png")
    overlay(img, np.random.default_rng(0).random((4, 4))).save(explain / "overlays" / "002_effusion.png")
    (explain / "chosen.json").write_text(json.dumps({"id": rows[0]["id"], "word": "effusion", "image": "image.png",
                                                     "text": "Small left effusion.",
                                                     "overlay": "overlays/002_effusion.png"}))
    card = {"data": {"phantoms": 3, "splits": {"test": 3}, "evaluated": 3, "blank_images": False},
            "metrics": {"Micro-F1-14": {"value": 71.5, "ci_low": 60.0, "ci_high": 80.0}},
            "losses": {"stage2": {"first": 3.2, "final": 0.5}},
            "timings_s": {"stage1": 30.0, "stage2": 12.5, "total": 42.5}, "cpu_s": {"stage1": 50.0, "total": 50.0},
            "examples": examples}
    page = root / "report_card.html"
    page.write_text(card_html(card, f1_plot=root / "f1.png", heat_map=read_heat_map(explain)), encoding="utf-8")
    return page


def test_choose_word_prefers_a_finding_word():
    assert choose_word(["The", "left", "pleural", "effusion."]) == 3
    assert choose_word(["Lungs", "are", "clear"]) == 0  # no finding word: the longest
    assert choose_word([]) is None


def test_page_is_self_contained_and_escapes_text(card_page):
    page = card_page.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 3 + 1 + 2  # phantoms, plot, heat map pair
    assert "generated &lt;for&gt;" in page  # report text is escaped, never markup


def test_report_card_renders_in_headless_chromium(card_page, tmp_path):
    requests = []
    with chromium_page() as page:
        page.on("request", lambda req: requests.append(req.url))
        page.goto(card_page.as_uri())
        page.wait_for_load_state("load")
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        examples = page.inner_text("#examples ~ div.ex >> nth=1")
        mark = page.inner_text("#heatmap ~ p mark")
        bars = page.eval_on_selector_all(".bar", "els => els.map(e => e.getBoundingClientRect().width)")
    assert len(sizes) == 6 and all(done and width > 0 for _, done, width in sizes), sizes
    assert headings == ["Metrics", "Per-observation F1", "One word's heat map", "Held-out phantoms",
                        "Stage timings", "Losses"]
    assert "generated <for>" in examples and "indication" in examples
    assert mark == "effusion"
    assert bars[0] > bars[1] > 0  # stage 1 took longer than stage 2: its bar is longer
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
