"""Shared fixtures: paths to the real files in ../shared/data and a tiny random model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder of real CXR images and reports (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bundle():
    """A random `tiny` preset model (seeded), shared by the tests of a session; do not mutate it."""
    from llavarad.model.build import init_random

    return init_random("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_bundle) -> Path:
    """The `tiny` model saved as a llavarad model folder."""
    from llavarad.model.build import save_model

    out = tmp_path_factory.mktemp("tiny_model")
    save_model(tiny_bundle, out)
    return out
