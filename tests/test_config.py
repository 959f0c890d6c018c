from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from llavarad.config import ConfigError, config_from_dict, load_config, parse_overrides, save_config


@dataclass
class Inner:
    r: int = 64
    alpha: float = 128.0


@dataclass
class Cfg:
    name: str
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    steps: int | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    out: Path = Path("runs")

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")


def test_load_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nlr: 2e-4\ninner:\n  r: 8\n")
    cfg = load_config(Cfg, p, ["inner.alpha=16", "mode=b", "tags=[u, v]", "steps=10"])
    assert cfg == Cfg(name="x", lr=2e-4, mode="b", steps=10, tags=["u", "v"], inner=Inner(r=8, alpha=16.0))
    assert isinstance(cfg.out, Path)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict(Cfg, {"lr": "fast", "mode": "c", "inner": {"r": "many"}, "bogus": 1})
    msg = str(err.value)
    for part in ("name: required", "lr: expected a number", "mode: 'c' is not one of 'a', 'b'",
                 "inner.r: expected an integer", "bogus: unknown field"):
        assert part in msg
    assert len(err.value.problems) == 5


def test_post_init_errors_are_config_errors():
    with pytest.raises(ConfigError, match="lr=-1.0 must be > 0"):
        config_from_dict(Cfg, {"name": "x", "lr": -1})


def test_round_trip(tmp_path):
    cfg = Cfg(name="x", tags=["a"], inner=Inner(r=4))
    save_config(cfg, tmp_path / "c.yaml")
    save_config(cfg, tmp_path / "c.json")
    assert load_config(Cfg, tmp_path / "c.yaml") == cfg
    assert load_config(Cfg, tmp_path / "c.json") == cfg


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
