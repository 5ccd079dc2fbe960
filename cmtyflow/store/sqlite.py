"""The durable Store: one SQLite file in WAL mode (SPEC 5.1, 5.2).

Rules: as ``store.base``, and:
- Every write method is one ``BEGIN IMMEDIATE`` ... ``COMMIT``: ``apply`` (a whole
  decision with what it consumed), ``finish_messages`` (a batch of results and their
  deliveries), ``add_events``. An exception inside rolls all of it back.
- Inputs are not removed when read: ``pending_events``/``take_event`` and
  ``due_timers`` return them and ``apply(consumed_event=, consumed_timer=)`` marks
  them done, in the decision's transaction; a crash before that replays them.
- Other processes may write to the same file (``cmtyflow emit`` adding events): a
  writer waits up to ``busy_timeout`` for the lock; reads see committed data.
- Finished runs are kept with their status (``get_run`` returns them too; the engine
  checks the status), and so are sent and cancelled outbox rows, and every event id.
- One connection per store, used by one thread at a time (open a store per thread).
- Listings (``iter_members``, ``outbox``, ``runs``, ``deliveries``) read in pages, so
  no statement stays open while the caller writes between items.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..engine.model import Decision, Event, EventWait, Run, Timer
from ..errors import UserError
from . import rows
from .base import OUTBOX_STATES, OutboxRow, ScheduleUpdate
from .codec import dt_cols, dt_parse, dt_text, dumps, loads
from .migrations import migrate

PAGE = 1000
MEMBER_BATCH = 500  # ids per ``IN (...)`` when merging member records
RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)  # UPDATE ... RETURNING
REQUEUEABLE = ("in_doubt", "dead", "failed", "cancelled")
FINISH_FIELDS = frozenset({"attempts", "next_attempt", "last_error", "sent_at", "platform_id"})


def _open(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not path.startswith("file:"):
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the state folder: {exc.strerror or exc}") from None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=512)
    except sqlite3.Error as exc:
        raise UserError(f"{path}: cannot open the state database: {exc}") from None
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = OFF")  # no foreign keys: rows refer by id, checked by the engine
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA cache_size = -32768")  # 32 MiB
        migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB" or "not a database" in str(exc):
            raise UserError(f"{path}: not an SQLite database (is --state/CMTYFLOW_STATE the right file?)") from None
        raise UserError(f"{path}: cannot open the state database: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = _open(self.path)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path}: the store is closed")
        return self._db

    def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            if db.in_transaction:  # a caller's own BEGIN left open: nothing of it is kept
                db.execute("ROLLBACK")
            db.execute("PRAGMA busy_timeout = 0")  # never wait at close for another writer
            db.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass  # statistics are an optimisation; closing must not fail for them
        finally:
            db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _paged(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` (its first column ``seq``, ending ``seq > ? ORDER BY seq LIMIT ?``)."""
        last = -(2**63)
        while True:
            page = self.db.execute(sql, (*params, last, PAGE)).fetchall()
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1][0]

    # StateReader ------------------------------------------------------------------------------
    def get_member(self, member_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM members WHERE id = ?", (member_id,)).fetchone()
        return loads(row[0]) if row is not None else None

    def iter_members(self, timezone: str | None = None, default_timezone: str | None = None) -> Iterator[dict[str, Any]]:
        if timezone is None:
            found = self._paged("SELECT seq, record FROM members WHERE seq > ? ORDER BY seq LIMIT ?")
        else:
            sql = "SELECT seq, record FROM members WHERE timezone = ? AND seq > ? ORDER BY seq LIMIT ?"
            found = self._paged(sql, (timezone,))
            if default_timezone == timezone:  # members without a timezone are in the default one
                found = heapq.merge(found, self._paged(sql, ("",)))
        for row in found:
            yield loads(row[1])

    def get_state(self, playbook: str, member: str | None) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT state FROM states WHERE playbook = ? AND member = ?", (playbook, rows.who(member))
        ).fetchone()
        return loads(row[0]) if row is not None else {}

    def get_run(self, run_id: str) -> Run | None:
        row = self.db.execute(f"SELECT {rows.RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return rows.run(row) if row is not None else None

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]:
        found = self.db.execute(
            "SELECT id FROM runs WHERE playbook = ? AND flow = ? AND member = ? AND status = 'active' ORDER BY seq",
            (playbook, flow, rows.who(member)),
        ).fetchall()
        return [r[0] for r in found]

    def event_waits(self, event_type: str, member: str | None) -> Iterable[EventWait]:
        sql = f"SELECT {rows.WAIT_COLS} FROM waits WHERE event_type = ? AND member = ? ORDER BY seq"
        found = self.db.execute(sql, (event_type, "")).fetchall()
        if member is not None:
            found += self.db.execute(sql, (event_type, rows.who(member))).fetchall()
        return [rows.wait(r) for r in found]

    def day_count(self, member: str, day: str) -> int:
        row = self.db.execute("SELECT n FROM day_counts WHERE day = ? AND member = ?", (day, member)).fetchone()
        return int(row[0]) if row is not None else 0

    def exposures(self, playbook: str, member: str) -> Iterable[tuple[str, str, str | None, datetime]]:
        found = self.db.execute(
            "SELECT goal, step, variant, at FROM exposures WHERE playbook = ? AND member = ? AND converted = 0 ORDER BY seq",
            (playbook, member),
        ).fetchall()
        return [(goal, step, variant or None, dt_parse(at)) for goal, step, variant, at in found]

    def queued_starts(self, playbook: str, flow: str, member: str | None) -> list[dict[str, Any]]:
        found = self.db.execute(
            "SELECT record FROM queued_starts WHERE playbook = ? AND flow = ? AND member = ? ORDER BY seq",
            (playbook, flow, rows.who(member)),
        ).fetchall()
        return [loads(r[0]) for r in found]

    # roster -------------------------------------------------------------------------------------
    def put_members(self, members: Iterable[dict[str, Any]]) -> int:
        with self._write() as db:
            return self._put_members(db, members)

    def _put_members(self, db: sqlite3.Connection, members: Iterable[dict[str, Any]]) -> int:
        n = 0
        batch: dict[str, dict[str, Any]] = {}
        zones: set[str] = set()
        for member in members:
            n += 1
            mid = member["id"]
            current = batch.get(mid)
            batch[mid] = {**current, **member} if current is not None else member
            if member.get("timezone"):
                zones.add(member["timezone"])
            if len(batch) >= MEMBER_BATCH:
                self._merge_members(db, batch)
                batch = {}
        if batch:
            self._merge_members(db, batch)
        if zones:
            db.executemany("INSERT OR IGNORE INTO zones (timezone) VALUES (?)", [(z,) for z in zones])
        return n

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

    def member_timezones(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT timezone FROM zones")}

    def member_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM members").fetchone()[0])

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
                db.executemany(rows.PUT_STATE, [(pb, rows.who(m), dumps(s)) for (pb, m), s in d.states.items()])
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
                _count(counts, "duplicate_messages", len(d.messages) - added)
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
                _count(counts, "duplicate_events", len(d.emitted) - self._add_events(db, d.emitted))
            if d.notes:
                db.executemany(rows.PUT_AUDIT, map(rows.note_params, d.notes))
            if schedules:
                self._set_schedules(db, schedules)
            if consumed_event is not None:
                db.execute("UPDATE events SET status = 'done' WHERE id = ?", (consumed_event,))
                _count(counts, "events_processed", 1)
            if counts:
                db.executemany(rows.ADD_COUNTER, [(k, v) for k, v in counts.items() if v])

    # inputs ---------------------------------------------------------------------------------------
    def _add_events(self, db: sqlite3.Connection, events: Iterable[Event]) -> int:
        return int(db.executemany(rows.PUT_EVENT, map(rows.event_params, events)).rowcount)

    def add_event(self, event: Event) -> bool:
        return self.add_events([event])[0] == 1

    def add_events(self, events: Iterable[Event]) -> tuple[int, int]:
        events = list(events)
        with self._write() as db:
            accepted = self._add_events(db, events) if events else 0
            duplicates = len(events) - accepted
            if duplicates:
                db.execute(rows.ADD_COUNTER, ("duplicate_events", duplicates))
        return accepted, duplicates

    def next_event_at(self) -> datetime | None:
        row = self.db.execute(
            "SELECT at FROM events WHERE status = 'queued' ORDER BY at_ts, seq LIMIT 1"
        ).fetchone()
        return dt_parse(row[0]) if row is not None else None

    def pending_events(self, until: datetime, limit: int = 1000) -> list[Event]:
        found = self.db.execute(
            f"SELECT {rows.EVENT_COLS} FROM events WHERE status = 'queued' AND at_ts <= ? ORDER BY at_ts, seq LIMIT ?",
            (until.timestamp(), limit),
        ).fetchall()
        return [rows.event(r) for r in found]

    def take_event(self, event_id: str) -> Event | None:
        row = self.db.execute(
            f"SELECT {rows.EVENT_COLS} FROM events WHERE id = ? AND status = 'queued'", (event_id,)
        ).fetchone()
        return rows.event(row) if row is not None else None

    def next_timer_due(self) -> datetime | None:
        row = self.db.execute("SELECT due FROM timers ORDER BY due_ts, id LIMIT 1").fetchone()
        return dt_parse(row[0]) if row is not None else None

    def due_timers(self, until: datetime, limit: int = 1000) -> list[Timer]:
        found = self.db.execute(
            f"SELECT {rows.TIMER_COLS} FROM timers WHERE due_ts <= ? ORDER BY due_ts, id LIMIT ?",
            (until.timestamp(), limit),
        ).fetchall()
        return [rows.timer(r) for r in found]

    def upcoming_timers(self, limit: int = 20) -> list[Timer]:
        found = self.db.execute(
            f"SELECT {rows.TIMER_COLS} FROM timers ORDER BY due_ts, id LIMIT ?", (limit,)
        ).fetchall()
        return [rows.timer(r) for r in found]

    def schedule_positions(self) -> dict[tuple[str, str, str], datetime | None]:
        found = self.db.execute("SELECT playbook, trigger, zone, next_due FROM schedules ORDER BY seq")
        return {(pb, t, z): dt_parse(due) if due is not None else None for pb, t, z, due in found}

    def set_schedules(self, updates: Iterable[ScheduleUpdate]) -> None:
        with self._write() as db:
            self._set_schedules(db, updates)

    def _set_schedules(self, db: sqlite3.Connection, updates: Iterable[ScheduleUpdate]) -> None:
        db.executemany(rows.PUT_SCHEDULE, [
            (u.playbook, u.trigger, u.zone, *(dt_cols(u.next_due) if u.next_due else (None, None)))
            for u in updates
        ])

    # outbox ----------------------------------------------------------------------------------------
    def next_message_due(self) -> datetime | None:
        best: tuple[float, str] | None = None
        for status in ("queued", "failed"):
            row: tuple[float, str] | None = self.db.execute(
                "SELECT due_ts, due FROM outbox WHERE status = ? ORDER BY due_ts LIMIT 1", (status,)
            ).fetchone()
            if row is not None and (best is None or row[0] < best[0]):
                best = row
        return dt_parse(best[1]) if best is not None else None

    def claim_due_messages(self, until: datetime, limit: int = 1000) -> list[OutboxRow]:
        params = (until.timestamp(), limit)
        with self._write() as db:
            if RETURNING:
                found = db.execute(
                    f"UPDATE outbox SET status = 'inflight' WHERE seq IN ({rows.DUE_SEQS}) "
                    f"RETURNING due_ts, seq, {rows.OUTBOX_COLS}", params,
                ).fetchall()
            else:  # SQLite before 3.35: the same in three statements, still one transaction
                seqs = [(r[0],) for r in db.execute(rows.DUE_SEQS, params)]
                db.executemany("UPDATE outbox SET status = 'inflight' WHERE seq = ?", seqs)
                found = [db.execute(f"SELECT due_ts, seq, {rows.OUTBOX_COLS} FROM outbox WHERE seq = ?", s).fetchone() for s in seqs]
        found.sort(key=lambda r: (r[0], r[1]))
        return [rows.outbox_row(r[2:]) for r in found]

    def finish_messages(self, results: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        plan = [self._finish_params(key, status, fields) for key, status, fields in results]
        if not plan:
            return
        with self._write() as db:
            # Consecutive results of the same shape share one statement (group commit).
            for sql, group in itertools.groupby(plan, key=lambda p: p[0]):
                params = [p[1] for p in group]
                changed = db.executemany(sql, params).rowcount
                if changed != len(params):
                    missing = [p[-1] for p in params if not db.execute("SELECT 1 FROM outbox WHERE key = ?", (p[-1],)).fetchone()]
                    raise KeyError(f"no outbox row with key {missing[0] if missing else '?'}")
            sent = [p[2] for p in plan if p[2] is not None]
            if sent:
                db.executemany(rows.PUT_DELIVERY, sent)
                db.execute(rows.ADD_COUNTER, ("messages_sent", len(sent)))

    @staticmethod
    def _finish_params(key: str, status: str, fields: dict[str, Any]) -> tuple[str, tuple[Any, ...], tuple[Any, ...] | None]:
        """(UPDATE statement, its parameters, the delivery's parameters when sent)."""
        if status not in OUTBOX_STATES:
            raise ValueError(f"not an outbox status: {status!r}")
        params: list[Any] = [status]
        for name, value in fields.items():
            if name not in FINISH_FIELDS:
                raise ValueError(f"not an outbox field: {name!r}")
            params.append(dt_text(value) if isinstance(value, datetime) else value)
        retry = fields.get("next_attempt") if status in ("failed", "queued") else None
        if retry is not None:
            params += dt_cols(retry)
        params.append(key)
        delivery = None
        if status == "sent":
            sent_at = fields.get("sent_at")
            delivery = (*dt_cols(sent_at), key) if sent_at is not None else (None, None, key)
        return _finish_sql(tuple(fields), retry is not None), tuple(params), delivery

    def outbox(self, statuses: Iterable[str] | None = None) -> Iterator[OutboxRow]:
        if statuses is None:
            found = self._paged(f"SELECT seq, {rows.OUTBOX_COLS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
        else:
            wanted = list(statuses)
            marks = ",".join("?" * len(wanted))
            found = self._paged(
                f"SELECT seq, {rows.OUTBOX_COLS} FROM outbox WHERE status IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?",
                tuple(wanted),
            )
        for row in found:
            yield rows.outbox_row(row[1:])

    def outbox_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for status, n in self.db.execute("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[status] = n
        return counts

    def mark_in_doubt(self) -> list[OutboxRow]:
        with self._write() as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM outbox WHERE status = 'inflight' ORDER BY seq")]
            db.executemany("UPDATE outbox SET status = 'in_doubt' WHERE seq = ?", [(s,) for s in seqs])
            return [rows.outbox_row(db.execute(f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE seq = ?", (s,)).fetchone()) for s in seqs]

    def requeue(self, keys: Iterable[str], at: datetime, *, reset_attempts: bool = False) -> int:
        at_ts, at_text = dt_cols(at)
        params = [(at_ts, at_text, at_text, int(reset_attempts), key) for key in dict.fromkeys(keys)]
        if not params:
            return 0
        with self._write() as db:
            return int(db.executemany(rows.REQUEUE, params).rowcount)

    def find_messages(self, prefix: str) -> list[OutboxRow]:
        if not prefix:
            return list(self.outbox())
        params: tuple[Any, ...]
        if ord(prefix[-1]) < 0xD7FF:  # a key range on the unique index (keys are hex)
            sql = f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE key >= ? AND key < ? ORDER BY seq"
            params = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        else:
            sql = f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE substr(key, 1, ?) = ? ORDER BY seq"
            params = (len(prefix), prefix)
        return [rows.outbox_row(r) for r in self.db.execute(sql, params).fetchall()]

    def deliveries(self, playbook: str | None = None) -> Iterator[dict[str, Any]]:
        if playbook is None:
            found = self._paged(f"{rows.DELIVERIES} WHERE d.seq > ? ORDER BY d.seq LIMIT ?")
        else:
            found = self._paged(f"{rows.DELIVERIES} WHERE d.playbook = ? AND d.seq > ? ORDER BY d.seq LIMIT ?", (playbook,))
        for row in found:
            yield rows.delivery(row[1:])

    # reporting -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {name: value for name, value in self.db.execute("SELECT name, value FROM counters")}

    def notes(self) -> list[dict[str, Any]]:
        return [loads(r[0]) for r in self.db.execute("SELECT detail FROM audit WHERE note = 1 ORDER BY seq")]

    def record(self, at: datetime, kind: str, **detail: Any) -> None:
        with self._write() as db:
            db.execute(rows.PUT_AUDIT, (*dt_cols(at), kind, 0, dumps(detail)))

    def audit(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, params = "", []
        if kinds is not None:
            wanted = list(kinds)
            where = f"WHERE kind IN ({','.join('?' * len(wanted))})"
            params = wanted
        if limit is None:
            found = self.db.execute(f"SELECT at, kind, note, detail FROM audit {where} ORDER BY seq", params).fetchall()
        else:
            found = self.db.execute(
                f"SELECT at, kind, note, detail FROM audit {where} ORDER BY seq DESC LIMIT ?", [*params, limit]
            ).fetchall()
            found.reverse()
        return [rows.audit_entry(r) for r in found]

    def goal_stats(self) -> dict[tuple[str, str, str, str | None], tuple[int, int]]:
        converted = {
            (pb, goal, step, variant): n
            for pb, goal, step, variant, n in self.db.execute(
                "SELECT playbook, goal, step, variant, count(*) FROM conversions GROUP BY playbook, goal, step, variant"
            )
        }
        return {
            (pb, goal, step, variant or None): (n, converted.get((pb, goal, step, variant), 0))
            for pb, goal, step, variant, n in self.db.execute(
                "SELECT playbook, goal, step, variant, count(*) FROM exposures GROUP BY playbook, goal, step, variant ORDER BY min(seq)"
            )
        }

    def runs(self, *, status: str | None = "active", playbook: str | None = None) -> Iterator[Run]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if playbook is not None:
            where.append("playbook = ?")
            params.append(playbook)
        where.append("seq > ?")
        sql = f"SELECT seq, {rows.RUN_COLS} FROM runs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        for row in self._paged(sql, tuple(params)):
            yield rows.run(row[1:])

    def states(self, playbook: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
        found = self.db.execute("SELECT member, state FROM states WHERE playbook = ? ORDER BY seq", (playbook,)).fetchall()
        for member, state in found:
            yield (member or None), loads(state)


@functools.lru_cache(maxsize=64)
def _finish_sql(fields: tuple[str, ...], moves_due: bool) -> str:
    sets = ["status = ?", *(f"{name} = ?" for name in fields)]
    if moves_due:  # a retry (or a row put back) is due again at next_attempt
        sets.append("due_ts = ?, due = ?")
    return f"UPDATE outbox SET {', '.join(sets)} WHERE key = ?"


def _count(counts: dict[str, int], name: str, n: int) -> None:
    if n:
        counts[name] = counts.get(name, 0) + n
