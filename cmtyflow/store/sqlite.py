"""The durable Store: one SQLite file in WAL mode (SPEC 5.1, 5.2).

Rules: as ``store.base``, and:
- The reads (and the few writes) that SQLite and PostgreSQL share are written once in
  ``store.sqlbase``; this module has the connection, the transactions and the SQLite
  side of everything else.
- Every write method is one ``BEGIN IMMEDIATE`` ... ``COMMIT``: ``apply`` (a whole
  decision with what it consumed), ``finish_messages`` (a batch of results and their
  deliveries), ``add_events``. An exception inside rolls all of it back. Inside
  ``grouped`` (the driver's inputs) each write is a savepoint instead, and a group
  of them is one transaction: undone alone when it fails, committed with the group.
- Inputs are not removed when read: ``pending_events``/``take_event`` and
  ``due_timers`` return them and ``apply(consumed_event=, consumed_timer=)`` marks
  them done, in the decision's transaction; a crash before that replays them.
- Other processes may write to the same file (``cmtyflow emit`` adding events): a
  writer waits up to ``busy_timeout`` for the lock; reads see committed data.
- Finished runs are kept with their status (``get_run`` returns them too; the engine
  checks the status), and so are sent and cancelled outbox rows, and every event id.
- One connection per store, used by one thread at a time: a lock held for each call
  (each transaction, each read) makes calls from several threads wait for each other
  (``thread_safe``), so the dispatcher may make its calls from a thread of its own
  while the event intake writes from the event loop's. Open a store per thread for
  parallel work.
- Listings (``iter_members``, ``outbox``, ``runs``, ``deliveries``) read in pages, so
  no statement stays open while the caller writes between items.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..engine.model import Decision, Event, Timer
from ..errors import UserError
from . import rows
from .base import OutboxRow, ScheduleUpdate
from .codec import dt_cols, dt_parse, dt_text, dumps, loads
from .sqlbase import SqlStore, count, finish_params, finish_sql
from .sqlite_connect import begin, identity, open_db

RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)  # UPDATE ... RETURNING
JSON = sqlite3.sqlite_version_info >= (3, 38, 0)  # json_each and ->> built in


# An int of 19 digits or more may not fit in 64 bits: JSON would give SQLite a REAL
# where binding it gives an INTEGER (or an overflow error), so such rows are bound.
_LONG_INT = 10**18


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is bound, not sent as JSON")


def _json_rows(params: list[tuple[Any, ...]]) -> str | None:
    """Rows of statement parameters as one JSON array for ``json_each``, which gives
    SQLite the values that binding them would (text, numbers, None; a bool as 0/1); None
    when JSON is not there (SQLite before 3.38) or a value would not come out the same
    (bytes and other types, a float that is not finite, a number of 19 digits or more:
    those rows are bound one by one)."""
    if not JSON:
        return None
    if any(isinstance(v, int) and not -_LONG_INT < v < _LONG_INT for row in params for v in row):
        return None
    try:
        return json.dumps(params, ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False, default=_refuse)
    except (TypeError, ValueError):
        return None


# The deliveries of ``_deliveries_json``: [sent_at text, attempts, platform_id, key, sent_at ts].
_FINISH_SENT = (
    "UPDATE outbox SET status = 'sent', sent_at = v.value ->> 0, attempts = v.value ->> 1, "
    "platform_id = v.value ->> 2, last_error = NULL FROM json_each(?) AS v WHERE outbox.key = v.value ->> 3"
)
_PUT_SENT_DELIVERIES = (
    "INSERT INTO deliveries (key, at_ts, at, playbook, platform_id) "
    "SELECT o.key, v.value ->> 4, v.value ->> 0, o.playbook, o.platform_id "
    "FROM json_each(?) AS v JOIN outbox AS o ON o.key = v.value ->> 3 ORDER BY v.key"
)
_SENT_FIELDS = ("sent_at", "attempts", "platform_id", "last_error")


def _deliveries_json(results: list[tuple[str, str, dict[str, Any]]]) -> str | None:
    """``results`` as one JSON array for ``_FINISH_SENT`` and ``_PUT_SENT_DELIVERIES``
    when there are several and each is a delivery as the dispatcher records it (fields
    ``_SENT_FIELDS`` in that order: a datetime, an int, a str or None, None) under a key
    of its own; else None, and ``finish_messages`` takes its general way."""
    if not JSON or len(results) < 2:
        return None
    out = []
    keys = set()
    for key, status, fields in results:
        if status != "sent" or key in keys or tuple(fields) != _SENT_FIELDS:
            return None
        sent_at, attempts, platform_id, last_error = fields.values()
        if (
            sent_at.__class__ is not datetime or attempts.__class__ is not int or not -_LONG_INT < attempts < _LONG_INT
            or not (platform_id is None or platform_id.__class__ is str) or last_error is not None or key.__class__ is not str
        ):
            return None
        keys.add(key)
        ts, text = dt_cols(sent_at)
        out.append((text, attempts, platform_id, key, ts))
    try:
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)
    except ValueError:  # a timestamp that is not finite
        return None


def _missing_key(db: sqlite3.Connection, keys: list[str]) -> KeyError:
    """The error for results of which some key has no outbox row (the write rolls back)."""
    missing = [k for k in keys if not db.execute("SELECT 1 FROM outbox WHERE key = ?", (k,)).fetchone()]
    return KeyError(f"no outbox row with key {missing[0] if missing else '?'}")


@functools.lru_cache(maxsize=4)
def _claim_json_sql(record: str) -> str:
    """The due rows (``rows.DUE_SEQS``), urgent ones first, then oldest first, as one
    JSON array of arrays: [the ``rows.OUTBOX_COLS`` with the status they are claimed
    into, then the member record (``record``)]. Ordered in the subquery, which the aggregate reads in order.

    A record with no ``$`` in it cannot hold a ``codec`` tag: it is put in as the JSON
    object it is, read with the rest; any other (tags, or not plain JSON: NaN) as its
    text, for ``codec.loads``; no member, null."""
    cols = rows.OUTBOX_COLS.replace(", status,", ", 'inflight',")  # the status they are claimed into
    assert cols.count("'inflight'") == 1, rows.OUTBOX_COLS
    member = (
        "CASE WHEN instr(record, '$') = 0 AND json_valid(record) AND json_type(record) = 'object' "
        "THEN json(record) ELSE record END"
    )
    return (
        f"SELECT json_group_array(json_array({cols}, {member})) FROM ("
        f"SELECT {record} AS record, {rows.OUTBOX_COLS} FROM outbox WHERE seq IN ({rows.DUE_SEQS}) "
        f"ORDER BY {rows.CLAIM_ORDER})"
    )


_RECORD_AT = len(rows.OUTBOX_COLS.split(","))  # in a claimed row, after what ``rows.outbox_row`` reads


def _member(value: Any) -> dict[str, Any] | None:
    """A claimed row's member record: read with the row already, or its text, or None."""
    if value is None or value.__class__ is dict:
        return value
    return loads(value)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _finish_many_sql(fields: tuple[str, ...], moves_due: bool) -> str:
    """``finish_sql`` for many rows in one statement: the parameters of each row (as
    ``finish_params`` makes them) are an array in the JSON array bound to it. The keys
    must differ (one UPDATE changes a row once)."""
    names = ["status", *fields, *(("due_ts", "due") if moves_due else ())]
    sets = ", ".join(f"{name} = v.value ->> {i}" for i, name in enumerate(names))
    return f"UPDATE outbox SET {sets} FROM json_each(?) AS v WHERE outbox.key = v.value ->> {len(names)}"


@dataclass
class _Group:
    """The transaction that ``SqliteStore.grouped`` keeps open between writes."""

    most: int
    within: float
    writes: int = 0
    begun: float = 0.0
    commits: int = 0


class SqliteStore(SqlStore):
    MEMBER_BATCH = 500  # ids per ``IN (...)`` when merging member records
    thread_safe = True  # calls may come from any thread; ``_lock`` makes them one at a time

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()  # held by each call: one thread at a time on the connection
        self._db: sqlite3.Connection | None = open_db(self.path)
        self._file = identity(self.path)
        self._group: _Group | None = None  # writes made inside ``grouped``

    def check_file(self) -> None:
        """Raise ``UserError`` when the file at ``path`` is no longer the one opened
        (deleted, or replaced by a restore or a copy): writes would go to a file no one
        else reads, and be lost with the process. The runner checks at every pass."""
        if identity(self.path) != self._file:
            raise UserError(
                f"{self.path}: the state file was deleted or replaced while the runner had it open; stopped, so that "
                "nothing more is written to the old one. Restore the file and start the runner again"
            )

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path}: the store is closed")
        return self._db

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                if db.in_transaction:  # a caller's own BEGIN left open: nothing of it is kept
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # closing must not fail for it: an open transaction is rolled back at close
            finally:
                db.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self.db
            group = self._group
            if group is not None:
                yield from self._grouped_write(db, group)
                return
            begin(db)
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _grouped_write(self, db: sqlite3.Connection, group: _Group) -> Iterator[sqlite3.Connection]:
        """A write inside ``grouped``: a savepoint of the group's transaction (begun by
        the first write), so that a write that fails is undone alone; the group is
        committed once it holds ``most`` writes or has been open ``within`` seconds."""
        if not db.in_transaction:
            begin(db)
            group.begun = time.monotonic()
            group.writes = 0
        db.execute("SAVEPOINT write")
        try:
            yield db
        except BaseException:
            try:
                if db.in_transaction:  # (an I/O error may have ended the transaction already)
                    db.execute("ROLLBACK TO write")
                    db.execute("RELEASE write")
            except sqlite3.Error:
                db.execute("ROLLBACK")  # never commit part of a write: the group's other writes replay
            raise
        db.execute("RELEASE write")
        group.writes += 1
        if group.writes >= group.most or time.monotonic() - group.begun >= group.within:
            db.execute("COMMIT")
            group.commits += 1

    @contextmanager
    def grouped(self, most: int, within: float) -> Iterator[None]:
        """The writes made inside, by this thread, committed a group at a time: one
        transaction for up to ``most`` writes or ``within`` seconds, whichever comes
        first, and what is left when the block ends (also when it raises: the writes
        that completed are kept; a write that failed was undone alone). A crash loses
        the writes of the group not yet committed, as it loses a write under way
        outside a group. Other threads' calls wait until the block ends: their writes
        must not become part of a transaction that is not yet committed. Nested
        ``grouped`` blocks are one group."""
        with self._lock:
            if self._group is not None:
                yield
                return
            db = self.db
            self._group = _Group(most, within)
            try:
                yield
            finally:
                self._group = None
                if db.in_transaction:
                    try:
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise

    # the primitives of ``SqlStore`` ------------------------------------------------------------
    # Every engine read goes through these: ``self._db or self.db`` spares the property's
    # call while open (the property still says when the store is closed).
    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return (self._db or self.db).execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            return (self._db or self.db).execute(sql, params).fetchone()  # type: ignore[no-any-return]

    @staticmethod
    def _in(column: str, values: Iterable[Any]) -> tuple[str, tuple[Any, ...]]:
        wanted = tuple(values)
        return f"{column} IN ({','.join('?' * len(wanted))})", wanted

    _at_cols = staticmethod(dt_cols)

    # the writes of ``SqlStore`` -----------------------------------------------------------------
    def _merge_members(self, db: sqlite3.Connection, batch: dict[str, dict[str, Any]]) -> None:
        ids = list(batch)
        marks = ",".join("?" * len(ids))
        for mid, record in db.execute(f"SELECT id, record FROM members WHERE id IN ({marks})", ids):
            batch[mid] = {**loads(record), **batch[mid]}
        db.executemany(
            "INSERT INTO members (id, timezone, record) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET timezone = excluded.timezone, record = excluded.record",
            [(mid, m.get("timezone") or "", dumps(m)) for mid, m in batch.items()],
        )

    def _put_zones(self, db: sqlite3.Connection, zones: set[str]) -> None:
        db.executemany("INSERT OR IGNORE INTO zones (timezone) VALUES (?)", [(z,) for z in zones])

    def _add_counter(self, db: sqlite3.Connection, name: str, n: int) -> None:
        db.execute(rows.ADD_COUNTER, (name, n))

    def _run(self, db: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(db.execute(sql, params).rowcount)

    def _between_batches(self, took: float) -> None:
        # A runner waiting for the lock gets it: SQLite's busy handler polls (every
        # 100 ms after the first quarter of a second), so the lock is left free at
        # least as long as it was held.
        time.sleep(took)

    def vacuum(self) -> int:
        """Rewrite the file without its free pages (``VACUUM``); returns the bytes freed.
        It needs the database to itself: no runner may hold it meanwhile."""
        with self._lock:
            before = self._size()
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return max(0, before - self._size())

    def _size(self) -> int:
        return sum(os.path.getsize(self.path + tail) for tail in ("", "-wal") if os.path.exists(self.path + tail))

    # the engine's writes -----------------------------------------------------------------------
    def apply(
        self,
        decision: Decision,
        *,
        schedules: Iterable[ScheduleUpdate] = (),
        consumed_event: str | None = None,
        consumed_timer: str | None = None,
    ) -> None:
        d = decision
        counts = dict(d.counters)
        with self._write() as db:
            # The same order as MemoryStore.apply: cancellations before the new timers and waits.
            if consumed_timer is not None:
                db.execute("DELETE FROM timers WHERE id = ?", (consumed_timer,))
            if d.cancel_timers_of:
                db.executemany("DELETE FROM timers WHERE run = ?", [(r,) for r in d.cancel_timers_of])
            if d.cancel_waits_of:
                db.executemany("DELETE FROM waits WHERE run = ?", [(r,) for r in d.cancel_waits_of])
            if d.members:
                self._put_members(db, d.members.values())
            if d.states:
                # A state still empty was never written (nothing in the language empties
                # one): no row for it, as for the members a firing reached without a
                # step that keeps anything (a million empty rows after a firing).
                db.executemany(rows.PUT_STATE, [(pb, rows.who(m), dumps(s)) for (pb, m), s in d.states.items() if s])
            if d.runs:
                db.executemany(rows.PUT_RUN, map(rows.run_params, d.runs.values()))
            if d.timers:
                db.executemany(rows.PUT_TIMER, map(rows.timer_params, d.timers))
            if d.waits:
                db.executemany(rows.PUT_WAIT, map(rows.wait_params, d.waits))
            if d.day_counts:
                db.executemany(rows.ADD_DAY_COUNT, [(day, m, n) for (m, day), n in d.day_counts.items()])
            if d.messages:
                added = db.executemany(rows.PUT_MESSAGE, map(rows.message_params, d.messages)).rowcount
                count(counts, "duplicate_messages", len(d.messages) - added)
            if d.queued_starts:
                db.executemany(rows.PUT_QUEUED_START, map(rows.queued_start_params, d.queued_starts))
            if d.dequeued:
                db.executemany("DELETE FROM queued_starts WHERE id = ?", [(r,) for r in d.dequeued])
            if d.exposures:
                db.executemany(rows.PUT_EXPOSURE, [
                    (pb, goal, step, variant or "", member, *dt_cols(at))
                    for pb, goal, member, step, variant, at in d.exposures
                ])
            if d.conversions:
                params = [(pb, goal, step, variant or "", member) for pb, goal, member, step, variant in d.conversions]
                db.executemany(rows.PUT_CONVERSION, params)
                db.executemany(rows.CONVERT_EXPOSURE, params)
            if d.emitted:
                count(counts, "duplicate_events", len(d.emitted) - self._add_events(db, d.emitted))
            if d.notes:
                db.executemany(rows.PUT_AUDIT, map(rows.note_params, d.notes))
            if schedules:
                self._set_schedules(db, schedules)
            if consumed_event is not None:
                db.execute("UPDATE events SET status = 'done' WHERE id = ?", (consumed_event,))
                count(counts, "events_processed", 1)
            if counts:
                db.executemany(rows.ADD_COUNTER, [(k, v) for k, v in counts.items() if v])

    # inputs ---------------------------------------------------------------------------------------
    def _add_events(self, db: sqlite3.Connection, events: Iterable[Event]) -> int:
        return int(db.executemany(rows.PUT_EVENT, map(rows.event_params, events)).rowcount)

    def due_timers(self, until: datetime, limit: int = 1000) -> list[Timer]:
        found = self._all(
            f"SELECT {rows.TIMER_COLS} FROM timers WHERE due_ts <= ? ORDER BY due_ts, id LIMIT ?",
            (until.timestamp(), limit),
        )
        return [rows.timer(r) for r in found]

    def set_schedules(self, updates: Iterable[ScheduleUpdate]) -> None:
        with self._write() as db:
            self._set_schedules(db, updates)

    def _set_schedules(self, db: sqlite3.Connection, updates: Iterable[ScheduleUpdate]) -> None:
        db.executemany(rows.PUT_SCHEDULE, [
            (u.playbook, u.trigger, u.zone, *(dt_cols(u.next_due) if u.next_due else (None, None)), u.after,
             dt_text(u.started) if u.started is not None else None, dt_text(u.last) if u.last is not None else None)
            for u in updates
        ])

    # outbox ----------------------------------------------------------------------------------------
    def next_message_due(self) -> datetime | None:
        best: tuple[float, str] | None = None
        for status in ("queued", "failed"):
            row = self._one("SELECT due_ts, due FROM outbox WHERE status = ? ORDER BY due_ts LIMIT 1", (status,))
            if row is not None and (best is None or row[0] < best[0]):
                best = row
        return dt_parse(best[1]) if best is not None else None

    def claim_due_messages(self, until: datetime, limit: int = 1000) -> list[OutboxRow]:
        return [row for row, _ in self._claim(until, limit, members=False)]

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        return self._claim(until, limit, members=True)

    def _claim(self, until: datetime, limit: int, *, members: bool) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        """Claimed rows, urgent ones first, then oldest first, each with its member's record (read in the same
        transaction) when ``members``, else None."""
        params = (until.timestamp(), limit)
        record = rows.MEMBER_OF_ROW if members else "NULL"
        outbox_row = rows.outbox_row
        with self._write() as db:
            if JSON:
                # The rows as one JSON array (one statement step, not one per row: the
                # GIL is released for all of SQLite's work), then the same rows moved
                # to inflight: the same query in the same write transaction.
                (text,) = db.execute(_claim_json_sql(record), params).fetchone()
                found = json.loads(text)
                moved = db.execute(f"UPDATE outbox SET status = 'inflight' WHERE seq IN ({rows.DUE_SEQS})", params).rowcount
                if moved != len(found):
                    raise RuntimeError(f"claimed {moved} outbox rows but read {len(found)}")
                at = _RECORD_AT
                return [(outbox_row(r), r[at] if r[at].__class__ is dict else _member(r[at])) for r in found]
            if RETURNING:
                found = db.execute(
                    f"UPDATE outbox SET status = 'inflight' WHERE seq IN ({rows.DUE_SEQS}) "
                    f"RETURNING due_ts, seq, {record}, {rows.OUTBOX_COLS}", params,
                ).fetchall()
            else:  # SQLite before 3.35: the same in three statements, still one transaction
                seqs = [(r[0],) for r in db.execute(rows.DUE_SEQS, params)]
                db.executemany("UPDATE outbox SET status = 'inflight' WHERE seq = ?", seqs)
                found = [
                    db.execute(f"SELECT due_ts, seq, {record}, {rows.OUTBOX_COLS} FROM outbox WHERE seq = ?", s).fetchone()
                    for s in seqs
                ]
        found.sort(key=rows.claim_order)
        return [(outbox_row(r[3:]), loads(r[2]) if r[2] is not None else None) for r in found]

    def finish_messages(self, results: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        results = results if isinstance(results, list) else list(results)
        sent = _deliveries_json(results)
        if sent is not None:
            # A group of deliveries as the dispatcher records them: the rows and their
            # deliveries from one JSON array, as the general case below writes them.
            with self._write() as db:
                if db.execute(_FINISH_SENT, (sent,)).rowcount != len(results):
                    raise _missing_key(db, [k for k, _, _ in results])
                db.execute(_PUT_SENT_DELIVERIES, (sent,))
                self._add_counter(db, "messages_sent", len(results))
                self._forget_sending(db, (k for k, _, _ in results))
            return
        plan = [finish_params(key, status, fields, dt_cols) for key, status, fields in results]
        if not plan:
            return
        with self._write() as db:
            # Consecutive results of the same shape share one statement (group commit).
            for shape, group in itertools.groupby(plan, key=lambda p: p[0]):
                params = [p[1] for p in group]
                keys = [p[-1] for p in params]
                # Many rows: one statement, its rows as one JSON array (SQLite does the
                # group in one step); keys twice in a group (the last result wins) or
                # values JSON does not carry as they are: one by one.
                many = _json_rows(params) if len(params) > 1 and len(set(keys)) == len(keys) else None
                if many is not None:
                    changed = db.execute(_finish_many_sql(*shape), (many,)).rowcount
                else:
                    changed = db.executemany(finish_sql(*shape), params).rowcount
                if changed != len(params):
                    raise _missing_key(db, keys)
            delivered = [p[2] for p in plan if p[2] is not None]
            if delivered:
                # Each delivery from its outbox row just updated, in the order of the results.
                many = _json_rows(delivered) if len(delivered) > 1 else None
                if many is not None:
                    db.execute(rows.PUT_DELIVERIES, (many,))
                else:
                    db.executemany(rows.PUT_DELIVERY, delivered)
                self._add_counter(db, "messages_sent", len(delivered))
            self._forget_sending(db, (k for k, _, _ in results))

    def mark_in_doubt(self) -> list[OutboxRow]:
        with self._write() as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM outbox WHERE status = 'inflight' ORDER BY seq")]
            # The call had begun: it counts as an attempt (it showed 'tries 0').
            db.executemany("UPDATE outbox SET status = 'in_doubt', attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs])
            db.execute("DELETE FROM sending")
            return [rows.outbox_row(db.execute(f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE seq = ?", (s,)).fetchone()) for s in seqs]

    def requeue(self, keys: Iterable[str], at: datetime, *, reset_attempts: bool = False) -> int:
        at_ts, at_text = dt_cols(at)
        params = [(at_ts, at_text, at_text, int(reset_attempts), key) for key in dict.fromkeys(keys)]
        if not params:
            return 0
        with self._write() as db:
            return int(db.executemany(rows.REQUEUE, params).rowcount)

    # reporting -------------------------------------------------------------------------------------
    def record(self, at: datetime, kind: str, **detail: Any) -> None:
        with self._write() as db:
            db.execute(rows.PUT_AUDIT, (*dt_cols(at), kind, 0, dumps(detail)))

