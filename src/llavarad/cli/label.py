"""``llavarad label``: CheXpert-style labels (1, 0, -1, blank) for the reports of a CSV or JSONL file."""

from __future__ import annotations

from pathlib import Path

import click

from llavarad.evaluate.labels_csv import DEFAULT_COLUMNS

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add ``label`` to the top-level group."""

    @group.command("label")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--text-column", default=None,
                  help="Column (CSV header or JSONL key) holding the report; 'findings+impression' joins "
                       f"columns. Default: the first of {', '.join(DEFAULT_COLUMNS)}; a CSV with none of "
                       "them is read as headerless, report in column 1.")
    @click.option("--labeler", "labeler_name", type=click.Choice(["rules", "chexbert"]), default="rules",
                  show_default=True, help="rules: offline rule-based labeler; chexbert: needs weights.")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Output CSV (default: FILE's name + '.labels.csv').")
    @click.option("--alternatives", type=click.Choice(["positive", "uncertain"]), default="positive",
                  show_default=True, help="rules: read 'A or B' findings as stated, or as uncertain (CheXpert).")
    @click.option("--probable", type=click.Choice(["positive", "uncertain"]), default="positive",
                  show_default=True, help="rules: read 'probable X' as stated, or as uncertain (CheXpert).")
    @click.option("--chexbert-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="chexbert: local chexbert.pth (or $LLAVARAD_CHEXBERT_WEIGHTS).")
    @click.option("--chexbert-tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="chexbert: folder with bert-base-uncased vocab.txt (or $LLAVARAD_CHEXBERT_TOKENIZER).")
    @click.option("--device", default="cpu", show_default=True, help="chexbert: torch device.")
    @click.pass_context
    def label_cmd(ctx: click.Context, file: Path, text_column: str | None, labeler_name: str, out: Path | None,
                  alternatives: str, probable: str, chexbert_weights: Path | None, chexbert_tokenizer: Path | None,
                  device: str) -> None:
        """Label the reports of FILE (CSV or JSONL) with the 14 CheXpert observations.

        Writes a CSV: the report text, then No Finding ... Support Devices with 1.0 (positive),
        0.0 (negative), -1.0 (uncertain) or blank (not mentioned), as the CheXpert labeler does.
        Rows that cannot be read are written with blank labels, listed, and make the exit code 1.

        \b
        Example:
          llavarad label sample_reports.csv --out labeled_reports.csv
          llavarad label predictions.jsonl --text-column prediction --out pred_labels.csv
          llavarad label reports.csv --text-column findings+impression --labeler chexbert \\
              --chexbert-weights chexbert.pth --chexbert-tokenizer bert-base-uncased/
        """
        from rich.progress import Progress

        from llavarad.evaluate.labelers import get_labeler
        from llavarad.evaluate.labels_csv import read_reports, write_labels
        from llavarad.io.outputs import check_output

        out = check_output(out or file.with_name(file.stem + ".labels.csv"), [file])
        column, rows = read_reports(file, text_column)
        if not rows:  # an empty output would look like a successful run
            from llavarad.errors import InputError

            raise InputError(f"{file}: no reports to label (the file has no rows)")
        if labeler_name == "rules":
            labeler = get_labeler("rules", alternatives=alternatives, probable=probable)
        else:
            labeler = get_labeler("chexbert", weights=chexbert_weights, tokenizer=chexbert_tokenizer, device=device)
        texts = [r.text if r.text is not None else "" for r in rows]
        good = [i for i, r in enumerate(rows) if r.error is None and r.text is not None]
        labels: list[dict[str, float | None]] = [dict.fromkeys(_observations()) for _ in rows]
        step = 2048 if labeler_name == "rules" else 64
        with Progress(transient=True, disable=len(good) < 5000 and labeler_name == "rules") as progress:
            task = progress.add_task(f"labeling with {labeler_name}", total=len(good))
            for b in range(0, len(good), step):
                chunk = good[b:b + step]
                for i, lab in zip(chunk, labeler.label([texts[i] for i in chunk])):
                    labels[i] = lab
                progress.advance(task, len(chunk))
        write_labels(out, column, texts, labels)
        errors = [(r.where, r.error) for r in rows if r.error is not None]
        for where, err in errors:
            click.echo(f"{where}: {err} (written with blank labels)", err=True)
        positives = sum(1 for lab in labels for v in lab.values() if v == 1.0)
        click.echo(f"labeled {len(good)} of {len(rows)} reports from column {column!r} with {labeler_name} "
                   f"({positives} positive labels) -> {out}")
        if errors:
            click.echo(f"{len(errors)} row(s) could not be labeled", err=True)
            ctx.exit(1)


def _observations() -> tuple[str, ...]:
    from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

    return CHEXPERT_OBSERVATIONS
