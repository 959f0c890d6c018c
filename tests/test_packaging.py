"""The wheel is usable on its own: built from this tree, installed (not editable) into a fresh
virtual environment, it assembles a tiny model and trains one stage-2 step from a config that
only the package carries (the working directory has no configs/ folder).

The fresh environment sees the current environment's packages through a ``.pth`` line (so torch
is not reinstalled) but not its editable llavarad: a test asserts which llavarad runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
         cwd=out)
    (path,) = out.glob("llavarad-*.whl")
    return path


@pytest.mark.slow  # builds a wheel and a venv, then trains: ~40-60 s on 2 cores
def test_wheel_in_a_fresh_venv_runs_init_and_a_packaged_stage2_config(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("llavarad/configs/stage2_tiny.yaml", "llavarad/configs/stage1_tiny.yaml",
                   "llavarad/configs/accelerate/ds_zero3.json", "llavarad/presets/tiny.json"):
        assert needed in names, needed
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bin_dir = venv / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    where = _run([str(bin_dir / "python"), "-c", "import llavarad; print(llavarad.__file__)"], cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), f"llavarad came from {where.strip()}, not the installed wheel"

    work = tmp_path / "work"
    work.mkdir()
    cli = str(bin_dir / "llavarad")
    _run([cli, "init", "--preset", "tiny", "--prompt-format", "plain", "--out", "init"], cwd=work)
    _run([cli, "phantom", "--n", "8", "--size", "56", "--out", "data"], cwd=work)
    assert not (work / "configs").exists()
    _run([cli, "train", "stage2", "--config", "configs/stage2_tiny.yaml", "model=init",
          "train_manifest=data/manifest.jsonl", "output_dir=stage2", "max_steps=1", "eval_steps=0", "save_steps=0",
          "global_batch_size=2", "per_device_batch_size=2"], cwd=work)
    summary = json.loads((work / "stage2" / "train_summary.json").read_text())
    assert summary["global_steps"] == 1 and summary["final_loss"] > 0
    assert (work / "stage2" / "model.safetensors").is_file() or list((work / "stage2").glob("*.safetensors"))


def test_configs_paths_resolve_to_the_packaged_files_outside_the_repository(tmp_path, monkeypatch):
    import click

    from llavarad.cli import main
    from llavarad.cli.train import packaged_configs, resolve_config

    monkeypatch.chdir(tmp_path)
    got = resolve_config(Path("configs/stage2_tiny.yaml"))
    assert got == packaged_configs() / "stage2_tiny.yaml" and got.read_text().startswith("# Launch")
    assert resolve_config(Path("configs/accelerate/fsdp.yaml")).is_file()
    with pytest.raises(click.BadParameter, match="stage2_tiny.yaml"):
        resolve_config(Path("configs/stage9.yaml"))
    assert main(["configs", "--copy", "mine"]) == 0
    assert (tmp_path / "mine" / "stage1_tiny.yaml").read_text() == (packaged_configs() / "stage1_tiny.yaml").read_text()
