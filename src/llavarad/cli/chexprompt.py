"""CLI verbs of the CheXprompt area: ``llavarad chexprompt`` and ``llavarad validate-rexval``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_BACKENDS = ["openai", "azure", "openai_compatible", "transformers"]


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(chexprompt_cmd)
    group.add_command(validate_rexval_cmd)


def _judge_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by both verbs: the judge LLM, limits, cache, sampling, bootstrap."""
    opts = [
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="Output folder (results JSONL, tables, plot, LLM cache). Rerunning with the same folder resumes."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=str), default=None,
                     help="YAML/JSON ChexpromptConfig (keys: llm.*, prompt, n_samples, sample_temperature, bootstrap, seed, confidence)."),
        click.option("--prompt", type=click.Choice(["llavarad", "release"]), default=None,
                     help="Judge prompt: llavarad (our wording, JSON answers) [default], or release: the paper's prompt, "
                          "settings and reply format, read from Microsoft's installed chexprompt package."),
        click.option("--backend", type=click.Choice(_BACKENDS), default=None, help="Judge backend [config default: openai]."),
        click.option("--model", default=None, help="Model name sent to the server, e.g. gpt-4o, gpt-4-turbo, llama3.1:8b."),
        click.option("--base-url", default=None, help="Server URL: http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama), Azure endpoint."),
        click.option("--deployment", default=None, help="Azure deployment name."),
        click.option("--api-version", default=None, help="Azure api-version, e.g. 2024-06-01."),
        click.option("--api-key-env", default=None, help="Environment variable holding the API key (never pass the key itself)."),
        click.option("--model-path", default=None, help="transformers backend: local model folder (or the folder of --gguf-file)."),
        click.option("--gguf-file", default=None, help="transformers backend: GGUF file name inside --model-path."),
        click.option("--device", default=None, help="transformers backend: cpu or cuda."),
        click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Requests in flight [8]."),
        click.option("--rpm", type=click.FloatRange(min=0, min_open=True), default=None, help="Request-per-minute limit."),
        click.option("--tpm", type=click.FloatRange(min=0, min_open=True), default=None, help="Token-per-minute limit."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Seconds one whole request may take (connect, headers and body together) [60]."),
        click.option("--retry-after-max", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Longest wait a server's Retry-After may impose, in seconds; longer asks are capped [60]."),
        click.option("--max-retries", type=click.IntRange(min=0), default=None, help="Retries of network faults / 429 / 5xx [5]."),
        click.option("--samples", type=click.IntRange(min=1), default=None, help="Judge answers per report, averaged [1]."),
        click.option("--sample-temperature", type=click.FloatRange(0, 2), default=None, help="Temperature when --samples > 1 [0.7]."),
        click.option("--cache", "cache", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="SQLite reply cache [OUT/llm_cache.sqlite]; reruns and other runs sharing it are free."),
        click.option("--no-cache", is_flag=True, help="Do not read or write a reply cache."),
        click.option("--price-prompt", type=click.FloatRange(min=0), default=None, help="Price per 1k prompt tokens, for the cost estimate."),
        click.option("--price-completion", type=click.FloatRange(min=0), default=None, help="Price per 1k completion tokens."),
        click.option("--bootstrap", type=click.IntRange(min=1), default=None, help="Bootstrap resamples [500]."),
        click.option("--seed", type=click.IntRange(min=0), default=None, help="Bootstrap / sampling seed [0]."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any config field, e.g. --set llm.backoff_max_s=30."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _release_engine() -> str:
    from llavarad.chexprompt.release import ReleasePromptError, load_release_prompt

    try:
        return str(load_release_prompt().settings["engine"])
    except ReleasePromptError as exc:
        raise click.ClickException(str(exc)) from exc


def _config_sets(config_path: str | None, overrides: tuple[str, ...], llm_key: str) -> bool:
    """Whether --set or the --config file gives ``llm.<llm_key>``."""
    if any(o.split("=", 1)[0].strip() == f"llm.{llm_key}" for o in overrides):
        return True
    if config_path is None:
        return False
    import yaml

    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False  # load_config reports the problem
    return isinstance(data, dict) and isinstance(data.get("llm"), dict) and llm_key in data["llm"]


def _build_config(out_dir: str, kw: dict[str, Any]):
    from llavarad.chexprompt import ChexpromptConfig
    from llavarad.config import ConfigError, load_config

    mapping = {
        "backend": "llm.backend", "model": "llm.model", "base_url": "llm.base_url", "deployment": "llm.deployment",
        "api_version": "llm.api_version", "api_key_env": "llm.api_key_env", "model_path": "llm.model_path",
        "gguf_file": "llm.gguf_file", "device": "llm.device", "concurrency": "llm.concurrency",
        "rpm": "llm.requests_per_minute", "tpm": "llm.tokens_per_minute", "timeout": "llm.timeout_s", "retry_after_max": "llm.retry_after_max_s",
        "max_retries": "llm.max_retries", "samples": "n_samples", "sample_temperature": "sample_temperature",
        "price_prompt": "llm.price_prompt_per_1k", "price_completion": "llm.price_completion_per_1k",
        "bootstrap": "bootstrap", "seed": "seed", "prompt": "prompt",
    }
    overrides = []
    if kw["backend"] is None and not _config_sets(kw["config_path"], kw["overrides"], "backend"):
        overrides.append("llm.backend=openai")  # the paper's judge: GPT-4 class models through OpenAI
    for opt, key in mapping.items():
        if kw.get(opt) is not None:
            # JSON-quote strings so YAML does not turn a model called "yes" or "1e3" into a bool/number
            value = kw[opt]
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if kw["prompt"] == "release" and kw["model"] is None and not _config_sets(kw["config_path"], kw["overrides"], "model"):
        overrides.append(f"llm.model={json.dumps(_release_engine())}")  # the paper's judge model, from the package
    cache = None if kw["no_cache"] else (kw["cache"] or str(Path(out_dir) / "llm_cache.sqlite"))
    overrides.append(f"llm.cache_path={json.dumps(cache) if cache else 'null'}")
    overrides.extend(kw["overrides"])
    try:
        return load_config(ChexpromptConfig, kw["config_path"], overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _run_with_progress(label: str, work: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None, failed=0)
        failed = [0]

        def on_start(n_total: int, n_todo: int) -> None:
            bar.update(task, total=n_todo)
            if n_todo < n_total:
                console.print(f"{n_total - n_todo} of {n_total} reports already judged in this folder (or unusable input); judging {n_todo}")

        def on_row(row: dict[str, Any]) -> None:
            failed[0] += 0 if row.get("ok") else 1
            bar.update(task, advance=1, failed=failed[0])

        return work(on_start=on_start, on_row=on_row)


def _print_usage(result: dict[str, Any]) -> None:
    usage = result.get("usage", {}).get("this_run") or {}
    if usage:
        click.echo(f"LLM: {usage.get('requests_sent', 0)} requests, {usage.get('cache_hits', 0)} cache hits, "
                   f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens, "
                   f"estimated cost {usage.get('estimated_cost', 0.0):.4f}")


@click.command("chexprompt")
@click.argument("predictions", type=click.Path(dir_okay=False, path_type=str))
@_judge_options
@click.pass_context
def chexprompt_cmd(ctx: click.Context, predictions: str, out_dir: str, **kw: Any) -> None:
    """Count factual errors of generated reports with an LLM judge (CheXprompt).

    PREDICTIONS is a JSONL with id, reference, prediction (and error). For each report the judge
    counts six error types, each clinically significant or not; results are written as they come
    (OUT/chexprompt_results.jsonl, with every raw reply) and summarised with bootstrap CIs in
    OUT/chexprompt.json, .csv, .md and .png. A report whose input is unusable or whose replies never
    parse is listed as failed (exit code 1), never counted as error-free. Rerun to resume.

    \b
    Example:
      export OPENAI_API_KEY=...
      llavarad chexprompt run/predictions.jsonl --out run/chexprompt --model gpt-4o
      llavarad chexprompt preds.jsonl --out cp --backend openai_compatible --base-url http://127.0.0.1:8000/v1 --model qwen2.5-72b
      llavarad chexprompt preds.jsonl --out cp --backend azure --base-url https://NAME.openai.azure.com --deployment gpt4t --api-key-env AZURE_OPENAI_API_KEY
      llavarad chexprompt preds.jsonl --out cp_paper --prompt release --backend azure --base-url https://NAME.openai.azure.com --deployment gpt-4-1106-preview --api-key-env AZURE_OPENAI_API_KEY
    """
    from llavarad.chexprompt import ChexpromptError, run_chexprompt
    from llavarad.chexprompt.aggregate import HEADLINE_METRICS, metric_label
    from llavarad.chexprompt.release import ReleasePromptError
    from llavarad.llm import FatalError, PermanentError

    cfg = _build_config(out_dir, kw)
    try:
        result = _run_with_progress("judging", lambda **cb: run_chexprompt(predictions, out_dir, cfg, **cb))
    except FatalError as exc:
        raise click.ClickException(f"stopped: {exc}. Reports judged before the stop are kept in {out_dir}; "
                                   "rerun the same command to resume.") from exc
    except (FileNotFoundError, ValueError, PermanentError, ChexpromptError, ReleasePromptError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"CheXprompt: {result['n']} of {result['n_inputs']} reports judged, {result['n_failed']} failed")
    for name in HEADLINE_METRICS:
        m = result["metrics"][name]
        if m["value"] is None:
            continue
        pct = 100 if name.startswith("share_") else 1
        click.echo(f"  {metric_label(name)}: {pct * m['value']:.3f} [{pct * m['ci_low']:.3f}, {pct * m['ci_high']:.3f}]"
                   + ("%" if pct == 100 else ""))
    _print_usage(result)
    click.echo(f"Written: {Path(out_dir) / 'chexprompt.json'} (.csv .md .png), {Path(out_dir) / 'chexprompt_reports.csv'}")
    if result["n_failed"]:
        click.echo(f"{result['n_failed']} report(s) failed; first: {result['failed'][0]['id']}: {result['failed'][0]['error']}", err=True)
        ctx.exit(1)


@click.command("validate-rexval")
@click.argument("rexval_dir", type=click.Path(file_okay=False, exists=True, path_type=str))
@_judge_options
@click.option("--radgraph-weights", default=None, help="Folder with RadGraph weights, for the F1-RadGraph row (skipped without).")
@click.pass_context
def validate_rexval_cmd(ctx: click.Context, rexval_dir: str, out_dir: str, radgraph_weights: str | None, **kw: Any) -> None:
    """Validate the judge against six radiologists on ReXVal (the paper's Fig. 4).

    REXVAL_DIR holds 50_samples_gt_and_candidates.csv and
    6_valid_raters_per_rater_error_categories.csv from PhysioNet (credentialed access). Judges the
    200 pairs (resumable), then reports Kendall's tau-b between the radiologists' mean error counts
    and the judge, BLEU-4, ROUGE-L, labeler F1 (and F1-RadGraph with weights), and the
    leave-one-rater-out comparison with paired t-tests: OUT/rexval.json, .csv, .md, .png.

    \b
    Example:
      llavarad validate-rexval ~/physionet/rexval/1.0.0 --out rexval_gpt4o --model gpt-4o
    """
    from llavarad.chexprompt import validate_rexval
    from llavarad.llm import PermanentError

    cfg = _build_config(out_dir, kw)
    try:
        result = _run_with_progress("judging ReXVal pairs",
                                    lambda **cb: validate_rexval(rexval_dir, out_dir, cfg, radgraph_weights=radgraph_weights, **cb))
    except (FileNotFoundError, ValueError, RuntimeError, PermanentError) as exc:  # ChexpromptError, ReleasePromptError: RuntimeError
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ReXVal: {result['n']} of {result['n_pairs']} pairs judged")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    for row in result["kendall"]:
        click.echo(f"  tau-b {row['target']:<18} {row['method']:<12} {fmt(row['tau_b'], '+.3f')} "
                   f"[{fmt(row['ci_low'], '+.3f')}, {fmt(row['ci_high'], '+.3f')}]")
    for row in result["leave_one_rater_out"]["total_errors"]:
        click.echo(f"  rater {row['rater']}: MAD left-out {row['mad_left_out_rater']:.3f} vs judge {row['mad_judge']:.3f} "
                   f"(p={fmt(row['p_value'], '.2g')})")
    for name, note in result["settings"]["metric_notes"].items():
        if note.startswith("skipped"):
            click.echo(f"  {name}: {note}")
    _print_usage(result)
    click.echo(f"Written: {Path(out_dir) / 'rexval.json'} (.csv .md .png)")
    if result["n_failed"]:
        click.echo(f"{result['n_failed']} pair(s) could not be judged; see rexval.json", err=True)
        ctx.exit(1)
