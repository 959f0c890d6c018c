"""Phantom verb: ``phantom`` (synthetic chest radiographs with known findings, reports and masks)."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected three numbers like 0.8,0.1,0.1") from exc
    if len(values) != 3:
        raise click.BadParameter(f"{text!r}: expected three numbers (train,validate,test) like 0.8,0.1,0.1")
    return values


@click.command("phantom")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (images/, masks/, manifest.jsonl, phantom_config.json). Resumed if it exists.")
@click.option("--n", "n", type=int, default=None, help="Number of images (default 1000).")
@click.option("--size", type=int, default=None, help="Image side in pixels (default 224).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0); same seed, same data set.")
@click.option("--split-fractions", default=None, help="train,validate,test fractions (default 0.8,0.1,0.1).")
@click.option("--normal-fraction", type=float, default=None, help="Fraction of images with no finding (default 0.2).")
@click.option("--prevalence", "prevalence", multiple=True, metavar="CATEGORY=P",
              help="Fraction of images with a category, e.g. --prevalence pneumothorax=0.3 (repeatable). "
                   "Categories: cardiomegaly, pleural_effusion, pneumothorax, consolidation, edema, atelectasis, "
                   "lung_lesion, support_devices.")
@click.option("--phrasing", type=click.Choice(["varied", "fixed"]), default=None,
              help="Report wording: varied (default; two phrasings per finding, shuffled negatives) or fixed.")
@click.option("--no-masks", is_flag=True, help="Do not write masks/ (the manifest then has mask: null).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A phantom_config.json / YAML of PhantomConfig fields; options above override it.")
@click.option("--workers", type=int, default=1, show_default=True, help="Drawing processes (same output for any number).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def phantom_cmd(ctx: click.Context, out_dir: Path, n: int | None, size: int | None, seed: int | None,
                split_fractions: str | None, normal_fraction: float | None, prevalence: tuple[str, ...],
                phrasing: str | None, no_masks: bool, config_path: Path | None, workers: int, as_json: bool) -> None:
    """Draw synthetic chest radiographs with known findings, reports, labels and region masks.

    Findings (cardiomegaly, pleural effusion, pneumothorax, consolidation, edema, atelectasis, lung
    nodule/mass, tubes, lines and pacemakers) have a known side, location and severity; each gets a
    report sentence and a pixel mask. Rerunning with the same settings resumes an interrupted run.

    \b
    Examples:
      llavarad phantom --out data/phantom --n 2000 --size 224 --seed 0
      llavarad phantom --out /tmp/ph --n 200 --size 112 --split-fractions 0.7,0.15,0.15
      llavarad phantom --out /tmp/ph2 --n 500 --prevalence pneumothorax=0.4 --normal-fraction 0.1
    """
    from llavarad.cli._progress import progress_bar
    from llavarad.config import ConfigError, load_config
    from llavarad.phantom import PhantomConfig, generate_phantoms

    overrides = []
    for name, value in (("n", n), ("size", size), ("seed", seed), ("normal_fraction", normal_fraction),
                        ("phrasing", phrasing)):
        if value is not None:
            overrides.append(f"{name}={value}")
    if split_fractions is not None:
        overrides.append(f"split_fractions={_fractions(split_fractions)}")
    for item in prevalence:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected CATEGORY=P, e.g. pneumothorax=0.3", param_hint="--prevalence")
        cat, value = item.split("=", 1)
        overrides.append(f"prevalence.{cat.strip()}={value.strip()}")
    if no_masks:
        overrides.append("write_masks=false")
    try:
        config = load_config(PhantomConfig, config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    with progress_bar(transient=True, disable=as_json) as bar:
        task = bar.add_task("drawing phantoms", total=config.n, status="")
        try:
            summary = generate_phantoms(config, out_dir, workers=workers,
                                        progress=lambda done, total: bar.update(task, completed=done))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc

    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        rate = summary.written / summary.seconds * 60 if summary.seconds > 0 else 0.0
        click.echo(f"{summary.written} drawn, {summary.skipped} already present, {summary.failed} failed of "
                   f"{summary.n} ({config.size} px) in {summary.seconds:.1f} s ({rate:.0f} images/min) -> {summary.manifest}")
        click.echo("splits: " + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
        click.echo(f"normal: {summary.normal} ({summary.normal / summary.n:.0%})")
        click.echo("findings: " + ", ".join(f"{k} {v} ({v / summary.n:.0%})" for k, v in summary.finding_counts.items()))
    for err in summary.errors[:20]:
        click.echo(f"  failed {err['id']}: {err['error']}", err=True)
    if summary.failed:
        click.echo(f"{summary.failed} phantoms failed (listed in {Path(out_dir) / 'errors.jsonl'}); rerun to retry them", err=True)
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(phantom_cmd)
