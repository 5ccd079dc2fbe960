"""Shared work on a PostgreSQL store: what several workers (``runtime.worker``) do to
the state besides the engine's own writes.

Rules:
- Due waits (``timers``) and due messages (``outbox``) stay in cmtyflow's tables,
  indexed by due time. ``promote_*`` hands them to procrastinate jobs in batches: in
  one transaction it picks due rows not yet handed over (``FOR UPDATE SKIP LOCKED``:
  two promoters never pick the same row), defers one job per batch on the same
  connection and writes each row's ``job``. A crash leaves either all of it or none.
- A hand-over holds while its job is ``todo`` or ``doing``. A row whose job ended
  without consuming it (failed for good, or the row was put back by ``cmtyflow outbox
  retry``) is due for promotion again, so nothing waits on a job that will never run.
- The engine's inputs are serialised by advisory locks of the schema: a wait of a
  member's run takes the ``engine`` lock shared and that member's lock exclusive (so
  waits of different members run in parallel); schedule firings, events and waits of
  campaign runs take the ``engine`` lock exclusive. The reads of an input and the
  writes of its decision happen inside one transaction that holds these locks (a
  batch of waits: one transaction, its members' locks taken in key order).
- Every worker holds the ``runner`` lock shared for its life: a single ``cmtyflow
  run`` on the same schema (which takes it exclusive) is refused while workers run,
  and workers are refused while it runs.
- procrastinate's tables live in the same schema as the state (its functions find
  them through the connection's search_path); they are created on a worker's first
  start, under the schema's migration lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..engine.model import Decision, EventWait, Run, Timer
from ..errors import UserError
from . import rows
from .base import OutboxRow
from .codec import loads
from .pg_migrations import lock_key
from .pg_rows import O_OUTBOX_COLS, due_picks

LIVE_JOB = "SELECT 1 FROM procrastinate_jobs AS j WHERE j.id = {table}.job AND j.status IN ('todo', 'doing')"

PROMOTE_TIMERS = (
    "SELECT timers.id, FALSE FROM timers WHERE timers.due_ts <= %(until)s "
    f"AND (timers.job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='timers')})) "
    "ORDER BY timers.due_ts, timers.id LIMIT %(limit)s FOR UPDATE OF timers SKIP LOCKED"
)
# Due messages not handed to a live job: urgent ones first (as a claim picks them).
PROMOTE_MESSAGES = (
    due_picks(
        f"(outbox.job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='outbox')}))",
        cols="outbox.key, outbox.urgent", lock="FOR UPDATE OF outbox SKIP LOCKED",
    )
    + "SELECT key, urgent FROM urgent UNION ALL SELECT key, urgent FROM later"
)
# Rows left in flight by a send job that has ended (or by no job at all): in doubt.
ORPHANED_INFLIGHT = (
    f"SELECT {', '.join('outbox.' + c.strip() for c in rows.OUTBOX_COLS.split(','))} FROM outbox "
    "WHERE outbox.status = 'inflight' "
    f"AND (outbox.job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='outbox')})) "
    "FOR UPDATE OF outbox SKIP LOCKED"
)
SET_JOBS = {
    table: f"UPDATE {table} SET job = v.job FROM unnest(%s::text[], %s::bigint[]) AS v(id, job) WHERE {table}.{col} = v.id"
    for table, col in (("timers", "id"), ("outbox", "key"))
}
JOB_TIMERS = (
    f"SELECT {', '.join('t.' + c.strip() for c in rows.TIMER_COLS.split(','))}, r.member FROM timers AS t "
    "LEFT JOIN runs AS r ON r.id = t.run WHERE t.id = ANY(%s) ORDER BY t.due_ts, t.id"
)
CLAIM_JOB_MESSAGES = (
    due_picks("outbox.job = %(job)s")
    + "UPDATE outbox AS o SET status = 'inflight' FROM (SELECT seq FROM urgent UNION ALL SELECT seq FROM later) AS pick "
    f"WHERE o.seq = pick.seq RETURNING o.due_ts, o.seq, (SELECT record FROM members WHERE members.id = o.member), "
    f"{O_OUTBOX_COLS}"
)
JOB_INFLIGHT = f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE job = %s AND status = 'inflight' ORDER BY seq"
RELEASE_JOB_MESSAGES = "UPDATE outbox SET job = NULL WHERE job = %s AND status IN ('queued', 'failed')"

# What "stuck" means (docs/scale-out.md): each query must find nothing on a healthy store.
INVARIANTS = {
    "timers due over a minute ago and not handed to a live job": (
        f"SELECT count(*) FROM timers WHERE due_ts < now() - interval '1 minute' "
        f"AND (job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='timers')}))"
    ),
    "messages due over a minute ago and not handed to a live job": (
        f"SELECT count(*) FROM outbox WHERE status IN ('queued', 'failed') AND due_ts < now() - interval '1 minute' "
        f"AND (job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='outbox')}))"
    ),
    "messages in flight without a live job": (
        f"SELECT count(*) FROM outbox WHERE status = 'inflight' "
        f"AND (job IS NULL OR NOT EXISTS ({LIVE_JOB.format(table='outbox')}))"
    ),
    "jobs running on a worker that stopped sending heartbeats": (
        "SELECT count(*) FROM procrastinate_jobs AS j LEFT JOIN procrastinate_workers AS w ON w.id = j.worker_id "
        "WHERE j.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - interval '1 minute')"
    ),
    "jobs that failed for good": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'",
}

# (connection, batches, urgent) -> job ids; ``urgent``: the batches hold urgent messages
Defer = Callable[[Any, Sequence[Sequence[str]], bool], list[int]]


class SharedWork:
    """The shared-work statements of one worker's connection (a ``PostgresStore``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        schema = store.schema
        self.engine_key = lock_key(schema, "engine")
        self.runner_key = lock_key(schema, "runner")
        self.schema = schema

    @property
    def conn(self) -> Any:
        return self.store.conn

    def member_key(self, member: str) -> int:
        return lock_key(self.schema, f"member:{member}")

    # the worker's presence ------------------------------------------------------------------
    def join(self) -> None:
        """Hold the runner lock shared for this connection's life (see the rules)."""
        row = self.conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (self.runner_key,)).fetchone()
        if row is None or not row[0]:
            raise UserError(
                f"a single `cmtyflow run` is using {self.store.url} (schema '{self.schema}'); stop it before "
                "starting workers on the same state"
            )

    # input locks ----------------------------------------------------------------------------
    @contextmanager
    def inputs(self, members: Sequence[str | None]) -> Iterator[None]:
        """One transaction for a batch of inputs: the locks of all their members, taken
        in key order (two batches sharing members never deadlock), or the engine lock
        exclusive when one of them is a campaign's (None)."""
        conn = self.conn
        with conn.transaction():
            if any(m is None for m in members):
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.engine_key,))
            else:
                keys = sorted({self.member_key(m) for m in members if m is not None})
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self.engine_key,))
                conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (keys,))
            yield

    @contextmanager
    def alone(self) -> Iterator[None]:
        """The engine lock exclusive on the session, for a pass of firings and events
        (each input is still its own transaction, as on a single runner)."""
        conn = self.conn
        conn.execute("SELECT pg_advisory_lock(%s)", (self.engine_key,))
        try:
            yield
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.engine_key,))

    # promotion ------------------------------------------------------------------------------
    def _promote(self, pick: str, table: str, now: datetime, defer: Defer, limit: int, batch: int) -> int:
        """Hand rows ``pick`` finds to jobs, ``batch`` per job; urgent rows in batches of
        their own, deferred as urgent (their jobs are fetched before the others)."""
        conn = self.conn
        with conn.transaction():
            found = conn.execute(pick, {"until": now, "limit": limit}).fetchall()
            if not found:
                return 0
            ids: list[str] = []
            jobs: list[int] = []
            for urgent in (True, False):
                picked = [r[0] for r in found if bool(r[1]) is urgent]
                if not picked:
                    continue
                batches = [picked[i:i + batch] for i in range(0, len(picked), batch)]
                for chunk, job in zip(batches, defer(conn, batches, urgent), strict=True):
                    ids.extend(chunk)
                    jobs.extend([job] * len(chunk))
            conn.execute(SET_JOBS[table], (ids, jobs))
        return len(found)

    def promote_timers(self, now: datetime, defer: Defer, *, limit: int = 10_000, batch: int = 100) -> int:
        """Hand due waits to jobs, ``batch`` per job; returns how many were handed over."""
        return self._promote(PROMOTE_TIMERS, "timers", now, defer, limit, batch)

    def promote_messages(self, now: datetime, defer: Defer, *, limit: int = 10_000, batch: int = 200) -> int:
        """Hand due messages to send jobs, ``batch`` per job, urgent ones first."""
        return self._promote(PROMOTE_MESSAGES, "outbox", now, defer, limit, batch)

    def settle_inflight(self, resendable: Callable[[OutboxRow], bool]) -> tuple[list[str], list[OutboxRow]]:
        """Rows left in flight by a send job that has ended (its worker stopped with
        sends abandoned, or it failed for good): back to the queue under their key when
        ``resendable`` or never started (not in ``sending``), else in doubt (SPEC 5.2).
        Returns (keys back in the queue, held rows)."""
        with self.conn.transaction():
            return self._settle([rows.outbox_row(r) for r in self.conn.execute(ORPHANED_INFLIGHT).fetchall()], resendable)

    def settle_job_inflight(self, job: int, resendable: Callable[[OutboxRow], bool]) -> tuple[list[str], list[OutboxRow]]:
        """The rows this send job claimed on an earlier try that did not finish (its
        worker died), settled as ``settle_inflight`` does: only a row whose call to the
        platform began is in doubt (it held every row it had claimed)."""
        with self.conn.transaction():
            found = [rows.outbox_row(r) for r in self.conn.execute(JOB_INFLIGHT, (job,)).fetchall()]
            return self._settle(found, resendable, keep_job=True)

    def _settle(
        self, found: list[OutboxRow], resendable: Callable[[OutboxRow], bool], keep_job: bool = False
    ) -> tuple[list[str], list[OutboxRow]]:
        """``keep_job``: rows back in the queue stay with their job, which sends them now."""
        conn = self.conn
        if found:
            keys = [r.message.key for r in found]
            # Only a row whose call to the platform began is in doubt; one never started
            # goes back to the queue (SPEC 5.2, as at a runner's start: Store.mark_sending).
            started = {r[0] for r in conn.execute("SELECT key FROM sending WHERE key = ANY(%s)", (keys,)).fetchall()}
            resend = [r.message.key for r in found if resendable(r) or r.message.key not in started]
            held = [r for r in found if not resendable(r) and r.message.key in started]
            requeue = "UPDATE outbox SET status = 'queued' WHERE key = ANY(%s)" if keep_job else (
                "UPDATE outbox SET status = 'queued', job = NULL WHERE key = ANY(%s)"
            )
            conn.execute(requeue, (resend,))
            conn.execute(
                "UPDATE outbox SET status = 'in_doubt', job = NULL, attempts = attempts + 1 WHERE key = ANY(%s)", ([r.message.key for r in held],)
            )
            conn.execute("DELETE FROM sending WHERE key = ANY(%s)", (keys,))
            return resend, held
        return [], []

    # a timer job ------------------------------------------------------------------------------
    def job_timers(self, ids: Sequence[str]) -> list[tuple[Timer, str | None]]:
        """The timers among ``ids`` still there (not consumed yet), each with its run's
        member (None: a campaign's run, or a run no longer kept)."""
        found = self.conn.execute(JOB_TIMERS, (list(ids),)).fetchall()
        return [(rows.timer(r[:5]), (r[5] or None)) for r in found]

    def timer_still_there(self, timer_id: str) -> bool:
        """Under the input's locks: a worker that ran this batch before may have consumed it."""
        return self.conn.execute("SELECT 1 FROM timers WHERE id = %s FOR UPDATE", (timer_id,)).fetchone() is not None

    # a send job -------------------------------------------------------------------------------
    def claim_job_messages(self, job: int, until: datetime, limit: int) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        with self.conn.transaction():
            found = self.conn.execute(CLAIM_JOB_MESSAGES, {"job": job, "until": until, "limit": limit}).fetchall()
        found.sort(key=rows.claim_order)
        return [(rows.outbox_row(r[3:]), loads(r[2]) if r[2] is not None else None) for r in found]

    def release_job_messages(self, job: int) -> None:
        """Rows this job leaves to retry later are free for promotion when due."""
        self.conn.execute(RELEASE_JOB_MESSAGES, (job,))

    # checks -----------------------------------------------------------------------------------
    def invariants(self) -> dict[str, int]:
        """How many rows each "stuck" query finds (all zero on a healthy store)."""
        return {name: int(self.conn.execute(sql).fetchone()[0]) for name, sql in INVARIANTS.items()}


def ensure_queue_schema(store: Any) -> bool:
    """Create procrastinate's tables in the state's schema when missing; True if created."""
    from procrastinate import schema as queue_schema

    conn = store.conn
    # pg_tables, not to_regclass: read with a fresh snapshot, it sees what another
    # worker committed while this one waited for the lock (the catalog cache may not).
    exists = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'procrastinate_jobs'"
    if conn.execute(exists, (store.schema,)).fetchone() is not None:
        return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(store.schema),))
        if conn.execute(exists, (store.schema,)).fetchone() is not None:
            return False
        conn.execute(queue_schema.SchemaManager.get_schema())
    return True


# The states of (playbook, member) pairs, read in one statement.
BATCH_STATES = (
    "SELECT s.playbook, s.member, s.state FROM states AS s "
    "JOIN unnest(%s::text[], %s::text[]) AS k(playbook, member) ON s.playbook = k.playbook AND s.member = k.member"
)


class BatchReads:
    """What the engine reads for a batch of waits (``Worker.handle_timers``): the waits'
    runs, their members and their states are read for the whole batch in three
    statements, under the batch's locks, instead of three per wait; every other read
    goes to the store. Whatever a decision applied in the batch writes is forgotten
    (``forget``), so a later wait reads it back from the store, inside the batch's own
    transaction, as it would have without this."""

    def __init__(self, store: Any, run_ids: Sequence[str]) -> None:
        self.store = store
        conn = store.conn
        self._runs: dict[str, Run | None] = dict.fromkeys(run_ids)
        for row in conn.execute(f"SELECT {rows.RUN_COLS} FROM runs WHERE id = ANY(%s)", (list(run_ids),)).fetchall():
            self._runs[row[0]] = rows.run(row)
        found = [run for run in self._runs.values() if run is not None]
        members = sorted({run.member for run in found if run.member is not None})
        self._members: dict[str, dict[str, Any] | None] = dict.fromkeys(members)
        for member_id, record in conn.execute("SELECT id, record FROM members WHERE id = ANY(%s)", (members,)).fetchall():
            self._members[member_id] = loads(record)
        keys = sorted({(run.playbook, rows.who(run.member)) for run in found})
        self._states: dict[tuple[str, str], dict[str, Any]] = {key: {} for key in keys}
        if keys:
            params = ([k[0] for k in keys], [k[1] for k in keys])
            for playbook, member, state in conn.execute(BATCH_STATES, params).fetchall():
                self._states[(playbook, member)] = loads(state)

    def forget(self, decision: Decision) -> None:
        """Drop what ``decision`` (just applied) changed."""
        for run_id in decision.runs:
            self._runs.pop(run_id, None)
        for member_id in decision.members:
            self._members.pop(member_id, None)
        for playbook, member in decision.states:
            self._states.pop((playbook, rows.who(member)), None)

    # StateReader -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run | None:
        if run_id in self._runs:
            return self._runs[run_id]
        return self.store.get_run(run_id)  # type: ignore[no-any-return]

    def get_member(self, member_id: str) -> dict[str, Any] | None:
        if member_id in self._members:
            return self._members[member_id]
        return self.store.get_member(member_id)  # type: ignore[no-any-return]

    def get_state(self, playbook: str, member: str | None) -> dict[str, Any]:
        found = self._states.get((playbook, rows.who(member)))
        return found if found is not None else self.store.get_state(playbook, member)

    def iter_members(self, timezone: str | None = None, default_timezone: str | None = None) -> Iterator[dict[str, Any]]:
        return self.store.iter_members(timezone, default_timezone)  # type: ignore[no-any-return]

    def members_from(
        self, after: int, timezone: str | None = None, default_timezone: str | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        return self.store.members_from(after, timezone, default_timezone)  # type: ignore[no-any-return]

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]:
        return self.store.active_runs(playbook, flow, member)  # type: ignore[no-any-return]

    def event_waits(self, event_type: str, member: str | None) -> Iterable[EventWait]:
        return self.store.event_waits(event_type, member)  # type: ignore[no-any-return]

    def day_count(self, member: str, day: str) -> int:
        return self.store.day_count(member, day)  # type: ignore[no-any-return]

    def exposures(self, playbook: str, member: str) -> Iterable[tuple[str, str, str | None, datetime]]:
        return self.store.exposures(playbook, member)  # type: ignore[no-any-return]

    def queued_starts(self, playbook: str, flow: str, member: str | None) -> list[dict[str, Any]]:
        return self.store.queued_starts(playbook, flow, member)  # type: ignore[no-any-return]
