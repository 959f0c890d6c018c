"""CLI verbs of this area (filled in by the area's work)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
