"""The top-level API: every name in ``llavarad.__all__`` resolves, and importing the package
stays light (no torch, transformers or serving stack until a name is used)."""

from __future__ import annotations

import subprocess
import sys

import llavarad


def test_every_public_name_resolves_to_its_module_object():
    import importlib

    for name in llavarad.__all__:
        value = getattr(llavarad, name)
        assert value is not None, name
        if name == "__version__":
            continue
        module, attr = llavarad._EXPORTS[name]
        assert value is getattr(importlib.import_module(module), attr), name
        assert (getattr(value, "__doc__", None) or "").strip(), f"{name} has no docstring"


def test_all_lists_exactly_the_exports():
    assert sorted(llavarad.__all__) == sorted(["__version__", *llavarad._EXPORTS])


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no_such_name"):
        llavarad.no_such_name  # noqa: B018


def test_import_llavarad_does_not_import_torch_or_transformers():
    code = ("import sys, llavarad; heavy = [m for m in ('torch', 'transformers', 'fastapi', 'openai', 'PIL') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "", f"import llavarad pulled in: {out.stdout.strip()}"
