"""The ``cmtyflow`` command line (SPEC 6): a click group, one small module per command
family, and one top-level error handler.

Rules:
- Each command function returns its exit code; ``main`` exits with it.
- ``UserError`` -> ``error: <message>`` on stderr, exit 1. A usage error -> click's
  usage message, exit 2. Ctrl-C -> exit 130.
- The machine failing the state (a full disk, an I/O error, a file that is not a
  database, a database server gone or refusing: ``environment_error``) -> ``error:``
  with what failed and what to do, exit 1: not a bug. What was committed before stays,
  and running the command again is safe (inputs and messages are idempotent).
- Anything else is a bug in cmtyflow: the traceback goes to a log file in the temp
  folder and the user is told where, exit 3.
- Command modules are listed in ``COMMAND_MODULES``; each adds its command to ``cli``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import platform
import re
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
    """The traceback in a file of the user's own (0600): the command line and the
    errors are written with every URL's password masked (a --state URL holds one)."""
    from ..adapters.base import mask_url as mask_credentials
    from ..store.pg_connect import mask_url

    def masked(text: str) -> str:
        return mask_credentials(re.sub(r"\S+://\S+", lambda m: mask_url(m.group(0)), text))

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(tempfile.gettempdir()) / f"cmtyflow-crash-{stamp}.log"
    details = [
        f"cmtyflow {__version__} on Python {platform.python_version()} ({platform.platform()})",
        f"command: cmtyflow {masked(' '.join(argv))}",
        "",
        masked("".join(traceback.format_exception(exc))),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(details))
    return path


# SQLite's primary result codes that say the machine, not the statement, failed:
# PERM, BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
_SQLITE_ENVIRONMENT = {3, 5, 6, 7, 8, 10, 11, 13, 14, 26}
_OS_ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def environment_error(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` is the machine failing the state or a file (not
    a fault of cmtyflow's own); None otherwise."""
    import sqlite3

    again = "What was saved before stays; fix that and run the command again."
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_ENVIRONMENT:
            return f"the SQLite state failed: {exc} ({getattr(exc, 'sqlite_errorname', code)}). {again}"
        return None
    if isinstance(exc, OSError) and exc.errno in _OS_ENVIRONMENT:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}. {again}"
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the PostgreSQL state failed: {first}. {again}"
    return None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _tolerant_output() -> None:
    """Text the terminal's encoding cannot show (a ✅ in a template, on a GBK console or
    an ASCII pipe) is written as a replacement, not a crash. UTF-8 output is unchanged."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
        if encoding not in ("utf-8", "utf8") and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a stream that cannot change
                stream.reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmtyflow`` script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _tolerant_output()
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
        told = environment_error(exc)
        if told is not None:
            click.echo(f"error: {told}", err=True)
            return EXIT_ERROR
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


COMMAND_MODULES = ["validate", "schema", "dryrun", "preview", "golden", "adapters", "run", "state", "inspect", "status", "report", "plan", "statecmd", "new", "worker"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
