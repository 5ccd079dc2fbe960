"""The ``cmtyflow`` command line (SPEC 6): a click group, one small module per command
family, and one top-level error handler.

Rules:
- Each command function returns its exit code; ``main`` exits with it.
- ``UserError`` -> ``error: <message>`` on stderr, exit 1. A usage error -> click's
  usage message, exit 2. Ctrl-C -> exit 130. Anything else is a bug in cmtyflow: the
  traceback goes to a log file in the temp folder and the user is told where, exit 3.
- Command modules are listed in ``COMMAND_MODULES``; each adds its command to ``cli``.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import click

from .. import __version__
from ..errors import UserError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmtyflow")
def cli() -> None:
    """Community campaigns as YAML playbooks: validate, dry-run, run."""


def _write_crash_log(exc: BaseException, argv: Sequence[str]) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(tempfile.gettempdir()) / f"cmtyflow-crash-{stamp}.log"
    details = [
        f"cmtyflow {__version__} on Python {platform.python_version()} ({platform.platform()})",
        f"command: cmtyflow {' '.join(argv)}",
        "",
        "".join(traceback.format_exception(exc)),
    ]
    path.write_text("\n".join(details), encoding="utf-8")
    return path


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmtyflow`` script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="cmtyflow", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (cmtyflow validate ... | head); nothing left to say.
        _silence_stdout()
        return EXIT_ERROR
    except click.ClickException as exc:
        # UsageError and BadParameter carry exit code 2, other click errors 1.
        exc.show()
        return exc.exit_code
    except Exception as exc:
        try:
            log = _write_crash_log(exc, args)
        except OSError:
            traceback.print_exc()
            click.echo("cmtyflow hit a bug (the crash log could not be written)", err=True)
            return EXIT_BUG
        click.echo(f"cmtyflow hit a bug; details were written to {log}", err=True)
        return EXIT_BUG
    if isinstance(result, int):
        return result
    return EXIT_OK


COMMAND_MODULES = ["validate", "schema", "dryrun", "preview", "golden", "adapters", "run", "state", "inspect", "plan", "statecmd", "new", "worker"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
