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
from llavarad.cli import _errors

__all__ = ["cli", "main"]

#: Modules under llavarad.cli, each with ``register(group: click.Group) -> None``.
_PARTS = ("model", "data", "phantom", "train", "label", "evaluate", "chexprompt", "analysis", "explain", "serve",
          "own_data", "pacs", "compare")


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
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)
    _errors.STATE.verbose = verbose
    for handler in logging.getLogger().handlers:  # control characters (NUL, ESC) never reach a log line
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(_errors.SafeFormatter(fmt))


for _name in _PARTS:
    importlib.import_module(f"llavarad.cli.{_name}").register(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); return the exit code (for tests).

    Every exception ends here as one line on stderr and a non-zero code (see :mod:`llavarad.cli._errors`);
    ``-v`` adds the traceback.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    _errors.STATE.verbose = 0
    try:
        with cli.make_context("llavarad", args) as ctx:
            rv = cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BaseException as exc:  # the one place that turns any failure into a message
        return _errors.report(exc)
    # commands signal failure with ctx.exit(1) (caught above) or by returning an int
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
