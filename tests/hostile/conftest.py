"""Helpers for the hostile-input suite: run a verb in-process and capture its exit code and messages."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llavarad.cli import main


@dataclass
class Run:
    rc: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """``run(*argv)`` -> :class:`Run`; asserts that no traceback reached the terminal."""

    def _run(*argv: object) -> Run:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        assert "Traceback" not in cap.err and "Traceback" not in cap.out, cap.err
        return Run(rc, cap.out, cap.err)

    return _run
