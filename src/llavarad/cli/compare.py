"""CLI verb ``llavarad compare BEFORE AFTER --out DIR``: two models' metric tables with paired differences."""

from __future__ import annotations

from pathlib import Path

import click


def register(group: click.Group) -> None:
    """Add ``compare`` to the top-level group."""
    group.add_command(compare_cmd)


@click.command("compare")
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: compare.json, compare.md, compare.csv, compare.png (and label caches).")
@click.option("--labeler", type=click.Choice(["rules", "chexbert"]), default="rules", show_default=True)
@click.option("--chexbert-weights", type=click.Path(dir_okay=False, path_type=str), default=None)
@click.option("--statistic", type=click.Choice(["release", "full"]), default="release", show_default=True,
              help="Headline: bootstrap median for F1/ROUGE-L as the paper's table (release), or the full-sample value.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=2), default=500, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None, help="Seed of the resamples [3].")
@click.option("--before-name", default=None, help="Name of the first model in the tables.")
@click.option("--after-name", default=None, help="Name of the second model in the tables.")
@click.option("--no-plot", is_flag=True)
@click.pass_context
def compare_cmd(ctx: click.Context, before: Path, after: Path, out_dir: Path, labeler: str, chexbert_weights: str | None,
                statistic: str, n_bootstrap: int, seed: int | None, before_name: str | None, after_name: str | None,
                no_plot: bool) -> None:
    """Is the fine-tuned model better, by how much, for which observations?

    BEFORE and AFTER are predictions JSONL files of the same test set (`llavarad generate`
    output). Both are scored on the reports they share, on the same bootstrap resamples, so
    the difference AFTER - BEFORE of every metric (CheXbert-style F1s, BLEU, ROUGE-L,
    per-observation F1) comes with a paired 95% interval. Exits 1 when some reports could
    not be scored in both files (they are listed in compare.json).

    \b
    Example:
      llavarad compare runs/before.jsonl runs/after.jsonl --out runs/compare
    """
    from llavarad.config import ConfigError
    from llavarad.evaluate.bootstrap import RELEASE_SEED
    from llavarad.evaluate.compare import CompareConfig, CompareError, compare
    from llavarad.io.outputs import check_output

    try:
        cfg = CompareConfig(labeler=labeler, chexbert_weights=chexbert_weights, statistic=statistic,  # type: ignore[arg-type]
                            bootstrap=n_bootstrap, seed=RELEASE_SEED if seed is None else seed,
                            before_name=before_name, after_name=after_name, plot=not no_plot)
        check_output(out_dir, [before, after], kind="dir", resumable=True)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            result = compare(before, after, out_dir, cfg, progress=progress)
    except (ConfigError, CompareError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    b, a = result["before"]["name"], result["after"]["name"]
    click.echo(f"{a} vs {b}: {result['n']} shared reports, {n_bootstrap} paired resamples")
    click.echo(f"  {'metric':<14} {b[:18]:>18} {a[:18]:>18} {'difference [95% CI]':>28}  p(not better)")
    for key, m in result["metrics"].items():
        d = m["difference"]
        click.echo(f"  {key:<14} {m['before']['value']:18.1f} {m['after']['value']:18.1f} "
                   f"{d['value']:+9.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]".ljust(84) + f"  {d['p_not_better']:.3f}")
    click.echo(f"Wrote {out_dir}/compare.json, compare.md, compare.csv" + ("" if no_plot else ", compare.png"))
    if result["problems"]:
        click.echo(f"{len(result['problems'])} report(s) were not scored in both files; see 'problems' in "
                   f"{out_dir}/compare.json", err=True)
        ctx.exit(1)
