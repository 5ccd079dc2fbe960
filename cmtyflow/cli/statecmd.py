"""``cmtyflow state migrate FROM TO``: move the state from an SQLite file to
PostgreSQL (SPEC 5.1; docs/scale-out.md).

Rules:
- FROM is an SQLite state file, TO a ``postgresql://`` URL whose schema holds no
  state yet; everything is copied in one transaction (``store.pg_copy``), or nothing.
- A runner holding FROM's lock is refused (stop it first); the lock is held for the
  whole copy, so none starts meanwhile.
- The rows copied are printed per table; passwords never are.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..runtime.runner import StateLock
from ..store.open import is_postgres
from . import EXIT_OK, cli


@cli.group("state")
def state() -> None:
    """The store itself: move it from SQLite to PostgreSQL."""


def _lock(source: str) -> StateLock:
    lock = StateLock(source)
    try:
        lock.acquire()
    except UserError:
        try:
            holder = lock.path.read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        raise UserError(
            f"a runner is using {source}" + (f" (pid {holder})" if holder else "")
            + "; stop it before migrating, so that nothing changes during the copy"
        ) from None
    return lock


@state.command("migrate")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
def migrate(source: str, target: str) -> int:
    """Copy the SQLite state FROM (a path) into the PostgreSQL store TO (a
    postgresql:// URL; ?schema=NAME picks the schema, default cmtyflow).

    Everything is copied in one transaction: roster, runs and states, pending timers
    with their due times, schedule positions, the outbox with statuses and attempts,
    every event seen, deliveries and the audit log. TO must hold no state yet. Stop
    the runner first; afterwards start it with --state TO (or CMTYFLOW_STATE=TO).
    """
    if is_postgres(source):
        raise UserError(f"FROM must be an SQLite state file, not a URL: {source.split('@')[-1]}")
    if not is_postgres(target):
        raise UserError(f"TO must be a postgresql:// URL, not '{target}'")
    if not Path(source).is_file():
        raise UserError(f"no state at {source} (FROM must be an existing SQLite state file)")
    from ..store.pg_copy import copy_sqlite_into
    from ..store.postgres import PostgresStore
    from ..store.sqlite import SqliteStore

    lock = _lock(source)
    try:
        with SqliteStore(source) as src, PostgresStore(target) as dst:
            counts = copy_sqlite_into(src, dst)
            where = f"{dst.url} (schema {dst.schema})"
    finally:
        lock.release()
    width = max(len(t) for t in counts)
    for table, n in counts.items():
        click.echo(f"  {table:<{width}}  {n:>10,}")
    click.echo(f"copied {sum(counts.values()):,} rows from {source} into {where}")
    click.echo("next: start the runner with --state set to that URL (or CMTYFLOW_STATE)")
    return EXIT_OK
