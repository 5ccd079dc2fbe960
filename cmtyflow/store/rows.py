"""Engine records to SQLite rows and back (the SQLite store's columns, ``migrations``).

Rules:
- A campaign's member (None) is '' in key columns (``who``) and None again when read.
- Datetimes are written as (``*_ts`` seconds, ``codec.dt_text``) and read from the text,
  so they come back with their own offset and zone.
- Statements are module constants: the connection's statement cache keeps them
  prepared.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import chain
from typing import Any

from ..engine.model import Event, EventWait, QueuedMessage, Run, Timer
from .base import REQUEUEABLE, OutboxRow
from .codec import dt_cols, dt_parse, dt_text, dumps, encode_plain, loads, opt_dt_parse, plain


def who(member: str | None) -> str:
    return member if member is not None else ""


# runs ------------------------------------------------------------------------------------------
# body: [version, trigger, mode, started_at (dt_text), timezone, pc, occurrences and
# loops as [instruction, n, instruction, n, ...], event, inputs, wait, checkin, waiting]
# (codec JSON; the engine writes a daily firing's runs by the 100,000)
RUN_BODY = ("version", "trigger", "mode", "started_at", "timezone", "pc", "occurrences", "loops",
            "event", "inputs", "wait", "checkin", "waiting")
RUN_COLS = "id, playbook, flow, member, status, body"
PUT_RUN = (
    "INSERT INTO runs (id, playbook, flow, member, status, started_ts, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET playbook = excluded.playbook, flow = excluded.flow, member = excluded.member, "
    "status = excluded.status, started_ts = excluded.started_ts, body = excluded.body"
)


def run_params(run: Run) -> tuple[Any, ...]:
    started_ts, started = dt_cols(run.started_at)
    body = [
        run.version, run.trigger, run.mode, started, run.timezone, run.pc,
        list(chain.from_iterable(run.occurrences.items())), list(chain.from_iterable(run.loops.items())),
        plain(run.event), plain(run.inputs), plain(run.wait), plain(run.checkin), plain(run.waiting),
    ]
    return (run.id, run.playbook, run.flow, who(run.member), run.status, started_ts, encode_plain(body))


def run(row: tuple[Any, ...]) -> Run:
    rid, playbook, flow, member, status, body = row
    values = loads(body)
    values[3] = dt_parse(values[3])
    values[6] = _pairs(values[6])
    values[7] = _pairs(values[7])
    # A body written by an older schema is shorter: the newer fields keep their defaults.
    fields = dict(zip(RUN_BODY, values, strict=False))
    return Run(id=rid, playbook=playbook, flow=flow, member=member or None, status=status, **fields)


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


# timers, waits, states --------------------------------------------------------------------------
TIMER_COLS = "id, run, due, kind, set_at"
PUT_TIMER = "INSERT OR REPLACE INTO timers (id, run, due_ts, due, kind, set_at) VALUES (?, ?, ?, ?, ?, ?)"


def timer_params(t: Timer) -> tuple[Any, ...]:
    due_ts, due = dt_cols(t.due)
    return (t.id, t.run, due_ts, due, t.kind, dt_text(t.set_at))


def timer(row: tuple[Any, ...]) -> Timer:
    tid, rid, due, kind, set_at = row
    return Timer(tid, rid, dt_parse(due), kind, dt_parse(set_at))


WAIT_COLS = "run, playbook, event_type, member, where_expr"
PUT_WAIT = (
    "INSERT INTO waits (run, playbook, event_type, member, where_expr) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (event_type, member, run) DO UPDATE SET playbook = excluded.playbook, where_expr = excluded.where_expr"
)


def wait_params(w: EventWait) -> tuple[Any, ...]:
    return (w.run, w.playbook, w.event_type, who(w.member), w.where)


def wait(row: tuple[Any, ...]) -> EventWait:
    rid, playbook, event_type, member, where = row
    return EventWait(rid, playbook, event_type, member or None, where)


PUT_STATE = (
    "INSERT INTO states (playbook, member, state) VALUES (?, ?, ?) "
    "ON CONFLICT (playbook, member) DO UPDATE SET state = excluded.state"
)
ADD_DAY_COUNT = (
    "INSERT INTO day_counts (day, member, n) VALUES (?, ?, ?) "
    "ON CONFLICT (day, member) DO UPDATE SET n = n + excluded.n"
)
ADD_COUNTER = (
    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
PUT_SCHEDULE = (
    "INSERT INTO schedules (playbook, trigger, zone, next_ts, next_due, firing_after, firing_started, firing_last) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (playbook, trigger, zone) DO UPDATE SET next_ts = excluded.next_ts, next_due = excluded.next_due, "
    "firing_after = excluded.firing_after, firing_started = excluded.firing_started, firing_last = excluded.firing_last"
)

# queued starts, goals ----------------------------------------------------------------------------
PUT_QUEUED_START = "INSERT INTO queued_starts (id, playbook, flow, member, record) VALUES (?, ?, ?, ?, ?)"


def queued_start_params(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["id"], record["playbook"], record["flow"], who(record["member"]), dumps(record))


PUT_EXPOSURE = (
    "INSERT INTO exposures (playbook, goal, step, variant, member, at_ts, at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (playbook, goal, step, variant, member) DO NOTHING"
)
PUT_CONVERSION = "INSERT OR IGNORE INTO conversions (playbook, goal, step, variant, member) VALUES (?, ?, ?, ?, ?)"
CONVERT_EXPOSURE = (
    "UPDATE exposures SET converted = 1 WHERE playbook = ? AND goal = ? AND step = ? AND variant = ? AND member = ?"
)

# events ------------------------------------------------------------------------------------------
EVENT_COLS = "id, type, at, member, data, member_update"
PUT_EVENT = (
    "INSERT INTO events (id, type, at_ts, at, member, data, member_update, status) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued') ON CONFLICT (id) DO NOTHING"
)


def event_params(e: Event) -> tuple[Any, ...]:
    update = dumps(e.member_update) if e.member_update is not None else None
    at_ts, at = dt_cols(e.at)
    return (e.id, e.type, at_ts, at, e.member, dumps(e.data), update)


def event(row: tuple[Any, ...]) -> Event:
    eid, etype, at, member, data, update = row
    return Event(eid, etype, dt_parse(at), member, loads(data), loads(update) if update is not None else None)


# outbox ------------------------------------------------------------------------------------------
OUTBOX_COLS = (
    "key, playbook, run, flow, step, occurrence, channel, adapter, member, recipient, text, format, "
    "variant, urgent, queued_at, deliver_at, deferred, status, attempts, next_attempt, last_error, "
    "sent_at, platform_id"
)
_CLAIMED_URGENT = 3 + [c.strip() for c in OUTBOX_COLS.split(",")].index("urgent")
PUT_MESSAGE = (
    "INSERT INTO outbox (key, status, due_ts, due, playbook, run, flow, step, occurrence, channel, adapter, "
    "member, recipient, text, format, variant, urgent, queued_at, deliver_at, deferred) "
    "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)


def message_params(m: QueuedMessage) -> tuple[Any, ...]:
    deliver_ts, deliver_at = dt_cols(m.deliver_at)
    return (
        m.key, deliver_ts, deliver_at, m.playbook, m.run, m.flow, m.step, m.occurrence,
        m.channel, m.adapter, m.member, m.to, m.text, m.format, m.variant, int(m.urgent),
        dt_text(m.queued_at), deliver_at, m.deferred,
    )


def outbox_row(r: tuple[Any, ...]) -> OutboxRow:
    message = QueuedMessage(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], bool(r[13]),
        dt_parse(r[14]), dt_parse(r[15]), r[16],
    )
    return OutboxRow(message, r[17], r[18], opt_dt_parse(r[19]), r[20], opt_dt_parse(r[21]), r[22])


# The record of an outbox row's member (NULL for a campaign's or an unknown member), as a
# column of a statement over ``outbox``: the claim returns it with the row. The CAST is
# for RETURNING, whose column values have no affinity: without it SQLite scans members.
MEMBER_OF_ROW = "(SELECT record FROM members WHERE members.id = CAST(outbox.member AS TEXT))"

# Due queued and failed rows, urgent ones first, then oldest first: the urgent rows' own
# range (index ``outbox_urgent``), then the others' range per status (``outbox_due``,
# which holds ``urgent`` too), merged.
DUE_SEQS = (
    "SELECT seq FROM ("
    "SELECT * FROM (SELECT 0 AS k, seq, due_ts FROM outbox INDEXED BY outbox_urgent "
    "WHERE urgent = 1 AND status IN ('queued', 'failed') AND due_ts <= ?1 ORDER BY due_ts, seq LIMIT ?2) "
    "UNION ALL "
    "SELECT * FROM (SELECT 1, seq, due_ts FROM outbox WHERE status = 'queued' AND due_ts <= ?1 AND urgent = 0 "
    "ORDER BY due_ts, seq LIMIT ?2) "
    "UNION ALL "
    "SELECT * FROM (SELECT 1, seq, due_ts FROM outbox WHERE status = 'failed' AND due_ts <= ?1 AND urgent = 0 "
    "ORDER BY due_ts, seq LIMIT ?2) "
    "ORDER BY 1, 3, 2 LIMIT ?2)"
)
# The order claimed rows are handed out in (``DUE_SEQS``'s), as an ORDER BY of outbox rows.
CLAIM_ORDER = "urgent DESC, due_ts, seq"


def claim_order(row: Sequence[Any]) -> tuple[bool, Any, Any]:
    """``CLAIM_ORDER`` for a claimed row read as (due_ts, seq, record, *OUTBOX_COLS)."""
    return (not row[_CLAIMED_URGENT], row[0], row[1])


# The statuses a message may be queued again from (``base.REQUEUEABLE``), as SQL.
REQUEUEABLE_SQL = "(" + ", ".join(f"'{status}'" for status in REQUEUEABLE) + ")"
REQUEUE = (
    "UPDATE outbox SET status = 'queued', due_ts = ?, due = ?, next_attempt = ?, "
    "attempts = CASE WHEN ? THEN 0 ELSE attempts END "
    f"WHERE key = ? AND status IN {REQUEUEABLE_SQL}"
)
# A sent row's delivery, from the outbox row (after its update) in the same transaction.
PUT_DELIVERY = (
    "INSERT INTO deliveries (key, at_ts, at, playbook, platform_id) "
    "SELECT key, coalesce(?1, due_ts), coalesce(?2, due), playbook, platform_id FROM outbox WHERE key = ?3"
)
# The same for many deliveries: their parameters as a JSON array of arrays, in order.
PUT_DELIVERIES = (
    "INSERT INTO deliveries (key, at_ts, at, playbook, platform_id) "
    "SELECT o.key, coalesce(v.value ->> 0, o.due_ts), coalesce(v.value ->> 1, o.due), o.playbook, o.platform_id "
    "FROM json_each(?) AS v JOIN outbox AS o ON o.key = v.value ->> 2 ORDER BY v.key"
)
DELIVERIES = (
    "SELECT d.seq, d.key, d.at, o.playbook, o.flow, o.step, o.channel, o.adapter, o.member, o.recipient, o.text, "
    "o.variant, d.platform_id FROM deliveries AS d JOIN outbox AS o ON o.key = d.key"
)
_DELIVERY_KEYS = ("key", "at", "playbook", "flow", "step", "channel", "adapter", "member", "to", "text", "variant", "platform_id")


def delivery(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_DELIVERY_KEYS, row, strict=True))
    record["at"] = dt_parse(record["at"])
    return record


# audit -------------------------------------------------------------------------------------------
PUT_AUDIT = "INSERT INTO audit (at_ts, at, kind, note, detail) VALUES (?, ?, ?, ?, ?)"


def note_params(note: dict[str, Any]) -> tuple[Any, ...]:
    # Notes carry no time of their own unless the engine put one in (``at``).
    at = note.get("at")
    if isinstance(at, datetime):
        return (*dt_cols(at), note["kind"], 1, dumps(note))
    return (None, None, note["kind"], 1, dumps(note))


def audit_entry(row: tuple[Any, ...]) -> dict[str, Any]:
    at, kind, note, detail = row
    data = loads(detail)
    if note:
        return {"at": data.get("at"), **data}
    return {"at": dt_parse(at) if at is not None else None, "kind": kind, **data}
