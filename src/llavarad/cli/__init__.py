"""The one entry point: ``llavarad <verb> ...``.

Each area of the system registers its verbs from a module in :mod:`llavarad.cli`; those
modules import heavy libraries (torch, transformers) inside the commands, so ``llavarad --help``
stays fast. Verbs call the library's stage functions and own all printing and progress bars.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from llavarad import __version__

__all__ = ["cli", "main"]

#: Modules under llavarad.cli, each with ``register(group: click.Group) -> None``.
_PARTS = ("model", "data", "phantom", "train", "label", "evaluate", "chexprompt", "analysis", "explain")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="llavarad")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """llavarad: chest X-ray report generation (LLaVA-Rad) you can run, train and evaluate locally.

    \b
    Example:
      llavarad demo --out demo_run          # the whole system on synthetic phantoms, CPU
      llavarad generate cxr.png --model DIR --indication "Dyspnea."
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _name in _PARTS:
    importlib.import_module(f"llavarad.cli.{_name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); return the exit code (for tests)."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="llavarad", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    # standalone_mode=False returns ctx.exit()'s code; commands signal failure with ctx.exit(1)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
