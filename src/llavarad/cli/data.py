"""CLI verbs of data preparation: ``llavarad data section|templates|import|structure|translate|
findings|build|counts``. Library work lives in :mod:`llavarad.data`; this module prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_DATASETS = ["mimic-cxr", "chexpert", "brax", "candid-ptx", "vindr-cxr", "object-cxr", "padchest", "openi"]
_BACKENDS = ["openai", "azure", "openai_compatible", "transformers"]


def register(group: click.Group) -> None:
    """Add this area's commands to the top-level group."""
    group.add_command(data_group)


@click.group("data")
def data_group() -> None:
    """Data preparation: sectioning, label templates, importers, LLM structuring, builders.

    \b
    Examples (one command per step, see docs/data.md):
      llavarad data import mimic-cxr /data/mimic-cxr-jpg/2.0.0 --reports /data/mimic-cxr-reports/files --out mimic.jsonl
      llavarad data structure mimic.jsonl --out mimic_structured.jsonl --base-url http://127.0.0.1:8000/v1 --model m
      llavarad data build mimic mimic.jsonl --llm-outputs mimic_structured.jsonl --out-dir sets/
      llavarad data build cxr697k mimic.jsonl chexpert.jsonl ... --llm-outputs mimic_structured.jsonl --out cxr697k.jsonl
    """


def _render(table: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=table.title, show_lines=False)
    for col in table.columns:
        t.add_column(col, justify="left" if col == table.columns[0] else "right")
    for row in table.rows:
        t.add_row(*row)
    console = Console(width=160)
    console.print(t)
    for note in table.notes:
        console.print(f"  {note}", highlight=False)


def _progress(description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=not sys.stderr.isatty())


@data_group.command("section")
@click.argument("report", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--evaluate", "evaluate_csv", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Measure agreement on a CSV with indication/comparison/findings/impression columns (Open-I).")
@click.option("--merged-to", type=click.Choice(["impression", "findings", "both"]), default="impression",
              show_default=True, help="Where a merged FINDINGS AND IMPRESSION section goes.")
@click.option("--strip-numbering", is_flag=True, help="Remove list markers (1. 2) -) from section text.")
@click.option("--seed", default=0, show_default=True, help="Seed of the header variation in --evaluate.")
def section_cmd(report: Path | None, evaluate_csv: Path | None, merged_to: str, strip_numbering: bool, seed: int) -> None:
    """Split a free-text report into sections (JSON), or measure agreement with --evaluate.

    \b
    Examples:
      llavarad data section s50414267.txt
      llavarad data section --evaluate ../shared/data/reports/openi_dev/openi_reports_dev.csv
    """
    from llavarad.data.sections import SectionerConfig, split_sections

    cfg = SectionerConfig(merged_to=merged_to, strip_numbering=strip_numbering)  # type: ignore[arg-type]
    if evaluate_csv is not None:
        from llavarad.data._sectioning_eval import read_separated_reports, section_agreement

        rows = read_separated_reports(evaluate_csv)
        result = section_agreement(rows, cfg, seed=seed)
        click.echo(f"{len(rows):,} reports re-joined with varied headers and re-split (exact match after whitespace "
                   "normalisation):")
        for name, r in result.items():
            click.echo(f"  {name:<11} {r['present']:.2%} of {int(r['n_present']):,} with the section   "
                       f"{r['all']:.2%} of all")
        return
    if report is None:
        text = click.get_text_stream("stdin").read(16 << 20)
    else:
        from llavarad.io.text import read_text

        text = read_text(report, what="report")  # bounded: a FIFO, /dev/zero or a huge file is refused by name
    s = split_sections(text, cfg)
    click.echo(json.dumps({**s.as_dict(), "other": s.other, "merged": s.merged}, indent=2, ensure_ascii=False))


@data_group.command("templates")
@click.option("--labels", "labels_json", required=True,
              help='Labels as JSON, e.g. \'{"Cardiomegaly": 1, "Edema": -1, "Support Devices": 0}\'.')
@click.option("--key", default="example", show_default=True, help="Record id (with --seed it fixes the choices).")
@click.option("--seed", default=0, show_default=True)
def templates_cmd(labels_json: str, key: str, seed: int) -> None:
    """Write a synthetic report from labels with the Supplementary Table 5 templates.

    \b
    Example:
      llavarad data templates --labels '{"No Finding": 1, "Support Devices": 0}' --seed 3
    """
    from llavarad.data.templates import synthesize_report

    try:
        labels = json.loads(labels_json)
        if not isinstance(labels, dict):
            raise ValueError("expected a JSON object {label: 1, 0, -1 or null}")
        result = synthesize_report(labels, key, seed)
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"--labels: {exc}") from exc
    click.echo(result.text)


@data_group.command("import")
@click.argument("dataset", type=click.Choice(_DATASETS))
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output manifest (JSONL).")
@click.option("--reports", type=click.Path(exists=True, path_type=Path),
              help="mimic-cxr: the 'files' folder of mimic-cxr-reports; openi: ecgen-radiology/ or NLMCXR_reports.tgz.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="candid-ptx / openi: image folder if not in the default place.")
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="openi: DICOM metadata CSV with imageid and 'View Position' (views).")
@click.option("--read-dicom-headers", is_flag=True, help="candid-ptx: read patient ids and views from the DICOMs.")
@click.option("--min-votes", type=click.IntRange(min=1), default=1, show_default=True,
              help="vindr-cxr: radiologists needed for a positive label.")
@click.option("--check-images", is_flag=True,
              help="Check that every image file exists; records without one are left out and listed as problems.")
@click.option("--max-problems", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit non-zero when more rows than this could not be read (they are listed in OUT.problems.jsonl).")
@click.pass_context
def import_cmd(ctx: click.Context, dataset: str, root: Path, out: Path, reports: Path | None, images: Path | None,
               metadata: Path | None, read_dicom_headers: bool, min_votes: int, check_images: bool,
               max_problems: int) -> None:
    """Import a public dataset from its official release layout into a manifest.

    \b
    Examples:
      llavarad data import chexpert /data/CheXpert-v1.0-small --out chexpert.jsonl
      llavarad data import mimic-cxr /data/mimic-cxr-jpg/2.0.0 --reports /data/mimic-cxr-reports/files --out mimic.jsonl
      llavarad data import openi /data/openi --metadata nlmcxr_dicom_metadata.csv.gz --out openi.jsonl
    """
    from llavarad.data.importers import DatasetLayoutError, DuplicateIds, ImportProblem, import_dataset
    from llavarad.io.manifest import JsonlWriter, write_manifest
    from llavarad.io.outputs import check_output

    check_output(out, [root, reports, images, metadata])

    options: dict[str, Any] = {}
    applies = {"--reports": ("mimic-cxr", "openi"), "--images": ("candid-ptx", "openi"), "--metadata": ("openi",),
               "--read-dicom-headers": ("candid-ptx",)}
    for flag, given in (("--reports", reports), ("--images", images), ("--metadata", metadata),
                        ("--read-dicom-headers", read_dicom_headers or None)):
        if given is not None and dataset not in applies[flag]:
            raise click.ClickException(f"{flag} applies to {' and '.join(applies[flag])}, not {dataset}")
    if reports is not None:
        options["reports_dir" if dataset == "mimic-cxr" else "reports"] = reports
    if images is not None:
        options["images_dir"] = images
    if metadata is not None:
        options["metadata_csv"] = metadata
    if read_dicom_headers:
        options["read_dicom_headers"] = True
    if dataset == "vindr-cxr":
        options["min_votes"] = min_votes
    problems_path = out.with_name(out.name.replace(".jsonl", "") + ".problems.jsonl")
    n_problems = 0
    duplicates = DuplicateIds()
    try:
        with JsonlWriter(problems_path, key="where", resume=False, fsync=False) as problems, \
                _progress(f"import {dataset}") as bar:
            task = bar.add_task("records", total=None)

            def records() -> Any:
                nonlocal n_problems
                for item in import_dataset(dataset, root, duplicates=duplicates, **options):
                    if isinstance(item, ImportProblem):
                        n_problems += 1
                        problems.write(item.to_dict())
                        continue
                    bar.advance(task)
                    if check_images and not _image_exists(item.image):
                        n_problems += 1
                        problems.write({"where": item.image, "id": item.id,
                                        "error": f"{item.image}: image file not found; record left out"})
                        continue
                    yield item

            n = write_manifest(records(), out)
        n -= duplicates.remove_from(out)  # repeats that disagree: no record at all (each is listed as a problem)
    except (DatasetLayoutError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{dataset}: wrote {n:,} records to {out}; {n_problems:,} problem row(s)"
               + (f" listed in {problems_path}" if n_problems else ""))
    if n_problems > max_problems:
        ctx.exit(1)


def _image_exists(image: str) -> bool:
    """A file path, or ``archive.zip::member`` for images read from a release's zip."""
    if "::" in image:
        import zipfile

        archive, member = image.split("::", 1)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.getinfo(member)
            return True
        except (OSError, KeyError, zipfile.BadZipFile):
            return False
    return Path(image).is_file()


def _llm_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Output JSONL (appended; rerunning resumes; failures go to OUT.errors.jsonl)."),
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="YAML/JSON LLMConfig (backend, model, base_url, concurrency, requests_per_minute, ...)."),
        click.option("--backend", type=click.Choice(_BACKENDS), default=None, help="[config default: openai_compatible]"),
        click.option("--model", default=None, help="Model name, e.g. gpt-4o, llama3.1:8b."),
        click.option("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)."),
        click.option("--model-path", default=None, help="transformers backend: local model folder."),
        click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Requests in flight [8]."),
        click.option("--rpm", type=click.FloatRange(min=0, min_open=True), default=None, help="Requests per minute limit."),
        click.option("--tpm", type=click.FloatRange(min=0, min_open=True), default=None, help="Tokens per minute limit."),
        click.option("--cache", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="SQLite reply cache [OUT's folder/llm_cache.sqlite]."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Only this many new reports (cost check)."),
        click.option("--min-support", type=click.FloatRange(0, 1), default=0.7, show_default=True,
                     help="Share of a returned section's words that must occur in the source report."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Any LLMConfig field."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _run_llm(ctx: click.Context, task: str, kw: dict[str, Any]) -> None:
    from llavarad.config import ConfigError, load_config
    from llavarad.data.structuring import run_llm_step
    from llavarad.data.builders import iter_manifest
    from llavarad.io.manifest import ManifestError
    from llavarad.llm import LLMClient, LLMConfig

    overrides = list(kw["overrides"])
    for opt, field_name in (("backend", "backend"), ("model", "model"), ("base_url", "base_url"),
                            ("model_path", "model_path"), ("concurrency", "concurrency"),
                            ("rpm", "requests_per_minute"), ("tpm", "tokens_per_minute")):
        if kw.get(opt) is not None:
            value = kw[opt]
            # JSON-quote strings so values like "yes" or "1e3" stay strings when parsed as YAML
            overrides.append(f"{field_name}={json.dumps(value) if isinstance(value, str) else value}")
    out: Path = kw["out"]
    from llavarad.io.outputs import check_output

    check_output(out, [kw.get("manifest")])
    overrides.append(f"cache_path={json.dumps(str(kw['cache'] or out.parent / 'llm_cache.sqlite'))}")
    try:
        cfg = load_config(LLMConfig, kw["config_path"], overrides)
        client = LLMClient(cfg)
    except (ConfigError, ValueError) as exc:  # e.g. a missing base URL or API key: say which, no traceback
        raise click.ClickException(str(exc)) from exc
    with client, _progress(task) as bar:
        t = bar.add_task("reports", total=None)
        try:
            summary = run_llm_step(iter_manifest(kw["manifest"]), out, client, task,  # type: ignore[arg-type]
                                   min_support=kw["min_support"], limit=kw["limit"],
                                   on_progress=lambda n: bar.advance(t, n))
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from exc
    s = summary.stats
    click.echo(f"{task}: {summary.ok:,} ok ({summary.cached:,} from cache), {summary.failed:,} failed, "
               f"{summary.unreadable:,} unreadable, {summary.already_done:,} already done, "
               f"{summary.not_applicable:,} not applicable -> {out}")
    click.echo(f"  requests sent {s.get('requests_sent', 0):,}, tokens {s.get('prompt_tokens', 0):,} prompt + "
               f"{s.get('completion_tokens', 0):,} completion, estimated cost {s.get('estimated_cost', 0.0):.4f}")
    if summary.failed or summary.unreadable:
        click.echo(f"  failures are listed in {out.with_name(out.name.replace('.jsonl', '') + '.errors.jsonl')}; "
                   "rerun the same command to retry them", err=True)
        ctx.exit(1)


@data_group.command("structure")
@_llm_options
@click.pass_context
def structure_cmd(ctx: click.Context, **kw: Any) -> None:
    """Structure reports with an LLM (Supplementary Table 6 prompt): one request per study.

    \b
    Example:
      llavarad data structure mimic.jsonl --out mimic_structured.jsonl \\
          --base-url http://127.0.0.1:8000/v1 --model Qwen2.5-7B-Instruct --concurrency 16
    """
    _run_llm(ctx, "structure", kw)


@data_group.command("translate")
@_llm_options
@click.pass_context
def translate_cmd(ctx: click.Context, **kw: Any) -> None:
    """Translate PadChest's Spanish reports into English findings with an LLM.

    \b
    Example:
      llavarad data translate padchest.jsonl --out padchest_en.jsonl --backend openai --model gpt-4o
    """
    _run_llm(ctx, "translate", kw)


@data_group.command("findings")
@_llm_options
@click.pass_context
def findings_cmd(ctx: click.Context, **kw: Any) -> None:
    """Extract findings with an LLM for reports where the rules found none.

    \b
    Example:
      llavarad data findings mimic.jsonl --out mimic_findings.jsonl --base-url http://127.0.0.1:11434/v1 --model llama3.1:8b
    """
    _run_llm(ctx, "findings", kw)


@data_group.group("build")
def build_group() -> None:
    """Build training / evaluation sets from imported manifests (counts as in the paper's tables).

    \b
    Example:
      llavarad data build mimic mimic.jsonl --llm-outputs mimic_structured.jsonl --out-dir sets/
    """


def _write_counts(table: Any, path: Path) -> None:
    path.write_text(json.dumps({"title": table.title, "columns": table.columns, "rows": table.rows,
                                "notes": table.notes, "data": table.data}, indent=2, ensure_ascii=False))


@build_group.command("cxr697k")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--llm-outputs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Outputs of data structure / findings / translate (repeatable).")
@click.option("--seed", default=0, show_default=True, help="Seed of the label templates.")
@click.option("--splits", default="train", show_default=True,
              help="Official splits to keep, comma-separated (the paper: train only).")
def build_cxr697k_cmd(manifests: tuple[Path, ...], out: Path, llm_outputs: tuple[Path, ...], seed: int,
                      splits: str) -> None:
    """Stage-1 pre-training pairs from all seven sources (train splits only); Supplementary Table 4.

    \b
    Example:
      llavarad data build cxr697k mimic.jsonl padchest.jsonl chexpert.jsonl brax.jsonl candid.jsonl \\
          vindr.jsonl objectcxr.jsonl --llm-outputs mimic_structured.jsonl --llm-outputs padchest_en.jsonl \\
          --out cxr697k.jsonl
    """
    from llavarad.data.builders import build_cxr697k
    from llavarad.io.outputs import check_output

    check_output(out, [*manifests, *llm_outputs])
    from llavarad.io.manifest import ManifestError

    with _progress("cxr697k") as bar:
        t = bar.add_task("records", total=None)
        try:
            keep = tuple(x.strip() for x in splits.split(",") if x.strip())
            bad = [x for x in keep if x not in ("train", "validate", "test")]
            if bad or not keep:
                raise click.ClickException(f"--splits {splits!r}: use train, validate and/or test")
            table = build_cxr697k(manifests, out, llm_outputs=llm_outputs, seed=seed, splits=keep,
                                  on_record=lambda: bar.advance(t))
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from exc
    _render(table)
    _write_counts(table, out.with_name(out.name.replace(".jsonl", "") + ".counts.json"))
    click.echo(f"wrote {table.data['total_pairs']:,} pairs to {out}")


@build_group.command("mimic")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--llm-outputs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Output of 'llavarad data structure' (repeatable).")
def build_mimic_cmd(manifest: Path, out_dir: Path, llm_outputs: tuple[Path, ...]) -> None:
    """MIMIC-CXR stage 2/3 sets (AP/PA, findings; rule-based + LLM-structured); Supplementary Table 3.

    \b
    Example:
      llavarad data build mimic mimic.jsonl --llm-outputs mimic_structured.jsonl --out-dir sets/
    """
    from llavarad.data.builders import build_mimic
    from llavarad.io.manifest import ManifestError
    from llavarad.io.outputs import check_output

    check_output(out_dir, [manifest, *llm_outputs], kind="dir", resumable=True, flag="--out-dir")

    with _progress("mimic") as bar:
        t = bar.add_task("records", total=None)
        try:
            table = build_mimic(manifest, out_dir, llm_outputs=llm_outputs, on_record=lambda: bar.advance(t))
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from exc
    _render(table)
    _write_counts(table, out_dir / "mimic.counts.json")
    click.echo(f"wrote {out_dir}/mimic_train.jsonl, mimic_validate.jsonl, mimic_test.jsonl")


@build_group.command("openi")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def build_openi_cmd(manifest: Path, out: Path) -> None:
    """Open-I evaluation set: frontal images whose report has findings.

    \b
    Example:
      llavarad data build openi openi.jsonl --out openi_test.jsonl
    """
    from llavarad.data.builders import build_openi
    from llavarad.io.manifest import ManifestError
    from llavarad.io.outputs import check_output

    check_output(out, [manifest])

    try:
        table = build_openi(manifest, out)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    _render(table)
    click.echo(f"wrote {out}")


@data_group.command("counts")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def counts_cmd(manifest: Path) -> None:
    """Count a manifest's records by dataset, split and text source (validates every line).

    \b
    Example:
      llavarad data counts cxr697k.jsonl
    """
    from llavarad.data.builders import dataset_counts
    from llavarad.io.manifest import ManifestError

    try:
        table = dataset_counts(manifest)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    _render(table)
