"""An SQLite store copied into an empty PostgreSQL store (``cmtyflow state migrate``).

Rules:
- Every table, row for row, in one PostgreSQL transaction: ``seq`` values are kept
  (so roster, run, event, outbox and audit order stay as they were) and the identity
  sequences continue after them. Pending timers keep their due times, schedules their
  next due, the outbox its statuses, attempts and retry times, and every event id
  seen stays seen with its status: a runner started on the copy at the same instant
  takes nothing twice.
- The SQLite side is read in one read transaction (one snapshot). The caller holds
  the runner's lock on it (no runner may write meanwhile).
- The target must hold no state at all (its tables are locked, then checked): a
  non-empty one is refused with a ``UserError`` and left as it was.
- Columns are matched by name between the two schemas (same versions, same
  columns): SQLite's POSIX seconds become timestamptz, its 0/1 flags booleans.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..errors import UserError
from .postgres import PostgresStore
from .sqlite import SqliteStore

# In dependency-free order; every table both schemas have (meta: extra keys only).
# Columns only PostgreSQL has: a hand-over to a worker's job (``pg_shared``), empty in a copy.
PG_ONLY = {"timers": {"job"}, "outbox": {"job"}}
TABLES = ("meta", "members", "zones", "states", "runs", "timers", "waits", "day_counts", "events", "schedules",
          "outbox", "sending", "deliveries", "queued_starts", "exposures", "conversions", "counters", "audit")
STATE_TABLES = TABLES[1:]


def _timestamp(value: Any) -> Any:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _flag(value: Any) -> Any:
    return bool(value) if value is not None else None


_CONVERT: dict[str, Callable[[Any], Any]] = {"timestamp with time zone": _timestamp, "boolean": _flag}


def _pg_columns(cur: Any, schema: str, table: str) -> dict[str, str]:
    cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, table),
    )
    return dict(cur.fetchall())


def _refuse_non_empty(cur: Any, target: PostgresStore) -> None:
    found = []
    for table in STATE_TABLES:
        cur.execute(f"SELECT count(*) FROM {table}")
        n = int(cur.fetchone()[0])
        if n:
            found.append(f"{n:,} {table}")
    if found:
        raise UserError(
            f"{target.url}: schema '{target.schema}' already holds cmtyflow state ({', '.join(found)}); "
            "migrate into an empty one (e.g. another ?schema=NAME)"
        )


def copy_sqlite_into(source: SqliteStore, target: PostgresStore) -> dict[str, int]:
    """Copy every table of ``source`` into ``target`` (empty); returns rows per state
    table (``STATE_TABLES``)."""
    from psycopg import sql

    counts: dict[str, int] = {}
    src = source.db
    src.execute("BEGIN")  # one snapshot of the source
    try:
        with target.conn.transaction(), target.conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
            _refuse_non_empty(cur, target)
            for table in TABLES:
                n = _copy_table(src, cur, target.schema, table)
                if table in STATE_TABLES:
                    counts[table] = n
                if "seq" in _pg_columns(cur, target.schema, table):
                    qualified = sql.Identifier(target.schema, table).as_string(cur)
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence(%s, 'seq'), max(seq)) FROM {table}", (qualified,)
                    )
            cur.execute(f"ANALYZE {', '.join(TABLES)}")  # plans for the claim queries from the start
    finally:
        src.execute("COMMIT")
    return counts


def _copy_table(src: Any, cur: Any, schema: str, table: str) -> int:
    pg_columns = _pg_columns(cur, schema, table)
    columns = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
    missing = set(columns) ^ (set(pg_columns) - PG_ONLY.get(table, set()))
    if missing:  # a bug: the two schemas' latest versions must have the same columns
        raise RuntimeError(f"{table}: the SQLite and PostgreSQL columns differ: {sorted(missing)}")
    converters = [(i, _CONVERT[pg_columns[c]]) for i, c in enumerate(columns) if pg_columns[c] in _CONVERT]
    order = " ORDER BY seq" if "seq" in columns else ""
    found = src.execute(f"SELECT {', '.join(columns)} FROM {table}{order}")
    n = 0
    if table == "meta":  # the target's own rows (its application mark) stay
        for row in found:
            cur.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", row)
            n += 1
        return n
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in found:
            if converters:
                values = list(row)
                for i, convert in converters:
                    values[i] = convert(values[i])
                row = values
            copy.write_row(row)
            n += 1
    return n
