"""Generation: batched == one-at-a-time, the resumable manifest job, bad rows, the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from llavarad.cli import main
from llavarad.generate import GenerationSettings, ReportGenerator, generate_reports, run_generation


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((64 + 8 * i, 72)) * 255).astype("uint8")) for i in range(n)]


def test_batched_and_one_at_a_time_greedy_outputs_are_identical(tiny_bundle):
    imgs = _images(5)
    inds = [None, "Cough.", "Chest pain and shortness of breath for two days, rule out pneumonia.", "", "Fever."]
    batched = generate_reports(tiny_bundle, imgs, inds, batch_size=5, max_new_tokens=16)
    single = [generate_reports(tiny_bundle, [i], [d], batch_size=1, max_new_tokens=16)[0] for i, d in zip(imgs, inds)]
    assert batched == single
    assert len(set(batched)) > 1  # different inputs, different outputs: the image and prompt are read


def test_settings_are_validated():
    with pytest.raises(ValueError, match="batch_size=0"):
        GenerationSettings(batch_size=0)
    with pytest.raises(ValueError, match="prompt_format='v2'"):
        GenerationSettings(prompt_format="v2")


def _manifest(tmp_path, shared_data):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "notes.txt").write_text("not an image")
    rows = [
        {"id": "nih1", "image": str(shared_data / "images" / "00000001_000.png"), "indication": "Cough.",
         "reference": "No acute process."},
        {"id": "dcm", "image": str(shared_data / "images" / "siim_pa_jpeg_baseline.dcm")},
        {"id": "lateral", "image": str(shared_data / "images" / "CXR1900_IM-0584-2001.png"), "findings": "Clear.",
         "view": "LATERAL"},
        {"id": "corrupt", "image": "corrupt.png"},
        {"id": "missing", "image": "nowhere.png"},
        {"id": "text", "image": "notes.txt"},
        {"image": "no_id.png"},
        {"id": "nih2", "image": str(shared_data / "images" / "00027426_000.png")},
        {"id": "nih1", "image": str(shared_data / "images" / "00000001_000.png")},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_job_records_errors_continues_and_resumes(tmp_path, shared_data, tiny_bundle):
    manifest = _manifest(tmp_path, shared_data)
    out = tmp_path / "preds.jsonl"
    settings = GenerationSettings(batch_size=2, max_new_tokens=8)
    summary = run_generation(tiny_bundle, manifest, out, settings=settings)
    rows = {json.loads(l)["id"]: json.loads(l) for l in out.read_text().splitlines()}
    assert set(rows) == {"nih1", "dcm", "lateral", "corrupt", "missing", "text", "line-7", "nih2"}
    for rid in ("nih1", "dcm", "lateral", "nih2"):
        assert rows[rid]["error"] is None and isinstance(rows[rid]["prediction"], str)
    for rid in ("corrupt", "missing", "text", "line-7"):
        assert rows[rid]["prediction"] is None and rows[rid]["error"]
    assert "corrupt.png" in rows["corrupt"]["error"] and "nowhere.png" in rows["missing"]["error"]
    assert rows["nih1"]["reference"] == "No acute process." and rows["lateral"]["reference"] == "Clear."
    assert "not frontal" in rows["lateral"]["warning"]
    assert set(rows["nih1"]) >= {"id", "image", "indication", "reference", "prediction", "error", "model", "settings"}
    assert rows["nih1"]["settings"]["decoding"] == "greedy" and rows["nih1"]["settings"]["max_new_tokens"] == 8
    assert summary.generated == 4 and summary.failed == 5  # 4 bad rows + the duplicate id
    assert any("duplicate id" in e["error"] for e in summary.errors)

    # A rerun skips everything already written and appends nothing.
    before = out.read_text()
    again = run_generation(tiny_bundle, manifest, out, settings=settings)
    assert again.skipped_done == 8 and again.generated == 0 and out.read_text() == before


def test_kill_loses_at_most_the_batch_in_flight(tmp_path, shared_data, tiny_bundle):
    """Simulate a run killed mid-write: a torn last line is dropped and regenerated on resume."""
    manifest = _manifest(tmp_path, shared_data)
    out = tmp_path / "preds.jsonl"
    run_generation(tiny_bundle, manifest, out, settings=GenerationSettings(batch_size=2, max_new_tokens=8))
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    summary = run_generation(tiny_bundle, manifest, out, settings=GenerationSettings(batch_size=2, max_new_tokens=8))
    assert summary.skipped_done == 2
    new_lines = out.read_text().splitlines()
    assert [json.loads(l)["id"] for l in new_lines] and len(new_lines) == len(lines)
    first = {json.loads(l)["id"]: json.loads(l)["prediction"] for l in lines}
    second = {json.loads(l)["id"]: json.loads(l)["prediction"] for l in new_lines}
    assert first == second


def test_python_api_and_cli(tmp_path, shared_data, tiny_model_dir, capsys):
    gen = ReportGenerator.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=6)
    text = gen.generate(shared_data / "images" / "00000001_000.png", indication="Cough.")
    assert isinstance(text, str)

    image = str(shared_data / "images" / "00000001_000.png")
    assert main(["generate", image, "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["prediction"] == gen.generate(image)  # same greedy path as the API

    manifest = _manifest(tmp_path, shared_data)
    code = main(["generate", "--model", str(tiny_model_dir), "--manifest", str(manifest), "--out",
                 str(tmp_path / "p.jsonl"), "--max-new-tokens", "4", "--batch-size", "3"])
    assert code == 1  # some rows failed
    assert "4 generated" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "missing.png"), "--model", str(tiny_model_dir)]) == 1


def test_cli_init_preset(tmp_path):
    from llavarad.model.build import load_model

    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert load_model(tmp_path / "m").preset.name == "tiny"
    assert main(["init", "--out", str(tmp_path / "x")]) != 0
