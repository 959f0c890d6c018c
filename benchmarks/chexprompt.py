"""CheXprompt throughput: 200 report pairs against a local endpoint that answers in 1 s.

Runs the whole `run_chexprompt` path (prompt building, HTTP, parsing, resumable JSONL, bootstrap
aggregates and plot) against the test double `tests/llm_fake_server.ScriptedServer` on 127.0.0.1 with a fixed 1 s
latency per request:
  1. 200 pairs at concurrency 16 (goal <= 20 s),
  2. sequential (concurrency 1) on a 12-pair subset, extrapolated linearly to 200 pairs
     (measuring all 200 sequentially would take > 200 s; every request costs the same 1 s),
     giving the speedup of (1) (goal >= 10x),
  3. the same 200 pairs again into a fresh output folder, all from the SQLite cache (goal <= 2 s).
Pairs are real Open-I findings from ../shared/data (reference = one report, candidate = another).

    python benchmarks/chexprompt.py
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from llavarad.chexprompt import ChexpromptConfig, run_chexprompt
from llavarad.llm import LLMConfig
from llavarad.prompts.chexprompt import ERROR_TYPES

# the scripted OpenAI-compatible server is a test double: it lives with the tests, not in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_fake_server import Reply, ScriptedServer  # noqa: E402

N_PAIRS = 200
SEQ_SUBSET = 12
LATENCY_S = 1.0
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reports" / "openi_dev" / "openi_reports_dev.csv"


def make_predictions(path: Path) -> None:
    with DATA.open(newline="", encoding="utf-8") as fh:
        texts = [r["findings"] for r in csv.DictReader(fh) if r.get("findings") and len(r["findings"]) > 40]
    if len(texts) < 2 * N_PAIRS:
        sys.exit(f"need {2 * N_PAIRS} Open-I reports with findings in {DATA}, found {len(texts)}")
    with path.open("w", encoding="utf-8") as fh:
        for i in range(N_PAIRS):
            fh.write(json.dumps({"id": f"openi-{i}", "reference": texts[i], "prediction": texts[i + N_PAIRS], "error": None}) + "\n")


def responder(body: dict, index: int) -> Reply:
    counts = {key: {"significant": (index + j) % 2, "insignificant": (index * j) % 3 == 0} for j, (key, _, _) in enumerate(ERROR_TYPES)}
    counts = {k: {"significant": int(v["significant"]), "insignificant": int(v["insignificant"])} for k, v in counts.items()}
    return Reply(json.dumps(counts), delay_s=LATENCY_S, prompt_tokens=1500, completion_tokens=80)


def timed_run(preds: Path, out: Path, srv: ScriptedServer, cache: Path, concurrency: int) -> tuple[float, dict]:
    llm = LLMConfig(backend="openai_compatible", base_url=srv.base_url, model="bench-judge", cache_path=str(cache),
                    concurrency=concurrency, timeout_s=30, price_prompt_per_1k=0.01, price_completion_per_1k=0.03)
    cfg = ChexpromptConfig(llm=llm, bootstrap=500)
    t0 = time.perf_counter()
    result = run_chexprompt(preds, out, cfg)
    return time.perf_counter() - t0, result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_s, ScriptedServer(responder=responder) as srv:
        tmp = Path(tmp_s)
        preds = tmp / "preds.jsonl"
        make_predictions(preds)
        sub = tmp / "subset.jsonl"
        sub.write_text("".join(preds.read_text().splitlines(keepends=True)[:SEQ_SUBSET]))

        t_conc, r_conc = timed_run(preds, tmp / "conc", srv, tmp / "cache.sqlite", 16)
        assert r_conc["n"] == N_PAIRS and r_conc["n_failed"] == 0, r_conc["failed"][:3]
        print(f"concurrency 16: {N_PAIRS} pairs in {t_conc:.2f} s ({N_PAIRS / t_conc:.1f} pairs/s), "
              f"{r_conc['usage']['this_run']['requests_sent']} requests, est. cost {r_conc['usage']['this_run']['estimated_cost']:.2f}")

        t_seq_sub, r_seq = timed_run(sub, tmp / "seq", srv, tmp / "cache_seq.sqlite", 1)
        assert r_seq["n"] == SEQ_SUBSET
        t_seq = t_seq_sub / SEQ_SUBSET * N_PAIRS
        print(f"sequential: {SEQ_SUBSET} pairs in {t_seq_sub:.2f} s -> {t_seq:.1f} s for {N_PAIRS} (extrapolated)")

        n_before = len(srv.requests)
        t_cache, r_cache = timed_run(preds, tmp / "cached", srv, tmp / "cache.sqlite", 16)
        assert len(srv.requests) == n_before and r_cache["usage"]["this_run"]["cache_hits"] == N_PAIRS
        assert r_cache["metrics"] == r_conc["metrics"]
        print(f"from cache: {N_PAIRS} pairs in {t_cache:.2f} s, 0 requests sent")

    print(f"RESULT chexprompt_200_pairs_concurrency16 {t_conc:.2f} s goal=<=20")
    print(f"RESULT chexprompt_speedup_vs_sequential {t_seq / t_conc:.1f} x goal=>=10")
    print(f"RESULT chexprompt_200_pairs_cached {t_cache:.2f} s goal=<=2")


if __name__ == "__main__":
    main()
