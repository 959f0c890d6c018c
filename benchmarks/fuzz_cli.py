"""Throw thousands of generated bad inputs at every verb, in-process through ``llavarad.cli.main``.

Run: ``python benchmarks/fuzz_cli.py [--cases 3000] [--seed 0] [--timeout 20]`` (CPU, a few minutes).

Each case is a verb plus an input built from a clean one by a mutation of a known kind:

- ``benign``: must not change the result (BOM, CRLF, blank lines, another CSV delimiter, Latin-1
  for ASCII text, reordered JSON keys). Expected: exit 0 and the clean run's output.
- ``damaging``: makes one row or the whole file unusable (a malformed / truncated / NUL / surrogate /
  deeply nested JSON line, a short or oversized CSV row, an unclosed quote, garbage bytes, a FIFO,
  /dev/zero, a folder, a symlink loop, a truncated .gz, a non-finite or mistyped config value, a
  damaged adapter). Expected: a non-zero exit code and, where rows survive, the clean output for them.
- ``random``: bytes flipped, inserted or cut at random. Expected: no traceback and no hang.

Counted per case: a traceback (in any output, or an exception escaping ``main``), a hang (over
``--timeout`` seconds), an "unexpected ..." one-line error (an exception type the code did not
foresee), and rc 0 with wrong output (a damaging case that exits 0, or good rows that differ from
the clean run). Prints ``RESULT`` lines; the goal of each count is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPORTS = ["Large right pleural effusion.", "Heart size is enlarged.", "No pneumothorax. Lungs are clear.",
           "Mild pulmonary edema, small left effusion.", "Support devices in place; no acute findings."]


@dataclass
class Case:
    verb: str
    kind: str  # benign | damaging | random
    argv: list[str]
    check: Callable[[int], str | None] | None = None  # returns a description of wrong output, or None


class _Log(logging.Handler):
    """Collects every log line of a case (a traceback logged by the library counts too)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# -- mutations ---------------------------------------------------------------------------------
def _random_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice(("flip", "insert", "cut", "dup"))
        pos = rng.randrange(len(out) + 1)
        if op == "flip" and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == "insert":
            out[pos:pos] = rng.choice([b"\x00", b'"', b"\n", b",", b";", b"\xff\xfe", b"{", b"[" * 500, b"\\ud800",
                                       bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))])
        elif op == "cut":
            del out[pos:pos + rng.randint(1, 50)]
        elif op == "dup" and out:
            out[pos:pos] = out[max(0, pos - 40):pos]
    return bytes(out)


_BAD_JSON_LINES = ["{not json", '{"id": "x", "report": "\\ud800"}', "[" * 3000 + "]" * 3000, "\x00\x00",
                   '{"id": "z", "report": "a\\u0000b"}', "[1, 2, 3]", '"just a string"', '{"id": ',
                   '{"id": 1e999, "report": 5}', '{"a": ' * 200 + "1" + "}" * 200]
_BAD_CSV_ROWS = ["only_one_field", "1,2,3,4,5", "7,x\x00y", '8,"never closed', f'9,"{"a" * 1_100_000}"',
                 '10,"a"b']


def _special(tmp: Path, rng: random.Random, unusable: bool = True) -> Path:
    """A FIFO, /dev/zero, a folder, a symlink loop or a missing path; with ``unusable=False`` also an empty
    or a garbage file (which some verbs may legitimately read)."""
    kinds = ("fifo", "zero", "dir", "loop", "missing") + (() if unusable else ("garbage", "empty"))
    kind = rng.choice(kinds)
    path = tmp / f"special_{rng.randrange(10**9)}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        return Path("/dev/zero")
    elif kind == "dir":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4000))))
    elif kind == "empty":
        path.write_bytes(b"")
    return path


# -- the verbs ---------------------------------------------------------------------------------
class Fuzzer:
    def __init__(self, tmp: Path, rng: random.Random):
        self.tmp, self.rng, self.n = tmp, rng, 0
        self.clean_csv = tmp / "clean.csv"
        with self.clean_csv.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["id", "report"], *([str(i), t] for i, t in enumerate(REPORTS))])
        self.clean_jsonl = tmp / "clean.jsonl"
        self.clean_jsonl.write_text("".join(json.dumps({"id": i, "report": t}) + "\n" for i, t in enumerate(REPORTS)))
        self.preds = tmp / "preds.jsonl"
        self.preds.write_text("".join(json.dumps({"id": f"r{i}", "reference": t, "prediction": REPORTS[(i + 1) % 5],
                                                  "error": None}) + "\n" for i, t in enumerate(REPORTS)))
        from llavarad.cli import main

        self.main = main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["label", str(self.clean_csv), "--out", str(tmp / "clean.labels.csv")])
            main(["evaluate", str(self.preds), "--out", str(tmp / "eval_clean"), "--bootstrap", "5",
                  "--no-radgraph", "--no-plot"])
        self.clean_labels = self._labels(tmp / "clean.labels.csv")
        self._make_model_and_images()
        self.clean_metrics = json.loads((tmp / "eval_clean" / "metrics.json").read_text())["metrics"]

    def _make_model_and_images(self) -> None:
        import numpy as np
        from PIL import Image

        from llavarad.model.build import init_random, save_model

        self.model = save_model(init_random("tiny", seed=0), self.tmp / "tiny_model")
        pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
        self.manifest_rows = []
        for i, img in enumerate(pixels):
            Image.fromarray(img).save(self.tmp / f"img{i}.png")
            self.manifest_rows.append(json.dumps({"id": f"g{i}", "image": str(self.tmp / f"img{i}.png"),
                                                  "indication": REPORTS[i]}))
        (self.tmp / "manifest.jsonl").write_text("\n".join(self.manifest_rows) + "\n")
        self.generate_args = ["--model", str(self.model), "--max-new-tokens", "4", "--device", "cpu"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.main(["generate", "--manifest", str(self.tmp / "manifest.jsonl"), "--out",
                       str(self.tmp / "clean_preds.jsonl"), *self.generate_args])
        self.clean_preds = {r["id"]: r["prediction"] for r in
                            map(json.loads, (self.tmp / "clean_preds.jsonl").read_text().splitlines())}

    def generate_case(self) -> Case:
        """A manifest of three good rows with one damaged line or unusable image: good rows as in the clean run."""
        rng, src, out = self.rng, self._path(".jsonl"), self._path("_preds.jsonl")
        lines = list(self.manifest_rows)
        bad = rng.choice(_BAD_JSON_LINES + ["IMAGE"])
        if bad == "IMAGE":
            bad = json.dumps({"id": "bad", "image": str(_special(self.tmp, rng, unusable=False))})
        lines.insert(rng.randint(0, len(lines)), bad)
        src.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")

        def check(rc: int) -> str | None:
            got = {r["id"]: r["prediction"] for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else {}
            wrong = [k for k, v in self.clean_preds.items() if got.get(k) != v]
            return "exit 0 with a damaged row" if rc == 0 else f"good rows changed: {wrong}" if wrong else None
        return Case("generate", "damaging", ["generate", "--manifest", str(src), "--out", str(out),
                                              *self.generate_args], check)

    def _path(self, suffix: str) -> Path:
        self.n += 1
        return self.tmp / f"case{self.n}{suffix}"

    @staticmethod
    def _labels(path: Path) -> dict[str, list[str]]:
        if not path.is_file():
            return {}
        with path.open(newline="", encoding="utf-8") as fh:
            return {row[0]: row[1:] for row in list(csv.reader(fh))[1:]}

    def _label_check(self, out: Path, expect_fail: bool) -> Callable[[int], str | None]:
        def check(rc: int) -> str | None:
            if rc == 0 and expect_fail:
                return "exit 0 on a damaged file"
            got = self._labels(out)
            if rc == 0 and got != self.clean_labels:
                return "labels differ from the clean run"
            wrong = [t for t in REPORTS if t in got and got[t] != self.clean_labels[t]]
            return f"good rows changed: {wrong}" if wrong else None
        return check

    def label_case(self) -> Case:
        rng, fmt = self.rng, self.rng.choice(("csv", "jsonl"))
        src, out = self._path(f".{fmt}"), self._path(".labels.csv")
        text = (self.clean_csv if fmt == "csv" else self.clean_jsonl).read_text(encoding="utf-8")
        kind = rng.choice(("benign", "damaging", "damaging", "random"))
        if kind == "random":
            src.write_bytes(_random_bytes(rng, text.encode()))
            return Case("label", kind, ["label", str(src), "--out", str(out)])
        if kind == "damaging" and rng.random() < 0.15:
            return Case("label", kind, ["label", str(_special(self.tmp, rng)), "--out", str(out)],
                        lambda rc: "exit 0 on a special file" if rc == 0 else None)
        lines = text.splitlines()
        if kind == "benign":
            op = rng.choice(("bom", "crlf", "blank", "delim", "latin1", "keys"))
            if op == "delim" and fmt == "csv":
                buf = io.StringIO()
                csv.writer(buf, delimiter=rng.choice(";\t|"), lineterminator="\n").writerows(
                    csv.reader(io.StringIO(text)))
                lines = buf.getvalue().splitlines()
            elif op == "keys" and fmt == "jsonl":
                lines = [json.dumps(dict(reversed(list(json.loads(x).items())))) for x in lines]
            elif op == "blank":
                lines.insert(rng.randint(1, len(lines)), "")
            data = "\r\n".join(lines) + "\r\n" if op == "crlf" else "\n".join(lines) + "\n"
            src.write_bytes(("\ufeff" if op == "bom" else "").encode() + data.encode(
                "latin-1" if op == "latin1" else "utf-8"))
            return Case("label", kind, ["label", str(src), "--out", str(out)], self._label_check(out, False))
        bad = rng.choice(_BAD_CSV_ROWS if fmt == "csv" else _BAD_JSON_LINES)
        lines.insert(rng.randint(1, len(lines)), bad)
        src.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
        return Case("label", kind, ["label", str(src), "--out", str(out)], self._label_check(out, True))

    def evaluate_case(self) -> Case:
        rng, src, out = self.rng, self._path(".jsonl"), self._path("_eval")
        lines = self.preds.read_text().splitlines()
        kind = rng.choice(("damaging", "random"))
        args = ["--bootstrap", "5", "--no-radgraph", "--no-plot"]
        if kind == "random":
            src.write_bytes(_random_bytes(rng, "\n".join(lines).encode()))
            return Case("evaluate", kind, ["evaluate", str(src), "--out", str(out), *args])
        lines.insert(rng.randint(0, len(lines)), rng.choice(_BAD_JSON_LINES))
        src.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")

        def check(rc: int) -> str | None:
            if rc == 0:
                return "exit 0 with a damaged row"
            metrics = out / "metrics.json"
            if metrics.is_file() and json.loads(metrics.read_text())["metrics"] != self.clean_metrics:
                return "metrics of the good rows differ from the clean run"
            return None
        return Case("evaluate", kind, ["evaluate", str(src), "--out", str(out), *args], check)

    def section_case(self) -> Case:
        rng = self.rng
        if rng.random() < 0.2:
            return Case("data section", "random", ["data", "section", str(_special(self.tmp, rng, unusable=False))])
        if rng.random() < 0.3:
            return Case("data section", "damaging", ["data", "section", str(_special(self.tmp, rng))],
                        lambda rc: "exit 0 on a special file" if rc == 0 else None)
        src = self._path(".txt")
        src.write_bytes(_random_bytes(rng, b"INDICATION: Cough.\nFINDINGS: " + " ".join(REPORTS).encode()
                                      + b"\nIMPRESSION: No acute disease.\n"))
        return Case("data section", "random", ["data", "section", str(src)])

    def templates_case(self) -> Case:
        rng = self.rng
        names = ["No Finding", "Cardiomegaly", "Edema", "Support Devices", "Foo", "", "Pleural Other", "ILD"]
        values = [1, 0, -1, None, 2, "yes", 1.5, float("nan"), [], {}]
        labels = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 4))}
        text = json.dumps(labels) if rng.random() < 0.8 else _random_bytes(rng, json.dumps(labels).encode()).decode(
            "utf-8", "replace")
        return Case("data templates", "random", ["data", "templates", "--labels", text])

    def import_case(self) -> Case:
        rng, root, out = self.rng, self._path("_objectcxr"), self._path(".jsonl")
        root.mkdir()
        rows = ["image_name,annotation", "00001.jpg,0 10 10 20 20", "00002.jpg,", "00003.jpg,"]
        kind = rng.choice(("damaging", "random"))
        if kind == "damaging":
            rows.insert(rng.randint(1, len(rows)), rng.choice(_BAD_CSV_ROWS + ["00001.jpg,", "00009.jpg"]))
            (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8", errors="surrogateescape")
        else:
            (root / "train.csv").write_bytes(_random_bytes(rng, ("\n".join(rows) + "\n").encode()))

        def check(rc: int) -> str | None:
            if not out.is_file():
                return None if rc else "exit 0 without an output"
            recs = {r["id"]: r["source_labels"]["Foreign Object"] for r in map(json.loads, out.read_text().splitlines())}
            want = {"object-cxr/train/00001.jpg": 1.0, "object-cxr/train/00002.jpg": 0.0, "object-cxr/train/00003.jpg": 0.0}
            wrong = {k: v for k, v in recs.items() if k in want and v != want[k]}
            return f"wrong labels {wrong}" if wrong else None
        return Case("data import", kind, ["data", "import", "object-cxr", str(root), "--out", str(out)],
                    check if kind == "damaging" else None)

    def config_case(self) -> Case:
        rng, cfg = self.rng, self._path(".yaml")
        key = rng.choice(("learning_rate", "epochs", "batch_size", "max_length", "warmup_ratio", "seed", "lora"))
        value = rng.choice([".inf", "-.inf", ".nan", "sixty-four", "-1", "[1, 2]", "{a: 1}", "1e999", "!!binary AAAA",
                            "*anchor", "\x00", "0x10", "true"])
        cfg.write_text(f"model: {self.tmp}/no_model\ntrain_manifest: {self.tmp}/no_manifest.jsonl\n"
                       f"output_dir: {self._path('_run')}\n{key}: {value}\n", encoding="utf-8", errors="replace")
        if rng.random() < 0.2:
            cfg.write_bytes(_random_bytes(rng, cfg.read_bytes()))
        return Case("train", "damaging", ["train", rng.choice(("stage2", "stage3")), "--config", str(cfg)],
                    lambda rc: "exit 0 on a config that cannot train" if rc == 0 else None)

    def model_case(self) -> Case:
        """generate / merge-lora / convert / init / chexprompt / retrieval / compare / explain on unusable inputs."""
        rng, special = self.rng, str(_special(self.tmp, self.rng))
        argv = rng.choice([
            ["generate", special, "--model", special],
            ["generate", "--manifest", special, "--out", str(self._path(".jsonl")), "--model", special],
            ["merge-lora", "--adapter", special, "--out", str(self._path("_m"))],
            ["convert", "--release", special, "--out", str(self._path("_c"))],
            ["init", "--preset", rng.choice(["banana", "", "../../etc/passwd"]), "--out", str(self._path("_i"))],
            ["chexprompt", special, "--out", str(self._path("_j")), "--backend", "openai_compatible",
             "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
            ["retrieval", "--manifest", special, "--encoder", special, "--out", str(self._path("_r"))],
            ["compare", special, str(self.preds), "--out", str(self._path("_cmp"))],
            ["explain", special, "--model", str(self.model), "--out", str(self._path("_x"))],
        ])
        return Case(argv[0], "damaging", argv, lambda rc: "exit 0 on an unusable input" if rc == 0 else None)


# -- running -----------------------------------------------------------------------------------
def run_case(fuzzer: Fuzzer, case: Case, timeout: float, log: _Log) -> dict[str, object]:
    hung = []

    def alarm(*_: object) -> None:
        hung.append(True)
        raise TimeoutError("fuzz case timed out")

    out, err = io.StringIO(), io.StringIO()
    log.lines.clear()
    t0 = time.perf_counter()
    escaped = None
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = fuzzer.main(case.argv)
    except BaseException as exc:  # noqa: BLE001 - an escape from main is itself a finding
        rc, escaped = -1, f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    text = out.getvalue() + err.getvalue() + "\n".join(log.lines)
    wrong = None if hung or case.check is None else case.check(rc)
    return {"seconds": time.perf_counter() - t0, "verb": case.verb, "kind": case.kind, "rc": rc, "hang": bool(hung),
            "traceback": escaped is not None or "Traceback (most recent call last)" in text,
            "unexpected": "Error: unexpected " in text, "wrong": wrong, "argv": case.argv[:6],
            "message": (escaped or (err.getvalue().strip().splitlines() or [""])[-1])[:300]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--show", type=int, default=10, help="findings printed in full")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    log = _Log()
    logging.basicConfig(level=logging.WARNING, handlers=[log], force=True)
    weights = {"label_case": 40, "section_case": 12, "templates_case": 12, "import_case": 12, "evaluate_case": 6,
               "config_case": 3, "model_case": 4, "generate_case": 2}
    with tempfile.TemporaryDirectory(prefix="llavarad_fuzz_") as tmp:
        fuzzer = Fuzzer(Path(tmp), rng)
        start = time.perf_counter()
        results = []
        for _ in range(args.cases):
            make = rng.choices(list(weights), weights=list(weights.values()))[0]
            results.append(run_case(fuzzer, getattr(fuzzer, make)(), args.timeout, log))
        seconds = time.perf_counter() - start
    findings = [r for r in results if r["traceback"] or r["hang"] or r["unexpected"] or r["wrong"]]
    for r in findings[: args.show]:
        print("FINDING", json.dumps(r, ensure_ascii=True), file=sys.stderr)
    by_verb = Counter(r["verb"] for r in results)
    spent = Counter()
    for r in results:
        spent[r["verb"]] += r["seconds"]
    print("cases by verb (mean ms): " + ", ".join(f"{v} {n} ({1000 * spent[v] / n:.0f})" for v, n in sorted(by_verb.items())))
    print("cases by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(Counter(r["kind"] for r in results).items())))
    print(f"{len(results)} cases in {seconds:.1f} s ({len(results) / seconds:.1f} cases/s, seed {args.seed})")
    print(f"RESULT fuzz_cases {len(results)} cases goal=>=2000")
    print(f"RESULT fuzz_tracebacks {sum(bool(r['traceback']) for r in results)} cases goal=0")
    print(f"RESULT fuzz_hangs {sum(bool(r['hang']) for r in results)} cases goal=0")
    print(f"RESULT fuzz_unexpected_errors {sum(bool(r['unexpected']) for r in results)} cases goal=0")
    print(f"RESULT fuzz_rc0_wrong_output {sum(bool(r['wrong']) and r['rc'] == 0 for r in results)} cases goal=0")
    print(f"RESULT fuzz_good_rows_changed {sum(bool(r['wrong']) and r['rc'] != 0 for r in results)} cases goal=0")
    print(f"RESULT fuzz_seconds {seconds:.1f} s goal=<300")
    return 0


if __name__ == "__main__":
    sys.exit(main())
