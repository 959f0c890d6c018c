"""``--prompt release``: judge with the paper's own CheXprompt prompt, read from Microsoft's
``chexprompt`` package at run time.

The paper's prompt (system instructions, the six error types, five worked examples and the reply
format "Number of clinically significant errors by type: [(A, n_A), ...]") and its settings
(``gpt-4-1106-preview``, temperature 0, top_p 0.9, max_tokens 128, one re-ask of an unreadable
reply) live in ``src/chexprompt/evaluator.py`` of github.com/microsoft/chexprompt (MIT). llavarad
never copies them: this module finds the installed package *without importing it* (the package
imports the pre-1.0 ``openai`` API at import time, which cannot coexist with the ``openai`` client
llavarad uses) and reads the string constants ``SYSTEM_INSTRUCTIONS``, ``USER_INSTRUCTIONS`` and
``EXAMPLES_FORMATTED`` and the keyword defaults of ``ReportEvaluator.__init__`` from the source with
:mod:`ast` (literals only; nothing of the package is executed).

Messages are built as the package's ``ReportEvaluator.format_for_evaluation`` and
``eval_utils.format_full_prompt`` do: one system message with ``SYSTEM_INSTRUCTIONS`` and one user
message ``USER_INSTRUCTIONS.format(examples_formatted=EXAMPLES_FORMATTED, eval_reference=reference,
eval_candidate=candidate)``. Replies are parsed strictly (:func:`parse_release_reply`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavarad.errors import LlavaradError
from llavarad.prompts.chexprompt import COUNT_COLUMNS, ERROR_TYPES, MAX_COUNT

__all__ = ["ReleasePrompt", "ReleasePromptError", "load_release_prompt", "parse_release_reply"]

PACKAGE = "chexprompt"
INSTALL_HINT = ("pip install --no-deps git+https://github.com/microsoft/chexprompt (--no-deps: llavarad only reads its "
                "prompt, and the package pins openai==0.28, which would replace the openai client llavarad uses)")
_STRINGS = ("SYSTEM_INSTRUCTIONS", "USER_INSTRUCTIONS", "EXAMPLES_FORMATTED")
#: ReportEvaluator keyword defaults llavarad uses, and what they set in :class:`llavarad.llm.LLMConfig`
_SETTINGS = ("engine", "temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty", "max_retries")


class ReleasePromptError(LlavaradError, RuntimeError):
    """The ``chexprompt`` package is missing or does not have the layout llavarad reads."""


@dataclass(frozen=True)
class ReleasePrompt:
    """The release's prompt strings and settings, with where they were read from."""

    system: str
    user_template: str
    examples: str
    settings: dict[str, Any]
    source: Path
    version: str
    sha256: str

    @property
    def prompt_version(self) -> str:
        """Cache key part: the package version and a digest of the file the strings came from."""
        return f"chexprompt-release-{self.version}-{self.sha256[:12]}"

    def provenance(self) -> dict[str, Any]:
        return {"package": PACKAGE, "version": self.version, "file": str(self.source), "sha256": self.sha256,
                "settings": dict(self.settings)}

    def build_messages(self, reference: str, candidate: str) -> list[dict[str, str]]:
        """System and user message exactly as the release's ``format_for_evaluation`` builds them."""
        user = self.user_template.format(examples_formatted=self.examples, eval_reference=reference,
                                         eval_candidate=candidate)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def _package_dir() -> Path:
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level find_spec imports nothing
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ReleasePromptError(f"--prompt release reads the paper's prompt from Microsoft's '{PACKAGE}' package, "
                                 f"which is not installed; install it with: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _literal_defaults(tree: ast.Module, source: Path) -> dict[str, Any]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ReportEvaluator":
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init is None:
                break
            args = init.args.args[len(init.args.args) - len(init.args.defaults):]
            out: dict[str, Any] = {}
            for arg, default in zip(args, init.args.defaults):
                if arg.arg in _SETTINGS:
                    try:
                        out[arg.arg] = ast.literal_eval(default)
                    except ValueError:
                        raise ReleasePromptError(f"{source}: ReportEvaluator default of {arg.arg} is not a literal") from None
            missing = [s for s in _SETTINGS if s not in out]
            if missing:
                raise ReleasePromptError(f"{source}: ReportEvaluator.__init__ has no default for {', '.join(missing)}; "
                                         f"this chexprompt version is not one llavarad knows ({INSTALL_HINT})")
            return out
    raise ReleasePromptError(f"{source}: no ReportEvaluator.__init__ found; not the chexprompt layout llavarad reads")


def load_release_prompt() -> ReleasePrompt:
    """Read the prompt and settings from the installed ``chexprompt`` package (see module doc)."""
    source = _package_dir() / "evaluator.py"
    try:
        raw = source.read_bytes()
        tree = ast.parse(raw, filename=str(source))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReleasePromptError(f"cannot read {source} ({type(exc).__name__}: {exc}); reinstall: {INSTALL_HINT}") from exc
    strings: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in _STRINGS and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                strings[name] = node.value.value
    missing = [s for s in _STRINGS if s not in strings]
    if missing:
        raise ReleasePromptError(f"{source}: no string constant {', '.join(missing)}; not the chexprompt layout llavarad reads")
    found = set(re.findall(r"(?<!\{)\{(\w+)\}(?!\})", strings["USER_INSTRUCTIONS"]))
    expected = {"examples_formatted", "eval_reference", "eval_candidate"}
    if found != expected:
        raise ReleasePromptError(f"{source}: USER_INSTRUCTIONS has placeholders {sorted(found)}, expected {sorted(expected)}")
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"  # e.g. the source folder on PYTHONPATH; the sha256 still pins the text
    return ReleasePrompt(strings["SYSTEM_INSTRUCTIONS"], strings["USER_INSTRUCTIONS"], strings["EXAMPLES_FORMATTED"],
                         _literal_defaults(tree, source), source, version, hashlib.sha256(raw).hexdigest())


_LINES = (("significant", "Number of clinically significant errors by type:"),
          ("insignificant", "Number of clinically insignificant errors by type:"))
_PAIR = re.compile(r"\(\s*([A-Za-z])\s*,\s*([-+]?\d+)\s*\)")
_LETTERS = tuple(letter.upper() for _, letter, _ in ERROR_TYPES)


def parse_release_reply(text: str) -> dict[str, int]:
    """The 12 counts (:data:`COUNT_COLUMNS`) of a reply in the release's format, or ``ValueError``.

    The reply must hold each of the two "Number of clinically (in)significant errors by type:"
    lines exactly once, each followed on the same line by the six pairs ``(A, n) ... (F, n)``
    (in ``[...]`` or ``(...)``, as the release's instructions and examples show), every letter once,
    counts integers in ``[0, MAX_COUNT]``. Text after the two lines (an explanation) is ignored, as
    the release's parser ignores it; nothing is guessed.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    counts: dict[str, int] = {}
    for kind, label in _LINES:
        n_found = text.count(label)
        if n_found != 1:
            raise ValueError(f"expected the line '{label} [...]' once, found it {n_found} times")
        line = text.split(label, 1)[1].split("\n", 1)[0]
        pairs = _PAIR.findall(line)
        letters = [letter.upper() for letter, _ in pairs]
        if sorted(letters) != sorted(_LETTERS) or len(pairs) != len(_LETTERS):
            raise ValueError(f"clinically {kind} errors: expected the pairs (A, n) to (F, n) once each, got "
                             f"{', '.join(letters) or 'none'}")
        for letter, value in pairs:
            n = int(value)
            if not 0 <= n <= MAX_COUNT:
                raise ValueError(f"clinically {kind} errors: count ({letter}, {value}) is not in [0, {MAX_COUNT}]")
            key = ERROR_TYPES[_LETTERS.index(letter.upper())][0]
            counts[f"{key}_{kind}"] = n
    return {c: counts[c] for c in COUNT_COLUMNS}
