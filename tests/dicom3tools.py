"""dicom3tools' ``dciodvfy`` (Debian package dicom3tools) as a test helper: is a DICOM file valid?"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["DCIODVFY", "dciodvfy_errors"]

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of ``dciodvfy`` for a file."""
    out = subprocess.run([DCIODVFY, str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]
