"""``cmtyflow state migrate FROM TO``: move the state from an SQLite file to
PostgreSQL (SPEC 5.1; docs/scale-out.md). ``cmtyflow state prune``: forget what is
over and old (docs/semantics.md, "Keeping the state small").

Rules:
- FROM is an SQLite state file, TO a ``postgresql://`` URL whose schema holds no
  state yet; everything is copied in one transaction (``store.pg_copy``), or nothing.
- A runner holding FROM's lock is refused (stop it first); the lock is held for the
  whole copy, so none starts meanwhile.
- The rows copied are printed per table; passwords never are.
- ``prune`` needs ``--before`` (an age such as 90d, or a date); a cutoff less than a
  day ago is refused, so that today's report and the daily cap stay whole.
  ``--dry-run`` counts without changing anything. It may run beside a runner (one
  transaction); ``--vacuum`` (SQLite) then gives the space back to the disk, which
  needs the runner stopped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from ..runtime.runner import StateLock
from ..spec.duration import FIRST_YEAR, LAST_YEAR, DurationError, localize, parse_duration
from ..store.open import is_postgres, shown
from ..store.sqlbase import SqlStore
from ..store.sqlite import SqliteStore
from . import EXIT_OK, cli
from .state import (
    PROGRESS_EVERY,
    _zone,
    format_option,
    state_option,
    store_at,
    terminated_as_interrupted,
)


@cli.group("state")
def state() -> None:
    """The store itself: move it from SQLite to PostgreSQL, prune what is old."""


# The JSON names of what ``prune`` counts (the text output says them as the store does).
_COUNT_KEYS = {
    "deliveries": "deliveries", "messages sent or cancelled": "messages", "finished runs": "runs",
    "events taken (data dropped, ids kept)": "events", "audit entries": "audit", "daily cap counts": "day_counts",
}


def _lock(source: str, why: str = "before migrating, so that nothing changes during the copy") -> StateLock:
    lock = StateLock(source)
    try:
        lock.acquire()
    except UserError:
        try:
            holder = lock.path.read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        raise UserError(
            f"a runner is using {source}" + (f" (pid {holder})" if holder else "") + f"; stop it {why}"
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


def cutoff(text: str, now: datetime, zone: Any = None) -> datetime:
    """``--before``: an age (90d, 12w: that long before ``now``) or an ISO 8601 date or
    datetime (without an offset: in ``zone``, the playbooks' timezone; else in TZ,
    else UTC)."""
    try:
        return now - timedelta(seconds=parse_duration(text).approx_seconds())
    except DurationError as exc:
        if text.strip()[:1].isdigit() and text.strip()[-1:] in "smhdw":  # an age, too long
            raise UserError(f"--before: {exc}") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--before '{text}' is neither an age (e.g. 90d, 12w) nor an ISO 8601 date") from None
    if not FIRST_YEAR <= when.year <= LAST_YEAR:
        raise UserError(f"--before '{text}' is out of range: give a date between {FIRST_YEAR} and now")
    if when.tzinfo is None:
        when = localize(when, zone if zone is not None else _zone(None))
    return when


def _playbooks_zone(state: str | None) -> Any:
    """The timezone of the playbooks run on the state, when they share one (a date
    without an offset means midnight there, as everywhere else); None otherwise."""
    from .inspect import shown_zone

    try:
        store, _ = store_at(state, must_exist=True)
    except UserError:
        return None  # said by the command itself
    try:
        return shown_zone(store)
    finally:
        store.close()


@state.command("prune")
@click.option("--before", "before_text", required=True, metavar="AGE|DATE",
              help="forget what is over and older than this: an age (90d, 12w) or a date (2026-09-01)")
@click.option("--dry-run", is_flag=True, help="count what would go, change nothing")
@click.option("--vacuum", is_flag=True, help="SQLite: give the space freed back to the disk (stop the runner first)")
@state_option
@format_option
def prune(before_text: str, dry_run: bool, vacuum: bool, state: str | None, fmt: str) -> int:
    """Forget what is over and old, so that a state used every day stays small.

    Removed, when older than --before: sent and cancelled messages with their
    deliveries, finished runs (by their start), audit entries and notes, and the
    daily cap's counts; events taken keep their ids (so a repeat is still refused)
    but lose their data. Kept, however old: the roster, member states, active runs
    with their timers and waits, messages queued, failed, in doubt or dead (see
    `cmtyflow outbox`), schedules, goals and counters. `cmtyflow report` then covers
    what is kept.

    A runner may keep running meanwhile: it commits as it goes, 5,000 rows at a
    time, and lets the runner's writes in between. Stopped part way, what it forgot
    stays forgotten and the same command finishes the rest. --dry-run only reads.
    """
    now = datetime.now(UTC)
    before = cutoff(before_text, now, _playbooks_zone(state))
    if before > now - timedelta(days=1):
        when = "in the future" if before > now else "less than a day ago"
        raise UserError(
            f"--before {before_text} is {before.isoformat(timespec='seconds')}, {when}: "
            "today's report and the daily cap need today's rows; give 1d or more"
        )
    if vacuum and dry_run:
        raise UserError("--vacuum changes the file; leave it out with --dry-run")
    store, location = store_at(state, must_exist=True)
    sqlite = store if isinstance(store, SqliteStore) else None  # --vacuum is SQLite's
    lock = None
    try:
        if not isinstance(store, SqlStore):
            raise UserError(f"{shown(location)} cannot be pruned")
        if vacuum and sqlite is None:
            raise UserError("--vacuum is for an SQLite state; PostgreSQL reuses the space itself (autovacuum)")
        if vacuum:
            lock = _lock(location, "before --vacuum, which rewrites the whole file")
        done: dict[str, int] = {}

        def progress(line: str, n: int) -> None:
            if n // PROGRESS_EVERY > done.get(line, 0) // PROGRESS_EVERY:
                click.echo(f"... {line}: {n:,} forgotten so far", err=True)
            done[line] = n

        try:
            with terminated_as_interrupted():
                counts = store.prune(before, keep=dry_run, progress=progress)
        except KeyboardInterrupt:
            so_far = ", ".join(f"{n:,} {line}" for line, n in done.items() if n) or "nothing yet"
            click.echo(f"note: stopped part way ({so_far}); what was forgotten stays forgotten, "
                       "and the same command finishes the rest", err=True)
            raise
        freed = sqlite.vacuum() if sqlite is not None and vacuum else None
    finally:
        store.close()
        if lock is not None:
            lock.release()
    if fmt == "json":
        counted = {_COUNT_KEYS.get(name, name.replace(" ", "_")): n for name, n in counts.items()}
        click.echo(json.dumps({"before": before.isoformat(), "dry_run": dry_run, "counts": counted, "bytes_freed": freed},
                              indent=2))
        return EXIT_OK
    verb = "would forget" if dry_run else "forgot"
    click.echo(f"{verb} what was over before {before.isoformat(timespec='seconds')} in {shown(location)}:")
    width = max(len(name) for name in counts)
    for name, n in counts.items():
        click.echo(f"  {name:<{width}}  {n:>10,}")
    if freed is not None:
        click.echo(f"the file is {freed:,} bytes smaller")
    elif not dry_run and sqlite is not None and any(counts.values()):
        click.echo("the file keeps its size and reuses the space; --vacuum (runner stopped) gives it back to the disk")
    return EXIT_OK
