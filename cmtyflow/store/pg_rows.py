"""Engine records to PostgreSQL rows (the columns of ``pg_migrations``). Rows are read
back with ``rows``' decoders: the text columns are the SQLite store's.

Rules:
- A datetime is written as (the datetime, for the ``*_ts`` timestamptz column;
  ``codec.dt_text``) and read from the text, so it comes back with its own zone.
- Each bulk write is a ``Bulk``: a few rows go by ``executemany`` (pipelined,
  prepared), many by COPY into a per-connection staging table and one
  ``INSERT ... SELECT ... ORDER BY stage_n``: the same rows, the same conflict clause, the
  same order (so identities, hence ``seq`` order, follow the input order).
- ``DO UPDATE`` must not meet one key twice in a statement: callers pass rows with
  unique keys (``unique_last``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from operator import itemgetter
from typing import Any

from ..engine.model import Event, QueuedMessage, Run, Timer
from . import rows
from .codec import dt_text, dumps


class Bulk:
    def __init__(self, table: str, columns: str, types: str, conflict: str = "") -> None:
        names = [c.strip() for c in columns.split(",")]
        kinds = [t.strip() for t in types.split(",")]
        if len(names) != len(kinds):
            raise ValueError(f"{table}: {len(names)} columns, {len(kinds)} types")
        self.table = table
        self.stage = f"pg_temp.cmtyflow_stage_{table}"
        cols = ", ".join(names)
        self.insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(names))}) {conflict}".rstrip()
        self.create_stage = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage.removeprefix('pg_temp.')} "
            f"(stage_n integer, {', '.join(f'{c} {t}' for c, t in zip(names, kinds, strict=True))}) ON COMMIT DELETE ROWS"
        )
        self.copy = f"COPY {self.stage} (stage_n, {cols}) FROM STDIN (FORMAT BINARY)"
        self.copy_types = ["integer", *kinds]
        self.merge = f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {self.stage} ORDER BY stage_n {conflict}".rstrip()


MEMBERS = Bulk("members", "id, timezone, record", "text, text, text",
               "ON CONFLICT (id) DO UPDATE SET timezone = excluded.timezone, record = excluded.record")
ZONES = Bulk("zones", "timezone", "text", "ON CONFLICT DO NOTHING")
STATES = Bulk("states", "playbook, member, state", "text, text, text",
              "ON CONFLICT (playbook, member) DO UPDATE SET state = excluded.state")
RUNS = Bulk(
    "runs", "id, playbook, flow, member, status, started_ts, body", "text, text, text, text, text, timestamptz, text",
    "ON CONFLICT (id) DO UPDATE SET playbook = excluded.playbook, flow = excluded.flow, member = excluded.member, "
    "status = excluded.status, started_ts = excluded.started_ts, body = excluded.body",
)
TIMERS = Bulk(
    "timers", "id, run, due_ts, due, kind, set_at", "text, text, timestamptz, text, text, text",
    "ON CONFLICT (id) DO UPDATE SET run = excluded.run, due_ts = excluded.due_ts, due = excluded.due, "
    "kind = excluded.kind, set_at = excluded.set_at",
)
WAITS = Bulk(
    "waits", "run, playbook, event_type, member, where_expr", "text, text, text, text, text",
    "ON CONFLICT (event_type, member, run) DO UPDATE SET playbook = excluded.playbook, where_expr = excluded.where_expr",
)
DAY_COUNTS = Bulk("day_counts", "day, member, n", "text, text, integer",
                  "ON CONFLICT (day, member) DO UPDATE SET n = day_counts.n + excluded.n")
COUNTERS = Bulk("counters", "name, value", "text, bigint",
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value")
SCHEDULES = Bulk(
    "schedules", "playbook, trigger, zone, next_ts, next_due, firing_after, firing_started, firing_last",
    "text, text, text, timestamptz, text, bigint, text, text",
    "ON CONFLICT (playbook, trigger, zone) DO UPDATE SET next_ts = excluded.next_ts, next_due = excluded.next_due, "
    "firing_after = excluded.firing_after, firing_started = excluded.firing_started, firing_last = excluded.firing_last",
)
QUEUED_STARTS = Bulk("queued_starts", "id, playbook, flow, member, record", "text, text, text, text, text")
EXPOSURES = Bulk(
    "exposures", "playbook, goal, step, variant, member, at_ts, at", "text, text, text, text, text, timestamptz, text",
    "ON CONFLICT (playbook, goal, step, variant, member) DO NOTHING",
)
CONVERSIONS = Bulk("conversions", "playbook, goal, step, variant, member", "text, text, text, text, text",
                   "ON CONFLICT DO NOTHING")
CONVERT_EXPOSURE = (
    "UPDATE exposures SET converted = true WHERE playbook = %s AND goal = %s AND step = %s AND variant = %s AND member = %s"
)
EVENTS = Bulk(
    "events", "id, type, at_ts, at, member, data, member_update, status",
    "text, text, timestamptz, text, text, text, text, text", "ON CONFLICT (id) DO NOTHING",
)
MESSAGES = Bulk(
    "outbox",
    "key, status, due_ts, due, playbook, run, flow, step, occurrence, channel, adapter, member, recipient, text, "
    "format, variant, urgent, queued_at, deliver_at, deferred",
    "text, text, timestamptz, text, text, text, text, text, integer, text, text, text, text, text, "
    "text, text, boolean, text, text, text",
    "ON CONFLICT (key) DO NOTHING",
)
AUDIT = Bulk("audit", "at_ts, at, kind, note, detail", "timestamptz, text, text, boolean, text")


def unique_last(params: Iterable[tuple[Any, ...]], *key: int) -> list[tuple[Any, ...]]:
    """One row per key (the columns at ``key``), at the key's first place with its last
    values: what one upsert after the other would leave."""
    pick = itemgetter(*key)
    found: dict[Any, tuple[Any, ...]] = {}
    for p in params:
        found[pick(p)] = p
    return list(found.values())


def run_params(run: Run) -> tuple[Any, ...]:
    p = rows.run_params(run)
    return (*p[:5], run.started_at, p[6])


def timer_params(t: Timer) -> tuple[Any, ...]:
    return (t.id, t.run, t.due, dt_text(t.due), t.kind, dt_text(t.set_at))


def message_params(m: QueuedMessage) -> tuple[Any, ...]:
    deliver_at = dt_text(m.deliver_at)
    return (
        m.key, "queued", m.deliver_at, deliver_at, m.playbook, m.run, m.flow, m.step, m.occurrence,
        m.channel, m.adapter, m.member, m.to, m.text, m.format, m.variant, bool(m.urgent),
        dt_text(m.queued_at), deliver_at, m.deferred,
    )


def event_params(e: Event) -> tuple[Any, ...]:
    update = dumps(e.member_update) if e.member_update is not None else None
    return (e.id, e.type, e.at, dt_text(e.at), e.member, dumps(e.data), update, "queued")


def note_params(note: dict[str, Any]) -> tuple[Any, ...]:
    at = note.get("at")
    if isinstance(at, datetime):
        return (at, dt_text(at), note["kind"], True, dumps(note))
    return (None, None, note["kind"], True, dumps(note))


def at_cols(at: datetime | None) -> tuple[datetime | None, str | None]:
    return (at, dt_text(at)) if at is not None else (None, None)


# reads -------------------------------------------------------------------------------------------
O_OUTBOX_COLS = ", ".join(f"o.{c.strip()}" for c in rows.OUTBOX_COLS.split(","))
# Due queued and failed rows, urgent ones first (index ``outbox_urgent``), then the
# others oldest first (index ``outbox_due``), as many as the urgent ones leave room for;
# rows another transaction holds are skipped, not waited for (several claimers).
# Named parameters ``until`` and ``limit``; ``where`` narrows the rows (a send job's own).
def due_picks(where: str = "TRUE", table: str = "outbox", lock: str = "FOR UPDATE SKIP LOCKED", cols: str = "seq") -> str:
    """Two CTEs, ``urgent`` and ``later``, that pick the due rows as the claim does."""
    due = f"{table}.status IN ('queued', 'failed') AND {table}.due_ts <= %(until)s AND {where}"
    order = f"ORDER BY {table}.due_ts, {table}.seq"
    return (
        f"WITH urgent AS (SELECT {cols} FROM {table} WHERE {table}.urgent AND {due} {order} "
        f"LIMIT %(limit)s {lock}), "
        f"later AS (SELECT {cols} FROM {table} WHERE NOT {table}.urgent AND {due} {order} "
        f"LIMIT %(limit)s - (SELECT count(*) FROM urgent) {lock}) "
    )


_CLAIM = (
    due_picks()
    + "UPDATE outbox AS o SET status = 'inflight' FROM (SELECT seq FROM urgent UNION ALL SELECT seq FROM later) AS pick "
    f"WHERE o.seq = pick.seq RETURNING o.due_ts, o.seq, {{member}}, {O_OUTBOX_COLS}"
)
# Each claimed row's member record (NULL for a campaign's or an unknown member) with it.
CLAIM_ROWS = _CLAIM.format(member="NULL")
CLAIM_WITH_MEMBERS = _CLAIM.format(member="(SELECT record FROM members WHERE members.id = o.member)")
NEXT_DUE = "SELECT due FROM outbox WHERE status IN ('queued', 'failed') ORDER BY due_ts, seq LIMIT 1"
REQUEUE = (
    "UPDATE outbox SET status = 'queued', due_ts = %s, due = %s, next_attempt = %s, "
    "attempts = CASE WHEN %s THEN 0 ELSE attempts END "
    f"WHERE key = ANY(%s) AND status IN {rows.REQUEUEABLE_SQL}"
)
# Sent rows' deliveries (at: sent_at, else the row's due time), in the results' order.
PUT_DELIVERIES = (
    "INSERT INTO deliveries (key, at_ts, at, playbook, platform_id) "
    "SELECT o.key, coalesce(v.at_ts, o.due_ts), coalesce(v.at, o.due), o.playbook, o.platform_id "
    "FROM unnest(%b::timestamptz[], %b::text[], %b::text[]) WITH ORDINALITY AS v(at_ts, at, key, n) "
    "JOIN outbox AS o ON o.key = v.key ORDER BY v.n"
)
DUE_TIMERS = (
    f"SELECT {rows.TIMER_COLS} FROM timers WHERE due_ts <= %s ORDER BY due_ts, id LIMIT %s FOR UPDATE SKIP LOCKED"
)
