"""The project's exception base: every error a user can fix derives from :class:`LlavaradError`.

The message of a :class:`LlavaradError` is written for the person at the terminal: it names what
is wrong (the value, the file and line), and what to do. The CLI prints it as one line and exits
non-zero; the traceback only appears with ``-v``. Older, area-specific errors (``ManifestError``,
``ConfigError``, ...) keep their built-in bases (``ValueError``, ``RuntimeError``) for callers
that catch those, and add this class as a base so the CLI treats them all alike.

This module imports nothing from the package, so every layer (io, model, data, train, ...) can use it.
"""

from __future__ import annotations

__all__ = ["InputError", "LlavaradError", "NonFiniteError", "OutputError", "SettingError"]


class LlavaradError(Exception):
    """A problem the user can fix; ``str(exc)`` is the whole message (what, where, what to do)."""


class InputError(LlavaradError, ValueError):
    """An input file that cannot be read as asked: damaged, wrong encoding, wrong columns, not a file."""


class OutputError(LlavaradError, ValueError):
    """An output that would destroy something: writing over an input, or into a non-empty folder."""


class NonFiniteError(LlavaradError, ValueError):
    """A NaN or infinity where a finite number is required (a config value, a loss, a weight)."""


class SettingError(LlavaradError, ValueError):
    """A setting or argument whose value cannot work (``--device banana``, a dtype the device lacks)."""
