"""CLI verbs for a hospital's own data: ``data import dicom`` and ``data build local``.

``data import dicom`` sits next to the public-dataset importers: the ``data import`` command of
:mod:`llavarad.cli.data` is wrapped in a small group that sends ``dicom`` here and every other
dataset name to the original command unchanged. Library work lives in
:mod:`llavarad.data.importers.dicom_archive` and :mod:`llavarad.data.local_sets`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


class _ImportGroup(click.Group):
    """``data import dicom ...`` here; ``data import <public dataset> ...`` to the original command."""

    def __init__(self, datasets_cmd: click.Command, dicom_cmd: click.Command):
        super().__init__(name=datasets_cmd.name, help=datasets_cmd.help, short_help=datasets_cmd.short_help)
        self.datasets_cmd = datasets_cmd
        self.add_command(dicom_cmd)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # `data import <dataset> ROOT ...`: the original command parses and runs in a context of its own
        # under the same name, so its usage lines and errors read exactly as before
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            return self.datasets_cmd.make_context(info_name, args, parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.datasets_cmd.format_help(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text("A hospital's own DICOM export with its reports: `llavarad data import dicom --help`.")


def register(group: click.Group) -> None:
    """Attach ``dicom`` to ``data import`` and ``local`` to ``data build`` (the data verbs are registered first)."""
    data = group.commands.get("data")
    if not isinstance(data, click.Group) or "import" not in data.commands:
        raise RuntimeError("llavarad.cli.own_data must be registered after llavarad.cli.data (see _PARTS)")
    original = data.commands["import"]
    if isinstance(original, _ImportGroup):
        return
    data.add_command(_ImportGroup(original, import_dicom_cmd), "import")
    build = data.commands.get("build")
    if isinstance(build, click.Group):
        build.add_command(build_local_cmd)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: three comma-separated fractions, e.g. 0.8,0.1,0.1") from exc
    if len(values) != 3:
        raise click.BadParameter(f"{text!r}: three comma-separated fractions, e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


@click.command("dicom")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reports", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reports: CSV / JSONL dump of the RIS, or FHIR bulk-export NDJSON of DiagnosticReport.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output manifest (JSONL); OUT.problems.jsonl, OUT.summary.json and the state OUT.headers.jsonl beside it.")
@click.option("--join", type=click.Choice(["accession", "study-uid"]), default="accession", show_default=True,
              help="Join reports to studies by AccessionNumber or by StudyInstanceUID.")
@click.option("--reports-format", type=click.Choice(["auto", "csv", "jsonl", "fhir"]), default="auto", show_default=True)
@click.option("--key-column", default=None, help="CSV/JSONL column of the join key [accession_number or study_instance_uid].")
@click.option("--report-column", default="report", show_default=True, help="CSV/JSONL column of the report text.")
@click.option("--indication-column", default=None, help="Optional column with the reason for the exam.")
@click.option("--fhir-version", type=click.Choice(["R4", "R4B", "R5"]), default="R4", show_default=True,
              help="FHIR version of an NDJSON export (R4 is read with fhir.resources' R4B models).")
@click.option("--dataset-name", default="local", show_default=True, help="The manifest's dataset value and id prefix.")
@click.option("--split", "split_text", default="0.8,0.1,0.1", show_default=True,
              help="train,validate,test fractions, assigned by patient.")
@click.option("--split-salt", default="llavarad", show_default=True, help="Salt of the patient hash that sets the split.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Header-reading processes.")
@click.option("--keep-secondary-capture", is_flag=True, help="Keep secondary-capture objects (left out by default).")
@click.option("--unknown-body-part", type=click.Choice(["exclude", "keep"]), default="exclude", show_default=True,
              help="Images without BodyPartExamined and no chest word in their descriptions.")
@click.option("--headerless-to", type=click.Choice(["none", "findings", "impression"]), default="none",
              show_default=True, help="Where the text of a report without section headers goes.")
@click.option("--restart", is_flag=True, help="Forget the state of an earlier run and read every header again.")
@click.option("--max-unreadable", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit non-zero when more files than this could not be read.")
@click.pass_context
def import_dicom_cmd(ctx: click.Context, root: Path, reports: Path, out: Path, join: str, reports_format: str,
                     key_column: str | None, report_column: str, indication_column: str | None, fhir_version: str,
                     dataset_name: str, split_text: str, split_salt: str, workers: int, keep_secondary_capture: bool,
                     unknown_body_part: str, headerless_to: str, restart: bool, max_unreadable: int) -> None:
    """Import a folder tree of DICOM files (a PACS export) and its reports into a manifest.

    Reads headers only (no pixels), in parallel, streaming; a killed run resumes where it stopped
    (rerun the same command). Keeps chest CR/DX images, frontal and lateral (recorded as such),
    groups them by study, joins each study's report, sections it, splits by patient. Everything
    left out or doubtful is listed by reason in OUT.problems.jsonl and counted in the summary.
    Exits 1 when files could not be read (over --max-unreadable) or no image was kept.

    \b
    Examples:
      llavarad data import dicom /pacs/export --reports ris_reports.csv --out own/manifest.jsonl
      llavarad data import dicom /pacs/export --reports DiagnosticReport.ndjson --join study-uid --out own/m.jsonl
      llavarad data import dicom /pacs/export --reports dump.csv --key-column ACC --report-column REPORT_TEXT \\
          --indication-column REASON --out own/m.jsonl
    """
    from llavarad.data.importers import DatasetLayoutError
    from llavarad.data.importers.dicom_archive import (
        DicomImportConfig,
        import_dicom_archive,
    )
    from llavarad.data.importers.report_sources import ReportColumns
    from llavarad.io.manifest import ManifestError

    try:
        cfg = DicomImportConfig(
            join=join, reports_format=reports_format, fhir_version=fhir_version,  # type: ignore[arg-type]
            columns=ReportColumns(key=key_column, text=report_column, indication=indication_column),
            dataset=dataset_name, split=_fractions(split_text), split_salt=split_salt, workers=workers,
            keep_secondary_capture=keep_secondary_capture, unknown_body_part=unknown_body_part,  # type: ignore[arg-type]
            headerless_to=headerless_to, restart=restart)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # no refresh thread (auto_refresh=False, refreshed on each update): the header pool can then
    # fork its workers instead of starting fresh interpreters
    bar = Progress(SpinnerColumn(), TextColumn("import dicom {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), transient=True, auto_refresh=False, disable=not sys.stderr.isatty())
    try:
        with bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total, refresh=True)

            summary = import_dicom_archive(root, reports, out, cfg, progress=progress)
    except (DatasetLayoutError, ManifestError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(summary)
    unreadable = summary.problems.get("unreadable", 0)
    if unreadable > max_unreadable or summary.images == 0:
        ctx.exit(1)


def _print_summary(s: Any) -> None:
    click.echo(f"{s.files:,} files ({s.headers_read_now:,} headers read now, the rest from {s.paths['state']})")
    click.echo(f"  kept {s.images:,} chest images ({s.frontal:,} frontal, {s.lateral:,} lateral, {s.view_unknown:,} "
               f"view unknown) in {s.studies:,} studies of {s.patients:,} patients -> {s.paths['manifest']}")
    click.echo(f"  reports: {s.reports:,} read, {s.studies_with_report:,} studies with a report, "
               f"{s.with_findings:,} images with findings")
    click.echo("  split by patient: " + ", ".join(f"{k} {v:,}" for k, v in s.splits.items()))
    if s.problems:
        click.echo(f"  problems ({s.excluded:,} excluded items; all listed in {s.paths['problems']}):")
        for reason, n in s.problems.items():
            click.echo(f"    {reason:<24} {n:,}")


@click.command("local")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", default="local", show_default=True, help="File names: PREFIX_train.jsonl, ...")
@click.pass_context
def build_local_cmd(ctx: click.Context, manifest: Path, out_dir: Path, prefix: str) -> None:
    """Stage 2/3 and test sets from an imported own-data manifest: frontal images with findings.

    \b
    Example:
      llavarad data build local own/manifest.jsonl --out-dir own/sets
    """
    from llavarad.cli.data import _render
    from llavarad.data.local_sets import build_local_sets
    from llavarad.io.manifest import ManifestError

    try:
        table = build_local_sets(manifest, out_dir, prefix=prefix)
    except (ManifestError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    _render(table)
    (out_dir / f"{prefix}.counts.json").write_text(json.dumps({"title": table.title, "rows": table.rows,
                                                              "notes": table.notes, "data": table.data}, indent=2))
    click.echo(f"wrote {', '.join(table.data['files'].values())}")
    if sum(table.data["kept"].values()) == 0:
        click.echo("no frontal image with findings: nothing to train or test on", err=True)
        ctx.exit(1)
