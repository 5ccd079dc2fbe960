"""The durable Store on PostgreSQL (SPEC 5.1: ``--state postgresql://...``).

Rules: as ``store.base`` and as ``store.sqlite`` (the same semantics; the contract
suite runs on both), and:
- The reads (and the few writes) both share are ``store.sqlbase``'s, written in
  SQLite's ``?`` style and converted once each (``sqlbase.pyformat``).
- One psycopg 3 connection per store, used by one thread at a time. It is in
  autocommit mode, as the SQLite connection is: a read is one statement; every write
  method is one explicit transaction (``apply``, ``finish_messages``, ``add_events``,
  ...), rolled back whole on an exception.
- Bulk writes (a daily firing's 100,000 runs, messages and timers in one ``apply``)
  go by binary COPY into staging tables, a few rows by prepared statements
  (``pg_rows.Bulk``); a batch of outbox results is one UPDATE over arrays.
- ``claim_due_messages`` and ``due_timers`` lock what they pick with
  ``FOR UPDATE SKIP LOCKED``: rows another process is claiming or consuming are
  skipped, not waited for. Several runners on one store need more than that (see
  docs/scale-out.md): until then the first of the runner's own writes (``apply``,
  ``set_schedules``, ``claim_due_messages``, ``finish_messages``, ``mark_in_doubt``)
  takes a session advisory lock held until ``close``, and is refused (``UserError``)
  while another store holds it, as the lock file does for SQLite. Other commands
  (``emit``, imports, ``requeue``, reads) write alongside. ``exclusive=False`` skips
  the lock (tests of several claimers).
- Everything lives in one schema (default ``cmtyflow``), created and migrated at
  open; connection problems are ``UserError``s and a password never appears in a
  message or a repr (``pg_connect``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..engine.model import Decision, Event, Timer
from ..errors import UserError
from . import pg_rows, rows
from .base import OutboxRow, ScheduleUpdate
from .codec import dt_parse, dt_text, dumps, loads
from .pg_connect import connect, mask_url, split_schema
from .pg_migrations import lock_key
from .sqlbase import REQUEUE_UNSTARTED, SqlStore, count, finish_params, finish_sql, pyformat

COPY_MIN = 64  # rows from which a bulk write goes by COPY
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open on the connection
SORT_IN_MEMORY = 10_000  # staged rows from which a write raises its work_mem


class PostgresStore(SqlStore):
    MEMBER_BATCH = 5000  # members merged per round trip

    def __init__(self, url: str, *, schema: str | None = None, exclusive: bool = True, must_exist: bool = False) -> None:
        libpq_url, self.schema = split_schema(url, schema)
        self.url = mask_url(url)  # for messages: never the password
        self._conn: Any = connect(libpq_url, self.schema, self.url, must_exist=must_exist)
        self._stages: set[str] = set()  # staging tables this connection has
        self._used: set[str] = set()  # staging tables filled in the current transaction
        self._runner = not exclusive  # holds the runner's advisory lock (or needs none)
        self._held_counts: dict[str, int] | None = None  # see counters_at_end
        self._joined = False  # the current write joined a caller's transaction (see _write)

    @property
    def conn(self) -> Any:
        if self._conn is None:
            raise RuntimeError(f"{self.url}: the store is closed")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # a transaction left open is rolled back by the server

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, schema={self.schema!r})"

    @contextmanager
    def _write(self, *, runner: bool = False) -> Iterator[Any]:
        """One transaction; ``runner``: one of the runner's own writes (see the rules)."""
        conn = self.conn
        if runner and not self._runner:
            self._hold_runner_lock()
        joined = self._joined = conn.info.transaction_status != _IDLE
        if not joined:
            self._used = set()
        try:
            if joined:
                # Inside a caller's transaction (a worker's batch of inputs): the writes
                # join it, with no savepoint of their own (two round trips an input; an
                # error rolls the whole batch back), and a staging table filled earlier
                # in it is emptied before it is filled again (``_used`` is kept).
                with conn.cursor() as cur:
                    yield cur
            else:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
        except BaseException:
            self._stages.clear()  # created in the rolled-back transaction, maybe
            raise

    def _bulk(self, cur: Any, bulk: pg_rows.Bulk, params: list[tuple[Any, ...]]) -> int:
        """Write ``params`` as ``bulk`` says; returns the rows inserted or updated."""
        if not params:
            return 0
        if len(params) == 1:  # the usual single input: no pipeline set up for one statement
            cur.execute(bulk.insert, params[0])
            return int(cur.rowcount)
        if len(params) < COPY_MIN:
            cur.executemany(bulk.insert, params)
            return int(cur.rowcount)
        if len(params) >= SORT_IN_MEMORY and "work_mem" not in self._used:
            # The merge sorts the staged rows (to keep their order): in memory, not on disk.
            cur.execute("SET LOCAL work_mem = '128MB'")
            self._used.add("work_mem")
        if bulk.stage not in self._stages:
            cur.execute(bulk.create_stage)  # IF NOT EXISTS
            if not self._joined:  # one made in a caller's transaction goes if that rolls back
                self._stages.add(bulk.stage)
        if bulk.stage in self._used:
            cur.execute(f"TRUNCATE {bulk.stage}")
        self._used.add(bulk.stage)
        with cur.copy(bulk.copy) as copy:
            copy.set_types(bulk.copy_types)
            for n, p in enumerate(params):
                copy.write_row((n, *p))
        cur.execute(bulk.merge)
        return int(cur.rowcount)

    # the primitives of ``SqlStore``: they take its ``?`` statements (``pg_rows``' own, in psycopg's
    # ``%s`` style already, go to ``self.conn`` as they are) ---------------------------------------
    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(pyformat(sql), params).fetchall()  # type: ignore[no-any-return]

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(pyformat(sql), params).fetchone()  # type: ignore[no-any-return]

    @staticmethod
    def _in(column: str, values: Iterable[Any]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(?)", (list(values),)

    @staticmethod
    def _at_cols(value: datetime) -> tuple[datetime, str]:
        return value, dt_text(value)

    # the writes of ``SqlStore`` -----------------------------------------------------------------
    def _merge_members(self, cur: Any, batch: dict[str, dict[str, Any]]) -> None:
        cur.execute("SELECT id, record FROM members WHERE id = ANY(%s)", (list(batch),))
        for mid, record in cur.fetchall():
            batch[mid] = {**loads(record), **batch[mid]}
        self._bulk(cur, pg_rows.MEMBERS, [(mid, m.get("timezone") or "", dumps(m)) for mid, m in batch.items()])

    def _put_zones(self, cur: Any, zones: set[str]) -> None:
        self._bulk(cur, pg_rows.ZONES, [(z,) for z in sorted(zones)])

    def _add_counter(self, cur: Any, name: str, n: int) -> None:
        self._bulk(cur, pg_rows.COUNTERS, [(name, n)])

    RUN_VERSION = "(body::json ->> 0)"

    def _run(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(cur.execute(pyformat(sql), params).rowcount)

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
        with self._write(runner=True) as cur:
            # The same order as SqliteStore.apply: cancellations before the new timers and waits.
            if consumed_timer is not None:
                cur.execute("DELETE FROM timers WHERE id = %s", (consumed_timer,))
            if d.cancel_timers_of:
                cur.execute("DELETE FROM timers WHERE run = ANY(%s)", (list(d.cancel_timers_of),))
            if d.cancel_waits_of:
                cur.execute("DELETE FROM waits WHERE run = ANY(%s)", (list(d.cancel_waits_of),))
            if d.members:
                self._put_members(cur, d.members.values())
            if d.states:
                # As SQLite's apply: a state still empty gets no row.
                self._bulk(cur, pg_rows.STATES, [(pb, rows.who(m), dumps(s)) for (pb, m), s in d.states.items() if s])
            if d.runs:
                self._bulk(cur, pg_rows.RUNS, [pg_rows.run_params(r) for r in d.runs.values()])
            if d.timers:
                self._bulk(cur, pg_rows.TIMERS, pg_rows.unique_last(map(pg_rows.timer_params, d.timers), 0))
            if d.waits:
                # (run, playbook, event_type, member, where): one per (event_type, member, run)
                self._bulk(cur, pg_rows.WAITS, pg_rows.unique_last(map(rows.wait_params, d.waits), 2, 3, 0))
            if d.day_counts:
                self._bulk(cur, pg_rows.DAY_COUNTS, [(day, m, n) for (m, day), n in d.day_counts.items()])
            if d.messages:
                added = self._bulk(cur, pg_rows.MESSAGES, [pg_rows.message_params(m) for m in d.messages])
                count(counts, "duplicate_messages", len(d.messages) - added)
            if d.queued_starts:
                self._bulk(cur, pg_rows.QUEUED_STARTS, [rows.queued_start_params(r) for r in d.queued_starts])
            if d.dequeued:
                cur.execute("DELETE FROM queued_starts WHERE id = ANY(%s)", (list(d.dequeued),))
            if d.exposures:
                self._bulk(cur, pg_rows.EXPOSURES, [
                    (pb, goal, step, variant or "", member, at, dt_text(at))
                    for pb, goal, member, step, variant, at in d.exposures
                ])
            if d.conversions:
                params = [(pb, goal, step, variant or "", member) for pb, goal, member, step, variant in d.conversions]
                self._bulk(cur, pg_rows.CONVERSIONS, params)
                cur.executemany(pg_rows.CONVERT_EXPOSURE, params)
            if d.emitted:
                count(counts, "duplicate_events", len(d.emitted) - self._add_events(cur, d.emitted))
            if d.notes:
                self._bulk(cur, pg_rows.AUDIT, [pg_rows.note_params(n) for n in d.notes])
            if schedules:
                self._set_schedules(cur, schedules)
            if consumed_event is not None:
                cur.execute("UPDATE events SET status = 'done' WHERE id = %s", (consumed_event,))
                count(counts, "events_processed", 1)
            if counts and self._held_counts is not None:
                for k, v in counts.items():
                    self._held_counts[k] = self._held_counts.get(k, 0) + v
            elif counts:
                self._bulk(cur, pg_rows.COUNTERS, [(k, v) for k, v in counts.items() if v])

    @contextmanager
    def counters_at_end(self) -> Iterator[None]:
        """Inside a caller's transaction that applies several decisions: their counters
        are added once, at the end. Every input updates the same few counter rows, and a
        row updated early would stay locked until the commit, so concurrent batches
        would run one after the other (``runtime.worker``)."""
        self._held_counts = {}
        try:
            yield
            held = {k: v for k, v in self._held_counts.items() if v}
            if held:
                with self._write(runner=True) as cur:
                    self._bulk(cur, pg_rows.COUNTERS, sorted(held.items()))  # key order: no deadlock
        finally:
            self._held_counts = None

    # inputs ---------------------------------------------------------------------------------------
    def _add_events(self, cur: Any, events: Iterable[Event]) -> int:
        return self._bulk(cur, pg_rows.EVENTS, [pg_rows.event_params(e) for e in events])

    def due_timers(self, until: datetime, limit: int = 1000) -> list[Timer]:
        return [rows.timer(r) for r in self.conn.execute(pg_rows.DUE_TIMERS, (until, limit)).fetchall()]

    def set_schedules(self, updates: Iterable[ScheduleUpdate]) -> None:
        with self._write(runner=True) as cur:
            self._set_schedules(cur, updates)

    def _set_schedules(self, cur: Any, updates: Iterable[ScheduleUpdate]) -> None:
        params = (
            (u.playbook, u.trigger, u.zone, *pg_rows.at_cols(u.next_due), u.after,
             dt_text(u.started) if u.started is not None else None, dt_text(u.last) if u.last is not None else None)
            for u in updates
        )
        self._bulk(cur, pg_rows.SCHEDULES, pg_rows.unique_last(params, 0, 1, 2))

    # outbox ----------------------------------------------------------------------------------------
    def next_message_due(self) -> datetime | None:
        row = self.conn.execute(pg_rows.NEXT_DUE).fetchone()
        return dt_parse(row[0]) if row is not None else None

    def claim_due_messages(self, until: datetime, limit: int = 1000) -> list[OutboxRow]:
        return [row for row, _ in self._claim(pg_rows.CLAIM_ROWS, until, limit)]

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        return self._claim(pg_rows.CLAIM_WITH_MEMBERS, until, limit)

    def _claim(self, sql: str, until: datetime, limit: int) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        with self._write(runner=True) as cur:
            found = cur.execute(sql, {"until": until, "limit": limit}).fetchall()
        found.sort(key=rows.claim_order)
        return [(rows.outbox_row(r[3:]), loads(r[2]) if r[2] is not None else None) for r in found]

    def finish_messages(self, results: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        plan = [finish_params(key, status, fields, self._at_cols) for key, status, fields in results]
        if not plan:
            return
        with self._write(runner=True) as cur:
            # Consecutive results of the same shape share one statement (group commit).
            for shape, group in itertools.groupby(plan, key=lambda p: p[0]):
                params = [p[1] for p in group]
                keys = [p[-1] for p in params]
                if len(params) == 1 or len(set(keys)) < len(keys):  # one by one: the last result wins
                    cur.executemany(pyformat(finish_sql(*shape)), params)
                else:  # one statement for the group: the columns as arrays
                    cur.execute(_finish_many_sql(*shape), [list(col) for col in zip(*params, strict=True)])
                if cur.rowcount != len(params):
                    cur.execute("SELECT key FROM outbox WHERE key = ANY(%s)", (keys,))
                    have = {r[0] for r in cur.fetchall()}
                    missing = [k for k in keys if k not in have]
                    raise KeyError(f"no outbox row with key {missing[0] if missing else '?'}")
            sent = [p[2] for p in plan if p[2] is not None]
            if sent:
                # Each delivery from its outbox row just updated, in the order of the results.
                cur.execute(pg_rows.PUT_DELIVERIES, [list(col) for col in zip(*sent, strict=True)])
                self._add_counter(cur, "messages_sent", len(sent))
            self._forget_sending(cur, (p[1][-1] for p in plan))

    def _hold_runner_lock(self) -> None:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.schema, "runner"),)).fetchone()
        if row is None or not row[0]:
            raise UserError(
                f"another runner, or workers, are using {self.url} (schema '{self.schema}'); stop them first (a "
                "process that died frees it within a minute), or share the state with `cmtyflow worker` processes"
            )
        self._runner = True

    def requeue_unstarted(self) -> int:
        # The runner's: no worker may be sending (its rows wait for their start) meanwhile.
        with self._write(runner=True) as cur:
            return self._run(cur, REQUEUE_UNSTARTED)

    def mark_in_doubt(self) -> list[OutboxRow]:
        with self._write(runner=True) as cur:
            found = cur.execute(
                f"UPDATE outbox SET status = 'in_doubt', attempts = attempts + 1 WHERE status = 'inflight' "
                f"RETURNING seq, {rows.OUTBOX_COLS}"
            ).fetchall()
            cur.execute("DELETE FROM sending")
        found.sort(key=lambda r: r[0])
        return [rows.outbox_row(r[1:]) for r in found]

    def requeue(self, keys: Iterable[str], at: datetime, *, reset_attempts: bool = False) -> int:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0
        text = dt_text(at)
        with self._write() as cur:
            cur.execute(pg_rows.REQUEUE, (at, text, text, reset_attempts, wanted))
            return int(cur.rowcount)

    # reporting -------------------------------------------------------------------------------------
    def record(self, at: datetime, kind: str, **detail: Any) -> None:
        with self._write() as cur:
            self._bulk(cur, pg_rows.AUDIT, [(at, dt_text(at), kind, False, dumps(detail))])


_FINISH_TYPES = {"attempts": "integer", "next_attempt": "text", "last_error": "text", "sent_at": "text",
                 "platform_id": "text"}


@functools.lru_cache(maxsize=64)
def _finish_many_sql(fields: tuple[str, ...], moves_due: bool) -> str:
    """``sqlbase.finish_sql`` for many rows: its parameters, column by column, as arrays."""
    columns = ["status", *fields, *(("due_ts", "due") if moves_due else ())]
    types = ["text", *(_FINISH_TYPES[f] for f in fields), *(("timestamptz", "text") if moves_due else ())]
    arrays = ", ".join(f"%b::{t}[]" for t in [*types, "text"])  # binary: no quoting to scan for
    sets = ", ".join(f"{c} = v.{c}" for c in columns)
    return f"UPDATE outbox AS o SET {sets} FROM unnest({arrays}) AS v({', '.join([*columns, 'key'])}) WHERE o.key = v.key"
