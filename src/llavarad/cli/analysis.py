"""CLI verbs of the analysis area: ``llavarad retrieval`` (cross-modal retrieval, paper Fig. 2E)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(retrieval)


@click.command("retrieval")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--encoder", "encoders", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="A CLIP folder (stage-1 output or converted BiomedCLIP-CXR); repeat to compare several.")
@click.option("--name", "names", multiple=True, help="Table name of each --encoder, in order (default: folder names).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for retrieval.json/.csv/.md and the embedding cache.")
@click.option("--split", type=click.Choice(["train", "validate", "test", "all"]), default="test", show_default=True,
              help="Manifest split to evaluate.")
@click.option("--positives", type=click.Choice(["same_text", "pair"]), default="same_text", show_default=True,
              help="same_text: identical reports count as matches; pair: only the record's own pair.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16, float16.")
@click.option("--n-resamples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache (default: OUT/embedding_cache).")
@click.pass_context
def retrieval(ctx: click.Context, manifest: str, encoders: tuple[str, ...], names: tuple[str, ...], out_dir: str,
              split: str, positives: str, batch_size: int, device: str, dtype: str, n_resamples: int, seed: int,
              cache_dir: str | None) -> None:
    """Image<->report retrieval: Recall@1/5/10, mean/median rank, both directions, with bootstrap CIs.

    Each image ranks every report of the split (image->text) and each report every image
    (text->image); encoders are compared side by side in one table. Embeddings are cached by
    encoder and image content, so adding an encoder to the table only encodes that one, and a
    replaced image is encoded again. Exit code 1 when an image cannot be read or an id repeats.

    \b
    Example:
      llavarad retrieval data/test.jsonl --encoder runs/stage1 --encoder models/biomedclip-cxr \\
          --out results/retrieval
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from llavarad.io.manifest import ManifestError
    from llavarad.model.clip import ClipFolderError
    from llavarad.retrieval import RetrievalError, run_retrieval, skipped_summary

    if names and len(names) != len(encoders):
        raise click.BadParameter(f"{len(names)} --name for {len(encoders)} --encoder; give one per encoder or none",
                                 param_hint="--name")
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as bar:

        def factory(name: str, total: int):
            task = bar.add_task(f"encoding with {name}", total=total)
            return lambda n: bar.advance(task, n)

        try:
            report = run_retrieval(manifest, list(encoders), out_dir, split=None if split == "all" else split,
                                   batch_size=batch_size, device=device, dtype=dtype, positives=positives,
                                   n_resamples=n_resamples, seed=seed, cache_dir=cache_dir, names=list(names) or None,
                                   progress_factory=factory)
        except (RetrievalError, ClipFolderError, ManifestError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    table = Table(title=f"Cross-modal retrieval, {report['n']} pairs (95% CI)")
    for col in ("encoder", "direction", "R@1 %", "R@5 %", "R@10 %", "mean rank", "median rank"):
        table.add_column(col)
    for name, res in report["encoders"].items():
        for direction, label in (("i2t", "image->text"), ("t2i", "text->image")):
            m = res["metrics"]
            if not m:
                table.add_row(name, label, "no pairs", "", "", "", "")
                continue
            cells = [f"{m[f'{direction}_{k}']['value']:.1f} [{m[f'{direction}_{k}']['ci_low']:.1f}, "
                     f"{m[f'{direction}_{k}']['ci_high']:.1f}]" for k in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]
            table.add_row(name, label, *cells)
    chance = next(iter(report["encoders"].values()))["chance"]
    if chance:
        table.add_row("random ranking", "either", f"{chance['R@1']:.1f}", f"{chance['R@5']:.1f}",
                      f"{chance['R@10']:.1f}", "", "")
    Console().print(table)
    failed = sum(len(r["failures"]) for r in report["encoders"].values())
    for line in skipped_summary(report["skipped_records"]):
        click.echo(line, err=True)
    duplicates = [s for s in report["skipped_records"] if s["reason"].startswith("duplicate id")]
    click.echo(f"wrote {out_dir}/retrieval.json, .csv and .md")
    if failed:
        click.echo(f"{failed} image(s) could not be read and were left out; see retrieval.json 'failures'.", err=True)
    if duplicates:
        click.echo(f"{len(duplicates)} record(s) repeat an id of an earlier record; only the first of each id was "
                   "scored. Give every record its own id.", err=True)
    if failed or duplicates:
        ctx.exit(1)
