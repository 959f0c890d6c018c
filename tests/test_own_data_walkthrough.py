"""docs/own_data.md, run as written: raw DICOM folder + report CSV -> import (killed and resumed) ->
build -> release -> generate -> fine-tune -> generate -> compare -> serve, on CPU with the `tiny`
preset, on a tree made from the real DICOMs in ../shared/data and a CSV of real Open-I reports.

The default tier runs the data and comparison steps (import, build, compare); the whole walkthrough
with training, generation and serving is ``slow`` (about a minute on 2 cores)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from own_data_archive import kill_while_reading_headers, llavarad_command, make_own_data

from llavarad.cli import main
from llavarad.data.importers.dicom_archive import output_paths
from llavarad.io.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "own_data.md"
TINY_CONFIG = ROOT / "configs" / "stage3_own_data_tiny.yaml"
SPLIT = ["--split", "0.5,0.1,0.4"]  # a dozen patients: enough in train and test


def _import_args(own, out: str = "own/manifest.jsonl") -> list[str]:
    return ["data", "import", "dicom", str(own.plan.root), "--reports", str(own.reports), "--out", out,
            "--max-unreadable", "1", *SPLIT]


def test_the_doc_commands_are_the_ones_tested():
    text = DOC.read_text(encoding="utf-8")
    for command in ("llavarad data import dicom /pacs/export --reports ris_reports.csv --out own/manifest.jsonl",
                    "llavarad data build local own/manifest.jsonl --out-dir own/sets",
                    "llavarad train stage3 --config configs/stage3_own_data.yaml",
                    "llavarad compare own/before.jsonl own/after.jsonl --out own/compare",
                    "llavarad init --preset tiny --prompt-format v1 --out own/release",
                    "llavarad train stage3 --config configs/stage3_own_data_tiny.yaml",
                    "llavarad serve --model runs/own_stage3"):
        assert command in text, command


def test_import_build_compare(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = make_own_data(shared_data, tmp_path, n_patients=6)
    assert main([*_import_args(own), "--workers", "1"]) == 0
    assert main(["data", "build", "local", "own/manifest.jsonl", "--out-dir", "own/sets"]) == 0
    test = read_manifest("own/sets/local_test.jsonl")
    assert test and all(r.view in ("PA", "AP") and r.findings for r in test)
    # stand-ins for two models: a fixed normal report before, the true findings for most after
    before = [{"id": r.id, "reference": r.findings, "prediction": "No acute cardiopulmonary process.", "error": None}
              for r in test]
    after = [{**b, "prediction": r.findings if i % 4 else b["prediction"]} for i, (b, r) in enumerate(zip(before, test))]
    for name, rows in (("before", before), ("after", after)):
        Path(f"own/{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    assert main(["compare", "own/before.jsonl", "own/after.jsonl", "--out", "own/compare", "--bootstrap", "100"]) == 0
    result = json.loads(Path("own/compare/compare.json").read_text())
    assert result["n"] == len(test) and result["metrics"]["ROUGE-L"]["difference"]["value"] > 0


def _serve_and_ask(model: Path, image: Path) -> dict:
    import httpx

    from llavarad.serve.background import free_port

    port = free_port()
    proc = subprocess.Popen([*llavarad_command(), "serve", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "serve exited"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready in 120 s"
            time.sleep(0.2)
        with image.open("rb") as fh:
            reply = httpx.post(url + "/v1/reports", files={"image": (image.name, fh, "application/dicom")},
                               data={"indication": "Cough."}, timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_the_whole_walkthrough_on_cpu(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = make_own_data(shared_data, tmp_path, n_patients=60, n_reported=24)  # ~200 files, 24 reported studies
    # 1. import, killed with SIGKILL while reading headers, then the same command again
    cmd = [*llavarad_command(), *_import_args(own)]
    done = kill_while_reading_headers(cmd, output_paths(Path("own/manifest.jsonl"))["state"], own.plan.files)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(rf"\b{own.plan.files - done} headers read now", rerun.stdout)
    # 2. build  3. the "release" (tiny, random)  4. before
    assert main(["data", "build", "local", "own/manifest.jsonl", "--out-dir", "own/sets"]) == 0
    assert main(["init", "--preset", "tiny", "--prompt-format", "v1", "--out", "own/release"]) == 0
    test = read_manifest("own/sets/local_test.jsonl")
    assert test and read_manifest("own/sets/local_train.jsonl")
    gen = ["--manifest", "own/sets/local_test.jsonl", "--max-new-tokens", "16"]
    assert main(["generate", "--model", "own/release", *gen, "--out", "own/before.jsonl"]) == 0
    # 5. fine-tune from the release with the shipped tiny config  6. after
    assert main(["train", "stage3", "--config", str(TINY_CONFIG)]) == 0
    summary = json.loads(Path("own/finetuned/train_summary.json").read_text())
    assert summary["global_steps"] == 4 and summary["train_examples"] == len(read_manifest("own/sets/local_train.jsonl"))
    assert main(["generate", "--model", "own/finetuned", *gen, "--out", "own/after.jsonl"]) == 0
    # 7. compare
    assert main(["compare", "own/before.jsonl", "own/after.jsonl", "--out", "own/compare", "--bootstrap", "100"]) == 0
    result = json.loads(Path("own/compare/compare.json").read_text())
    assert result["n"] == len(test) and Path("own/compare/compare.png").is_file()
    # serve the fine-tuned model and ask it for a report of one of the DICOMs
    report = _serve_and_ask(Path("own/finetuned"), Path(test[0].image))
    assert isinstance(report["findings"], str) and set(report["labels"]) >= {"No Finding", "Cardiomegaly"}
