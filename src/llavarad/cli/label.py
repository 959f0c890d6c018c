"""``llavarad label``: CheXpert-style labels (1, 0, -1, blank) for the reports of a CSV or JSONL file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import click

__all__ = ["register", "read_reports", "write_labels"]

#: Columns tried, in order, when --text-column is not given.
_DEFAULT_COLUMNS = ("Reports", "report", "text", "findings+impression", "prediction", "reference")


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _pick(row: dict, column: str) -> tuple[str | None, str | None]:
    """Text of ``column`` ("a+b" joins columns with a space) in ``row``, or an error message."""
    parts = []
    for name in column.split("+"):
        if name not in row:
            return None, f"no column {name!r} (columns: {', '.join(map(str, row))})"
        value = row[name]
        if value is None:
            continue
        if not isinstance(value, str):
            return None, f"column {name!r} holds {type(value).__name__} {value!r:.40}, not text"
        parts.append(value.strip())
    return " ".join(p for p in parts if p), None


def read_reports(path: Path, text_column: str | None) -> tuple[str, list[tuple[str, str | None, str | None]]]:
    """Read the reports of a CSV or JSONL file.

    Returns ``(column, rows)``; each row is ``(where, text, error)`` with ``where`` = ``file:line``.
    A CSV without a known header and no ``text_column`` is read as the original labeler's input:
    no header, the report in the first column.
    """
    rows: list[tuple[str, str | None, str | None]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        records: list[tuple[int, dict | None, str | None]] = []
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    records.append((n, None, f"not valid JSON ({exc})"))
                    continue
                if not isinstance(obj, dict):
                    records.append((n, None, f"expected a JSON object, got {type(obj).__name__}"))
                    continue
                records.append((n, obj, None))
        column = text_column
        if column is None:
            first = next((o for _, o, _ in records if o is not None), {})
            column = next((c for c in _DEFAULT_COLUMNS if all(p in first for p in c.split("+"))), None)
            if column is None:
                raise click.ClickException(f"{path}: no text column among {', '.join(_DEFAULT_COLUMNS)}: "
                                           "choose one with --text-column")
        for n, obj, err in records:
            text, err2 = (None, err) if obj is None else _pick(obj, column)
            rows.append((f"{path}:{n}", text, err2))
        return column, rows
    with path.open(newline="", encoding="utf-8-sig") as fh:
        data = list(csv.reader(fh))
    if not data:
        return text_column or "Reports", rows
    header = data[0]
    column = text_column
    if column is None:
        column = next((c for c in _DEFAULT_COLUMNS if all(p in header for p in c.split("+"))), None)
    if column is None:  # the original labeler's format: no header, report in the first column
        for n, rec in enumerate(data, 1):
            rows.append((f"{path}:{n}", rec[0] if rec else "", None))
        return "Reports", rows
    missing = [p for p in column.split("+") if p not in header]
    if missing:
        raise click.ClickException(f"{path}: no column {', '.join(map(repr, missing))} in the header "
                                   f"({', '.join(header)}): choose one with --text-column")
    for n, rec in enumerate(data[1:], 2):
        if len(rec) != len(header):
            rows.append((f"{path}:{n}", None, f"{len(rec)} fields where the header has {len(header)}"))
            continue
        text, err = _pick(dict(zip(header, rec)), column)
        rows.append((f"{path}:{n}", text, err))
    return column, rows


def write_labels(path: Path, column: str, texts: list[str], labels: list[dict[str, float | None]]) -> None:
    """Write the Labels CSV (text column, then the 14 observations) atomically."""
    from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # as pandas writes it
        writer.writerow([column, *CHEXPERT_OBSERVATIONS])
        for text, lab in zip(texts, labels):
            writer.writerow([text, *(_format(lab[obs]) for obs in CHEXPERT_OBSERVATIONS)])
    os.replace(tmp, path)


def register(group: click.Group) -> None:
    """Add ``label`` to the top-level group."""

    @group.command("label")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--text-column", default=None,
                  help="Column (CSV header or JSONL key) holding the report; 'findings+impression' joins "
                       f"columns. Default: the first of {', '.join(_DEFAULT_COLUMNS)}; a CSV with none of "
                       "them is read as headerless, report in column 1.")
    @click.option("--labeler", "labeler_name", type=click.Choice(["rules", "chexbert"]), default="rules",
                  show_default=True, help="rules: offline rule-based labeler; chexbert: needs weights.")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Output CSV (default: FILE's name + '.labels.csv').")
    @click.option("--alternatives", type=click.Choice(["positive", "uncertain"]), default="positive",
                  show_default=True, help="rules: read 'A or B' findings as stated, or as uncertain (CheXpert).")
    @click.option("--chexbert-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="chexbert: local chexbert.pth (or $LLAVARAD_CHEXBERT_WEIGHTS).")
    @click.option("--chexbert-tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="chexbert: folder with bert-base-uncased vocab.txt (or $LLAVARAD_CHEXBERT_TOKENIZER).")
    @click.option("--device", default="cpu", show_default=True, help="chexbert: torch device.")
    @click.pass_context
    def label_cmd(ctx: click.Context, file: Path, text_column: str | None, labeler_name: str, out: Path | None,
                  alternatives: str, chexbert_weights: Path | None, chexbert_tokenizer: Path | None,
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

        from llavarad.evaluate.labelers import LabelerUnavailable, get_labeler

        column, rows = read_reports(file, text_column)
        out = out or file.with_name(file.stem + ".labels.csv")
        try:
            if labeler_name == "rules":
                labeler = get_labeler("rules", alternatives=alternatives)
            else:
                labeler = get_labeler("chexbert", weights=chexbert_weights, tokenizer=chexbert_tokenizer,
                                      device=device)
        except LabelerUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        texts = [t if t is not None else "" for _, t, _ in rows]
        good = [i for i, (_, t, err) in enumerate(rows) if err is None and t is not None]
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
        errors = [(where, err) for where, _, err in rows if err is not None]
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
