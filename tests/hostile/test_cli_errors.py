"""The one error mechanism: any failure is one line and a non-zero code; the traceback only with -v."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

import click
import pytest

from llavarad.cli import _errors, cli, main
from llavarad.errors import InputError


@pytest.fixture
def boom():
    """A throw-away verb that raises what the test asks for."""
    state: dict[str, BaseException] = {}

    @cli.command("_boom", hidden=True)
    def _boom() -> None:
        raise state["exc"]

    yield state
    cli.commands.pop("_boom", None)


@pytest.mark.parametrize("exc, rc, fragment, hint", [
    (InputError("data.csv:3: not valid"), 1, "Error: data.csv:3: not valid", False),
    (FileNotFoundError(2, "No such file or directory", "x.csv"), 1, "Error: x.csv: No such file or directory", False),
    (OSError(40, "Too many levels of symbolic links", "loop"), 1, "symbolic link loop", False),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), 1, "damaged or truncated input", False),
    (zlib.error("invalid stored block lengths"), 1, "damaged or truncated input", False),
    (RecursionError("maximum recursion depth exceeded"), 1, "nested too deeply", False),
    (KeyError("oops"), 1, "unexpected KeyError", True),
    (KeyboardInterrupt(), 130, "Aborted.", False),
])
def test_every_exception_is_one_line(boom, capsys, exc, rc, fragment, hint):
    boom["exc"] = exc
    assert main(["_boom"]) == rc
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("rerun with -v" in err) == hint


def test_verbose_adds_the_traceback(boom, capsys):
    boom["exc"] = KeyError("oops")
    assert main(["-v", "_boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "unexpected KeyError" in err and "rerun with -v" not in err


def test_click_abort_from_eof_is_not_ctrl_c(boom, capsys):
    try:
        raise EOFError("truncated")
    except EOFError as cause:
        abort = click.exceptions.Abort()
        abort.__cause__ = cause
    boom["exc"] = abort
    assert main(["_boom"]) == 1 and "damaged or truncated input" in capsys.readouterr().err


def test_control_characters_never_reach_a_line():
    assert _errors.safe_text("a\x00b\x1b[31mc\ud800") == "a\\x00b\\x1b[31mc\\ud800"
    assert len(_errors.safe_text("x" * 10_000)) < 2100


def test_config_values_that_cannot_train(run, tmp_path, tiny_model_dir):
    config = Path(__file__).resolve().parents[2] / "configs" / "stage2_tiny.yaml"
    r = run("train", "stage2", "--config", config, f"model={tiny_model_dir}", "learning_rate=.inf",
            f"output_dir={tmp_path / 'o'}")
    assert r.rc == 1 and "learning_rate: inf is not a finite number" in r.err
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    r = run("train", "stage2", "--config", binary)
    assert r.rc == 1 and "is not UTF-8 text" in r.err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = run("train", "stage2", "--config", config, f"model={tiny_model_dir}", f"output_dir={a_file}")
    assert r.rc == 1 and "is a file, not a folder" in r.err
    r = run("train", "stage2", "--config", config, f"model={tiny_model_dir}", f"output_dir={tiny_model_dir}")
    assert r.rc == 1 and "is the input" in r.err


def test_non_finite_loss_stops_training():
    from llavarad.errors import NonFiniteError
    from llavarad.train.callbacks import NonFiniteLossCallback

    class Args:
        output_dir = "runs/x"

    class State:
        global_step = 7

    cb = NonFiniteLossCallback()
    cb.on_log(Args(), State(), None, logs={"loss": 1.5, "grad_norm": 0.3})
    with pytest.raises(NonFiniteError, match="grad_norm is nan at step 7"):
        cb.on_log(Args(), State(), None, logs={"loss": 1.5, "grad_norm": float("nan")})


def test_non_finite_weights_are_never_saved(tmp_path, tiny_bundle):
    import copy

    import torch

    from llavarad.errors import NonFiniteError
    from llavarad.model.build import save_model

    bundle = copy.copy(tiny_bundle)
    bundle.model = copy.deepcopy(tiny_bundle.model)
    with torch.no_grad():
        next(bundle.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="hold NaN or infinity"):
        save_model(bundle, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_bounded_reads_name_what_they_refuse(run, tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    r = run("data", "section", tmp_path / "pipe.txt")
    assert r.rc == 1 and "is a FIFO (named pipe)" in r.err
    r = run("data", "section", "/dev/zero")
    assert r.rc == 1 and "is a character device" in r.err
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    r = run("label", tmp_path / "loop.txt")
    assert r.rc != 0 and "Traceback" not in r.err
    r = run("data", "section", "--evaluate", _openi_like(tmp_path))
    assert r.rc == 1 and "no column 'comparison'" in r.err and "the header has 'indication', 'findings'" in r.err


def _openi_like(tmp_path):
    path = tmp_path / "sections.csv"
    path.write_text("indication,findings\nCough.,Clear.\n")
    return path


def test_truncated_archive_is_not_ctrl_c_and_leaves_no_tmp(run, tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(30):
            data = json.dumps({"n": i}).encode() * 500
            info = tarfile.TarInfo(f"ecgen/{i}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    root = tmp_path / "openi"
    root.mkdir()
    (root / "NLMCXR_reports.tgz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    r = run("data", "import", "openi", root, "--out", tmp_path / "m.jsonl")
    assert r.rc == 1 and "damaged or truncated archive" in r.err and "Aborted" not in r.err
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "m.jsonl").exists()
    gz = gzip.compress(b"x" * 10_000)
    (root / "NLMCXR_reports.tgz").write_bytes(gz[:40])
    assert run("data", "import", "openi", root, "--out", tmp_path / "m.jsonl").rc == 1


@pytest.mark.slow
def test_a_diverging_stage2_stops_and_saves_nothing(run, tmp_path, tiny_model_dir):
    """The issue's case end to end: a huge learning rate makes the loss NaN; the run stops with one line
    and writes no model folder that would generate "" with exit code 0."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append({"id": f"r{i}", "image": f"i{i}.png", "dataset": "t", "split": "train", "findings": "Clear lungs."})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Path(__file__).resolve().parents[2] / "configs" / "stage2_tiny.yaml"
    out = tmp_path / "s2"
    r = run("train", "stage2", "--config", config, f"model={tiny_model_dir}", f"train_manifest={manifest}",
            f"output_dir={out}", "learning_rate=1e30", "max_steps=6", "eval_steps=0", "save_steps=0",
            "lr_scheduler=constant", "warmup_ratio=0")
    assert r.rc == 1 and "training diverged: grad_norm is nan" in r.err, r.err
    assert not (out / "model.safetensors").exists()
