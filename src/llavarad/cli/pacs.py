"""PACS verb: ``pacs`` (DICOMweb loop: new chest radiographs in, draft DICOM SRs out)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click


def _parse_date(ctx: click.Context, param: click.Parameter, text: str | None) -> _dt.date | None:
    if text is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return _dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise click.BadParameter(f"{text!r} is not a date; use YYYY-MM-DD (e.g. 2024-05-31)")


@click.command("pacs")
@click.option("--dicomweb", "url", required=True, help="DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web.")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="llavarad model folder.")
@click.option("--since", callback=_parse_date, default=None, help="Only studies on or after this Study Date (YYYY-MM-DD).")
@click.option("--once", is_flag=True, help="One pass, then exit (non-zero if any study failed); default: poll forever.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("llavarad_pacs_state.jsonl"), show_default=True,
              help="Local record of finished and failed studies (JSONL; resumed).")
@click.option("--auth", type=click.Choice(["none", "basic", "bearer"]), default="none", show_default=True,
              help="PACS login: basic (user:password) or bearer (token).")
@click.option("--auth-env", default=None, help="Environment variable holding the credential.")
@click.option("--auth-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the credential.")
@click.option("--modality", "modalities", multiple=True, default=("CR", "DX"), show_default=True,
              help="Modalities to draft for (repeat the option).")
@click.option("--poll", "poll_seconds", default=60.0, show_default=True, help="Seconds between passes.")
@click.option("--max-backoff", "max_backoff", default=900.0, show_default=True,
              help="Longest wait (s) while the PACS is unreachable (the wait doubles up to this).")
@click.option("--max-attempts", default=3, show_default=True, help="Tries per failing study before it is left alone.")
@click.option("--page-size", type=int, default=None,
              help="Page QIDO-RS study searches with limit/offset (default: one query; some PACS ignore offset).")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16, float16.")
@click.pass_context
def pacs_cmd(ctx: click.Context, url: str, model_dir: Path, since: _dt.date | None, once: bool, state_path: Path,
             auth: str, auth_env: str | None, auth_file: Path | None, modalities: tuple[str, ...], poll_seconds: float,
             max_backoff: float, max_attempts: int, page_size: int | None, max_new_tokens: int, device: str,
             dtype: str) -> None:
    """Draft reports for new chest radiographs in a PACS and store them back as DICOM SRs.

    QIDO-RS finds CR/DX studies without an SR from this model, WADO-RS fetches the frontal image,
    the model drafts Findings, STOW-RS stores a preliminary, unverified Comprehensive SR in the study.
    Safe to stop or kill at any time: a rerun skips what is done and never stores a second SR.

    \b
    Examples:
      export PACS_LOGIN=user:password
      llavarad pacs --dicomweb http://127.0.0.1:8042/dicom-web --model models/llava-rad \\
          --auth basic --auth-env PACS_LOGIN --since 2024-06-01 --once
      llavarad pacs --dicomweb https://pacs/dicom-web --model models/llava-rad --auth bearer --auth-file token.txt
    """
    from llavarad.cli._report_output import model_info
    from llavarad.generate import GenerationSettings, ReportGenerator
    from llavarad.model.build import load_model
    from llavarad.pacs import PacsConfig, run_loop

    config = PacsConfig(dicomweb_url=url, state_path=state_path, since=since, modalities=modalities, auth=auth,
                        auth_env=auth_env, auth_file=auth_file, max_attempts=max_attempts, poll_seconds=poll_seconds,
                        max_backoff_seconds=max_backoff, page_size=page_size)
    config.client()  # credentials and URL checked before the model is loaded
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1)
    bundle = load_model(model_dir, device=device, dtype=dtype)
    model = model_info(model_dir, settings, bundle)
    click.echo(f"model {model.identity}; PACS {url}; state {state_path}", err=True)

    def show(summary) -> None:
        click.echo(f"{summary.found} studies found: {summary.stored} drafted and stored, {summary.answered} already "
                   f"answered in the PACS, {summary.skipped_done} done before, {summary.no_frontal} without a frontal "
                   f"image, {summary.failed} failed, {summary.gave_up} given up; {summary.seconds:.1f} s")
        for err in summary.errors[:20]:
            click.echo(f"  failed study {err['study']}: {err['error']}", err=True)

    try:
        last = run_loop(config, ReportGenerator(bundle, settings), model, once=once, on_pass=show)
    except KeyboardInterrupt:
        click.echo("stopped; rerun to continue where it left off", err=True)
        ctx.exit(130)
    if once and last.failed:
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add the PACS verb to the top-level group."""
    group.add_command(pacs_cmd)
