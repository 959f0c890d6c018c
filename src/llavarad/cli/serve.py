"""``llavarad serve``: the private report drafting service (HTTP API, OpenAI-compatible, web page)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="llavarad model folder.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --api-key-file.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-batch-size", default=8, show_default=True, type=int, help="Largest dynamic batch.")
@click.option("--max-wait-ms", default=10.0, show_default=True, type=float,
              help="How long the first queued request waits for others to join its batch.")
@click.option("--max-queue", default=64, show_default=True, type=int, help="Waiting requests before 503.")
@click.option("--timeout", "request_timeout_s", default=120.0, show_default=True, type=float,
              help="Per-request deadline in seconds (504 past it).")
@click.option("--upload-timeout", "upload_timeout_s", default=30.0, show_default=True, type=float,
              help="Seconds a request body may take to arrive (408 past it).")
@click.option("--api-key-file", type=click.Path(path_type=Path), default=None,
              help="Bearer keys, one per line; required to bind a non-loopback address.")
@click.option("--max-upload-mb", default=64.0, show_default=True, type=float, help="Upload cap, enforced while reading.")
@click.option("--max-pixels", default=50_000_000, show_default=True, type=int, help="Pixel cap (decompression bombs).")
@click.option("--max-indication-tokens", default=256, show_default=True, type=int)
@click.option("--max-new-tokens", default=256, show_default=True, type=int, help="Longest draft in tokens.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow this web origin (CORS is off by default).")
@click.option("--model-id", default=None, help="Name in /v1/models and answers (default: the folder's name).")
@click.option("--torch-threads", type=int, default=None,
              help="Intra-op threads of the model's thread (default: torch's, every core); on a CPU that also "
                   "decodes images, fewer avoid oversubscription.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def serve_cmd(model_dir: Path, host: str, port: int, max_batch_size: int, max_wait_ms: float, max_queue: int,
              request_timeout_s: float, upload_timeout_s: float, api_key_file: Path | None, max_upload_mb: float, max_pixels: int,
              max_indication_tokens: int, max_new_tokens: int, cors_origins: tuple[str, ...], model_id: str | None,
              torch_threads: int | None, device: str, dtype: str) -> None:
    """Serve report drafts over HTTP on this machine: JSON API, OpenAI-compatible chat, web page.

    \b
    Example:
      llavarad serve --model models/llava-rad            # http://127.0.0.1:8000/ (page), /docs (API)
      curl -F image=@cxr.dcm -F indication="Cough." http://127.0.0.1:8000/v1/reports
    """
    from llavarad.serve.config import ServeConfig, ServeConfigError

    try:
        config = ServeConfig(host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, request_timeout_s=request_timeout_s, upload_timeout_s=upload_timeout_s,
                             api_key_file=str(api_key_file) if api_key_file else None,
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                             max_indication_tokens=max_indication_tokens, max_new_tokens=max_new_tokens,
                             cors_origins=cors_origins, model_id=model_id, torch_threads=torch_threads)
    except ServeConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        from llavarad.serve.app import run_server
    except ImportError as exc:
        raise click.ClickException(f"the server needs the serve extra ({exc.name} is missing): "
                                   "pip install 'llavarad[serve]'") from exc
    from llavarad.generate import ReportGenerator
    from llavarad.model.build import ModelFolderError

    try:
        generator = ReportGenerator.from_pretrained(model_dir, device=device, dtype=dtype)
    except (ModelFolderError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    name = model_id or generator.bundle.meta.get("name") or model_dir.resolve().name
    click.echo(f"llavarad serve: model {name} on http://{host}:{port}/ (API reference at /docs); Ctrl-C stops",
               err=True)
    run_server(config, generator, model_id=str(name))
    click.echo("llavarad serve: stopped", err=True)


def register(group: click.Group) -> None:
    """Add the serve verb."""
    group.add_command(serve_cmd)
