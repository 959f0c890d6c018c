"""CLI verb of the evaluation stage: ``llavarad evaluate PREDS.jsonl --out DIR``."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(evaluate_cmd)


@click.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: metrics.json, table.csv/.md, per_observation.csv/.png, per_report.csv, "
                   "prior_mentions.csv (and caches used to resume).")
@click.option("--labeler", type=click.Choice(["rules", "chexbert"]), default="rules", show_default=True,
              help="CheXpert-style labeler: 'rules' (offline, no weights) or 'chexbert' (needs weights).")
@click.option("--chexbert-weights", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Local chexbert.pth for --labeler chexbert (default $LLAVARAD_CHEXBERT_WEIGHTS).")
@click.option("--radgraph/--no-radgraph", "radgraph", default=None,
              help="F1-RadGraph. Default: computed when the radgraph package and weights are there, "
                   "otherwise skipped with the reason. --radgraph makes their absence an error.")
@click.option("--radgraph-weights", type=click.Path(path_type=str), default=None,
              help="Folder with RadGraph weights (DIR/radgraph/weights.th); default $LLAVARAD_RADGRAPH_WEIGHTS.")
@click.option("--statistic", type=click.Choice(["release", "full"]), default="release", show_default=True,
              help="What heads each column: 'release' = as LLaVA-Rad's rrg_eval and the paper (bootstrap median for "
                   "CheXbert F1, F1-RadGraph, ROUGE-L; BLEU on all reports with sacrebleu's interval); 'full' = the "
                   "value on all reports everywhere.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=1), default=500, show_default=True,
              help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=3, show_default=True,
              help="Seed of the resampling (3: the release's).")
@click.option("--name", default=None, help="Model name in the table (default: the predictions' 'model' field).")
@click.option("--no-plot", is_flag=True, help="Do not draw per_observation_f1.png.")
@click.pass_context
def evaluate_cmd(ctx: click.Context, predictions: str, out_dir: str, labeler: str, chexbert_weights: str | None,
                 radgraph: bool | None, radgraph_weights: str | None, statistic: str, n_bootstrap: int, seed: int,
                 name: str | None, no_plot: bool) -> None:
    """Score generated reports: the metric table of LLaVA-Rad's Supplementary Table 1.

    PREDICTIONS is the JSONL written by `llavarad generate` (id, reference, prediction, error).
    Computes CheXbert-style micro/macro F1-14 and F1-5 (uncertain as negative and as positive),
    F1-RadGraph, BLEU-1, BLEU-4 and ROUGE-L with 95% bootstrap intervals, per-observation F1, and
    the share of predictions that mention a prior study. Rows with an error are counted, not
    scored; the exit code is 1 when any row could not be scored or a requested metric is missing.

    \b
    Example:
      llavarad evaluate run/predictions.jsonl --out run/eval
      llavarad evaluate preds.jsonl --out eval --labeler chexbert --chexbert-weights ~/w/chexbert.pth \\
          --radgraph-weights ~/w/rrg
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llavarad.config import ConfigError
    from llavarad.evaluate.radgraph import RadGraphUnavailable
    from llavarad.evaluate.run import EvaluateConfig, EvaluationError, evaluate

    from llavarad.io.outputs import check_output

    check_output(out_dir, [predictions], kind="dir", resumable=True)  # resumes its own caches there
    console = Console(stderr=True)
    try:
        config = EvaluateConfig(labeler=labeler, chexbert_weights=chexbert_weights, radgraph="auto" if radgraph is None else "on" if radgraph else "off",
                                radgraph_weights=radgraph_weights, statistic=statistic, bootstrap=n_bootstrap, seed=seed,
                                name=name,
                                plot=not no_plot)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if config.radgraph == "on":  # fail before the long work, not after it
        from llavarad.evaluate.radgraph import resolve_weights

        try:
            resolve_weights(radgraph_weights)
        except RadGraphUnavailable as exc:
            raise click.ClickException(f"--radgraph was requested but F1-RadGraph is unavailable: {exc}") from exc

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            result = evaluate(predictions, out_dir, config, progress=progress)
        except (FileNotFoundError, EvaluationError, ConfigError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except RadGraphUnavailable as exc:
            raise click.ClickException(f"F1-RadGraph is unavailable: {exc}") from exc

    failed = _echo_summary(result, out_dir, statistic, n_bootstrap, seed, no_plot)
    if failed or (config.radgraph == "on" and result["metrics"].get("F1-RadGraph") is None):
        ctx.exit(1)


def _echo_summary(result: dict, out_dir: str, statistic: str, n_bootstrap: int, seed: int, no_plot: bool) -> int:
    """Print the metric table of an evaluation and what it wrote; return how many rows could not be scored."""
    from llavarad.evaluate.run import TABLE_COLUMNS

    m = result["metrics"]
    click.echo(f"{result['model']}: {result['n']} of {result['n_rows']} rows scored "
               f"(labeler {result['settings']['labeler']}, {statistic} statistic, {n_bootstrap} bootstrap resamples, "
               f"seed {seed})")
    for key, group, _ in TABLE_COLUMNS:
        v = m.get(key)
        shown = "skipped" if v is None else f"{v['value']:6.1f}  [{v['ci_low']:.1f}, {v['ci_high']:.1f}]"
        click.echo(f"  {key:<14} {group:<32} {shown}")
    pm = result["prior_mentions"]
    click.echo(f"  {'Prior-mentions':<14} {'% predictions citing a prior':<32} {pm['share']:6.1f}  "
               f"[{pm['ci_low']:.1f}, {pm['ci_high']:.1f}] % ({pm['n_flagged']} of {pm['n']})")
    skipped = result["settings"]["metrics"]["F1-RadGraph"].get("skipped")
    if skipped:
        click.echo(f"F1-RadGraph skipped: {skipped}", err=True)
    failed = len(result["generation_errors"]) + len(result["problems"])
    if failed:
        click.echo(f"{len(result['generation_errors'])} rows had a generation error and {len(result['problems'])} were "
                   f"malformed or unscorable; see 'generation_errors' and 'problems' in {out_dir}/metrics.json", err=True)
    click.echo(f"Wrote {out_dir}/metrics.json, table.md, table.csv, per_observation.csv, per_report.csv, prior_mentions.csv"
               + ("" if no_plot else ", per_observation_f1.png"))
    return failed
