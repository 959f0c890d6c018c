"""``--prompt release``: the paper's prompt read at run time from Microsoft's ``chexprompt`` package.

The package is not installed here; each test writes a stand-in of the same layout
(``chexprompt/__init__.py`` importing ``evaluator.py``, which imports the pre-1.0 openai API at the
top, the three string constants and ``ReportEvaluator.__init__`` defaults, plus a dist-info for the
version) into a tmp folder on ``sys.path``. Its wording is invented for the test.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from llm_fake_server import Reply, ScriptedServer

from llavarad.chexprompt import ChexpromptConfig, run_chexprompt
from llavarad.chexprompt.judge import RESULTS_FILE, read_results
from llavarad.chexprompt.release import (
    ReleasePromptError,
    load_release_prompt,
    parse_release_reply,
)
from llavarad.cli import main
from llavarad.llm import LLMConfig

SYSTEM = "Stand-in instructions: you are a careful reader of chest X-ray reports."
EXAMPLES = "##\nReference Findings: \"\"\"Example reference.\"\"\"\n\nCandidate Findings: \"\"\"Example candidate.\"\"\"\n##"
USER = ("Stand-in error types A to F.\nDesired output format:\n"
        "Number of clinically significant errors by type: [(A, n_A), (B, n_B), (C, n_C), (D, n_D), (E, n_E), (F, n_F)]\n"
        "Number of clinically insignificant errors by type: [(A, n_A), (B, n_B), (C, n_C), (D, n_D), (E, n_E), (F, n_F)]\n"
        "##\n{examples_formatted}\n##\nReference Findings: \"\"\"{eval_reference}\"\"\"\n\n"
        "Candidate Findings: \"\"\"{eval_candidate}\"\"\"\n\nErrors:")


def reply(sig: tuple[int, ...], insig: tuple[int, ...], brackets: str = "[]") -> str:
    def seq(counts: tuple[int, ...]) -> str:
        return brackets[0] + ", ".join(f"({letter}, {n})" for letter, n in zip("ABCDEF", counts)) + brackets[1]

    return (f"Number of clinically significant errors by type: {seq(sig)}\n"
            f"Number of clinically insignificant errors by type: {seq(insig)}")


@pytest.fixture()
def release_pkg(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "site"
    pkg = root / "chexprompt"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .evaluator import ReportEvaluator\n")
    (pkg / "evaluator.py").write_text(textwrap.dedent(f'''\
        import openai.error  # the release imports the pre-1.0 API: llavarad must not import this module
        from chexprompt.eval_utils import format_full_prompt

        SYSTEM_INSTRUCTIONS = {SYSTEM!r}

        USER_INSTRUCTIONS = {USER!r}

        EXAMPLES_FORMATTED = {EXAMPLES!r}


        class ReportEvaluator:
            def __init__(self, engine: str = "gpt-4-1106-preview", temperature: float = 0.0, max_tokens: int = 128,
                         top_p: float = 0.9, requests_per_minute: int = 30, frequency_penalty: float = 0.0,
                         presence_penalty: float = 0.0, stop=None, max_retries: int = 1, use_async: bool = False):
                self.engine = engine
        '''))
    dist = root / "chexprompt-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chexprompt\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(root))
    return pkg


def test_missing_package_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("chexprompt") is not None:
        pytest.skip("the real chexprompt package is installed in this environment")
    with pytest.raises(ReleasePromptError, match="chexprompt' package, which is not installed.*pip install --no-deps"):
        load_release_prompt()
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "reference": "x", "prediction": "y"}) + "\n")
    assert main(["chexprompt", str(p), "--out", str(tmp_path / "o"), "--prompt", "release"]) == 1
    assert "not installed" in capsys.readouterr().err


def test_prompt_and_settings_are_read_from_the_package_without_importing_it(release_pkg):
    import sys

    rel = load_release_prompt()
    assert "chexprompt" not in sys.modules and "chexprompt.evaluator" not in sys.modules
    assert rel.version == "0.1" and rel.source == release_pkg / "evaluator.py" and len(rel.sha256) == 64
    assert rel.settings == {"engine": "gpt-4-1106-preview", "temperature": 0.0, "max_tokens": 128, "top_p": 0.9,
                            "frequency_penalty": 0.0, "presence_penalty": 0.0, "max_retries": 1}
    messages = rel.build_messages("Ref {with braces}.", "Cand.")
    assert messages[0] == {"role": "system", "content": SYSTEM}
    assert messages[1]["role"] == "user" and len(messages) == 2
    assert messages[1]["content"] == USER.format(examples_formatted=EXAMPLES, eval_reference="Ref {with braces}.",
                                                 eval_candidate="Cand.")


def test_changed_package_text_changes_the_prompt_version(release_pkg):
    before = load_release_prompt().prompt_version
    path = release_pkg / "evaluator.py"
    path.write_text(path.read_text().replace("careful reader", "very careful reader"))
    assert load_release_prompt().prompt_version != before  # so cached replies of the old text are not reused


@pytest.mark.parametrize("brackets", ["[]", "()"])
def test_parse_release_reply_formats(brackets):
    text = reply((1, 0, 0, 2, 0, 0), (0, 3, 0, 0, 0, 1), brackets) + "\nExplanation: the effusion side is wrong."
    counts = parse_release_reply(text)
    assert counts["false_finding_significant"] == 1 and counts["wrong_severity_significant"] == 2
    assert counts["omitted_finding_insignificant"] == 3 and counts["omitted_comparison_insignificant"] == 1
    assert sum(counts.values()) == 7 and len(counts) == 12
    # the release's own examples put a blank line between the two lines
    assert parse_release_reply(text.replace("\nNumber of clinically in", "\n\nNumber of clinically in")) == counts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty reply"),
        ("There are two errors.", "found it 0 times"),
        (reply((0,) * 6, (0,) * 6) + "\n" + reply((1,) * 6, (0,) * 6), "found it 2 times"),
        (reply((0,) * 6, (0,) * 6).replace("(F, 0)]", "(A, 1)]", 1), "once each, got A, B, C, D, E, A"),
        (reply((0,) * 6, (0,) * 6).replace("(C, 0), ", "", 1), "once each"),
        (reply((0, 0, -1, 0, 0, 0), (0,) * 6), r"\(C, -1\) is not in \[0, 100\]"),
        (reply((0, 0, 0, 0, 0, 10**30), (0,) * 6), r"is not in \[0, 100\]"),
    ],
)
def test_parse_release_reply_rejects_anything_else(text, message):
    with pytest.raises(ValueError, match=message):
        parse_release_reply(text)


def test_run_sends_the_release_prompt_with_its_settings_and_records_the_version(release_pkg, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": f"r{i}", "reference": f"Reference {i}.", "prediction": f"Candidate {i}."}) + "\n"
                             for i in range(3)))

    def responder(body, i):
        user = body["messages"][-1]["content"]
        if "Candidate 1." in user and i < 2:
            return Reply("I count one error.")  # unreadable once: re-asked with the same messages
        return Reply(reply((1, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1)))

    with ScriptedServer(responder=responder) as srv:
        llm = LLMConfig(backend="openai_compatible", base_url=srv.base_url, model="gpt-4-1106-preview", cache_path=None,
                        concurrency=1, max_tokens=999, temperature=0.5, backoff_base_s=0.001)
        result = run_chexprompt(preds, tmp_path / "o", ChexpromptConfig(llm=llm, prompt="release", bootstrap=20))
    bodies = [r["body"] for r in srv.requests]
    assert len(bodies) == 4  # three reports + one re-ask
    assert all(b["temperature"] == 0.0 and b["top_p"] == 0.9 and b["max_tokens"] == 128 for b in bodies)
    assert all(len(b["messages"]) == 2 and b["messages"][0]["content"] == SYSTEM for b in bodies)
    asked_twice = [b["messages"] for b in bodies if "Candidate 1." in b["messages"][1]["content"]]
    assert len(asked_twice) == 2 and asked_twice[0] == asked_twice[1]  # no feedback turn, as the release re-asks
    rows = read_results(tmp_path / "o" / RESULTS_FILE)
    assert all(r["ok"] and r["total"] == 2 and r["significant"] == 1 for r in rows.values())
    assert result["settings"]["prompt"] == "release" and result["settings"]["prompt_source"]["version"] == "0.1"
    assert result["settings"]["judge"]["top_p"] == 0.9 and result["versions"]["chexprompt"] == "0.1"
    assert result["settings"]["llm"]["max_tokens"] == 128


def test_cli_release_defaults_the_model_to_the_package_engine(release_pkg, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a", "reference": "Reference.", "prediction": "Candidate."}) + "\n")
    with ScriptedServer(responder=lambda b, i: Reply(reply((0,) * 6, (0,) * 6))) as srv:
        code = main(["chexprompt", str(preds), "--out", str(tmp_path / "o"), "--prompt", "release", "--backend",
                     "openai_compatible", "--base-url", srv.base_url, "--bootstrap", "10"])
    assert code == 0 and srv.requests[0]["body"]["model"] == "gpt-4-1106-preview"


def test_release_prompt_refuses_repeated_sampling():
    with pytest.raises(ValueError, match="release prompt asks once"):
        ChexpromptConfig(prompt="release", n_samples=3)
