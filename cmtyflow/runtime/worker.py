"""Several workers on one PostgreSQL state (``cmtyflow worker``), on procrastinate.

Rules (docs/scale-out.md says what each guarantees):
- Each worker process runs a procrastinate worker on the state's schema, and every
  worker can do every job. Jobs:
  - ``cmtyflow.tick`` (a periodic task, every second; procrastinate defers it once per
    second however many workers run, and its lock runs one at a time): hands due
    waits to timer jobs, takes schedule firings and events (``Driver`` without waits,
    under the engine lock), hands due messages to send jobs, and settles messages left
    in flight by a send job that has ended (in doubt, as at a runner's start).
  - ``cmtyflow.timers`` (a batch of due waits): each wait in its own transaction under
    its member's lock (``store.pg_shared``): waits of different members in parallel.
  - ``cmtyflow.send`` (a batch of due messages): the dispatcher over the batch's rows;
    rows an earlier try of the same job left in flight (its worker died) are resent
    under their key or held in doubt first, as ``Dispatcher.recover_in_doubt`` does.
  - ``cmtyflow.recover`` (periodic, every 5 s): jobs of a worker that stopped sending
    heartbeats are put back to run again (procrastinate's stalled-job retry).
- Every job, the recovery included, is run again when it fails on a lost connection.
- SPEC 5.6 order at an instant is kept: firings and events due at an instant are taken
  only once no wait due at or before it is left (the waits' jobs run first).
  Events a wait's run emits are taken by the next tick, not within the wait's job.
- Long waits stay in cmtyflow's own tables (timers, outbox) until due; procrastinate
  schedules nothing further ahead than a job's own retry after a database error.
- A database that goes away (restart, failover) costs retries, not work: a job that
  fails on a connection error runs again; the worker reconnects and starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from ..clock import Clock
from ..engine.core import Engine
from ..engine.model import Decision, TimerDue
from ..engine.program import Program
from ..errors import UserError
from ..loader import LoadResult
from ..store.base import OutboxRow
from ..store.pg_connect import ConnectFailed, split_schema
from ..store.pg_shared import BatchReads, SharedWork, ensure_queue_schema
from ..store.postgres import PostgresStore
from . import driver as driver_module
from . import versions
from .channels import ChannelSet
from .dispatch import Dispatcher, DispatchStats, Log, no_log, resendable
from .driver import PASS_INPUTS, Driver
from .prepare import adapter_formats
from .runner import DecisionLog, add_stats, summary

QUEUE = "cmtyflow"
TICK_TASK = "cmtyflow.tick"
TIMERS_TASK = "cmtyflow.timers"
SEND_TASK = "cmtyflow.send"
RECOVER_TASK = "cmtyflow.recover"
# Jobs are fetched by priority, then in order: the tick (which hands work out) and the
# recovery never wait behind a backlog of batches, and messages made by resumed waits
# go out while the rest of the waits are still being taken.
# Urgent messages (a crisis page) are sent in jobs of their own, before other sends.
PRIORITY = {"tick": 20, "urgent": 15, "send": 10, "timers": 0}


STALLED_AFTER = 10.0  # seconds without a heartbeat after which a worker counts as gone


class StorePool:
    """This process's store connections, one per job running at a time (a
    ``PostgresStore`` is used by one thread at a time); a broken one is dropped."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema
        self._free: list[PostgresStore] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def store(self) -> Iterator[PostgresStore]:
        with self._lock:
            store = self._free.pop() if self._free else None
        import psycopg

        if store is None:
            try:
                store = PostgresStore(self.url, schema=self.schema, exclusive=False)
            except ConnectFailed as exc:
                # The server is restarting: a job that meets it is retried (a periodic one
                # ends, and the next does its work), as one cut off midway is; it failed
                # for good, a stuck job in `cmtyflow status`.
                raise psycopg.OperationalError(str(exc)) from None

        cut_off = False
        try:
            yield store
        except psycopg.OperationalError:
            conn = store._conn
            if conn is None or conn.closed or conn.broken:
                # The server went away (a restart): the idle connections are as dead as
                # this one, and each would fail the next job handed it. (A deadlock or a
                # serialization failure is an OperationalError too, on a live connection.)
                cut_off = True
                self.close()
            raise
        finally:
            conn = store._conn
            if cut_off or conn is None or conn.closed or conn.broken:
                store.close()
            else:
                with self._lock:
                    self._free.append(store)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for store in free:
            store.close()


class _TickDriver(Driver):
    """Firings and events only; an instant waits for the waits due at or before it."""

    handles_timers = False

    def _may_take(self, instant: datetime) -> bool:
        waits = self.store.next_timer_due()
        return waits is None or waits > instant  # their jobs run first; a later tick goes on


class _JobRows:
    """The store as one send job's dispatcher sees it: it claims the job's rows only."""

    def __init__(self, store: PostgresStore, shared: SharedWork, job: int) -> None:
        self._store = store
        self._shared = shared
        self._job = job

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> list[tuple[OutboxRow, Any]]:
        return self._shared.claim_job_messages(self._job, until, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Worker:
    def __init__(
        self,
        result: LoadResult,
        programs: list[Program],
        url: str,
        channels: ChannelSet,
        clock: Clock,
        *,
        schema: str | None = None,
        jobs: int = 4,
        concurrency: int = 16,
        drain: float = 10.0,
        log: Log | None = None,
        timer_batch: int = 100,
        send_batch: int = 200,
        heartbeat: float = 2.0,
        stalled_after: float = STALLED_AFTER,
    ) -> None:
        self.result = result
        self.programs = programs
        self.url = url
        self.schema = split_schema(url, schema)[1]
        self.channels = channels
        self.clock = clock
        self.jobs = jobs
        self.concurrency = concurrency
        self.drain = drain
        self.log: Log = log or no_log
        self.timer_batch = timer_batch
        self.send_batch = send_batch
        self.heartbeat = heartbeat
        self.stalled_after = stalled_after
        self.pool = StorePool(url, schema)
        self.policies = {p.name: p.playbook.policies for p in programs}
        self.engine = Engine(programs)
        self.totals = DispatchStats()
        self.inputs = 0
        self._stopping = False
        self._task: asyncio.Task[Any] | None = None
        self._dispatchers: set[Dispatcher] = set()
        self._presence: PostgresStore | None = None
        self._count_lock = threading.Lock()
        # The decisions' log lines: a tick's (one tick at a time: its firing's chunks add
        # up) and the jobs' (under ``_count_lock``).
        self._tick_decisions = DecisionLog(self.log)
        self._job_decisions = DecisionLog(self.log)
        self._firing_under_way = False
        self._zones_seen = -1  # member timezones when this worker's tick last took the engine
        self._abandoned_noted: set[tuple[str, str, str]] = set()  # see Driver.abandoned_noted
        self.app = self._build_app()

    # procrastinate ------------------------------------------------------------------------------
    def _build_app(self) -> Any:
        import procrastinate
        import psycopg
        from procrastinate.manager import JobManager

        libpq_url, schema = split_schema(self.url, self.schema)
        # Quoted: the server folds an unquoted name to lower case (Team_A is not team_a).
        pool_args = self.pool_args = {"options": f"-c search_path=\"{schema}\" -c TimeZone=UTC"}
        connector = procrastinate.PsycopgConnector(
            conninfo=libpq_url, kwargs=pool_args, min_size=1, max_size=max(4, self.jobs + 2)
        )
        app = procrastinate.App(connector=connector)
        # Jobs are deferred inside the promoting transaction, on its own connection.
        self._defer_jobs = JobManager(procrastinate.SyncPsycopgConnector(conninfo=libpq_url, kwargs=pool_args))
        retry = procrastinate.RetryStrategy(
            max_attempts=30, wait=1, linear_wait=1,
            retry_exceptions={psycopg.OperationalError, procrastinate.exceptions.ConnectorException},
        )

        # The periodic jobs are not retried: the next one (a second later for the tick)
        # does the work. A retry of one put it back under its queueing lock, where the
        # next periodic job already was: procrastinate's update failed, the job stayed
        # "doing" on a live worker for good, and its lock held every later tick (after a
        # database restart nothing ran again).
        @app.periodic(cron="* * * * * *", periodic_id="tick")
        @app.task(name=TICK_TASK, queue=QUEUE, lock=TICK_TASK, queueing_lock=TICK_TASK, priority=PRIORITY["tick"])
        def tick(timestamp: int) -> None:
            with self._next_does_it(TICK_TASK):
                self.tick()

        @app.task(name=TIMERS_TASK, queue=QUEUE, retry=retry, priority=PRIORITY["timers"])
        def timers(ids: list[str]) -> None:
            with self._retried(TIMERS_TASK):
                self.handle_timers(ids)

        @app.task(name=SEND_TASK, queue=QUEUE, pass_context=True, retry=retry, priority=PRIORITY["send"])
        async def send(context: Any, keys: list[str]) -> None:
            with self._retried(SEND_TASK):
                await self.send(int(context.job.id))

        # Cut off by a database restart, it ends as done, not "failed for good" (a stuck
        # job in ``cmtyflow status``); the next one, 5 seconds on, does the work.
        # A 6th column is seconds (procrastinate, croniter): every 5 seconds, not "every
        # second of every fifth minute", which "*/5 * * * * *" is.
        @app.periodic(cron="* * * * * */5", periodic_id="recover")
        @app.task(name=RECOVER_TASK, queue=QUEUE, queueing_lock=RECOVER_TASK, priority=PRIORITY["tick"])
        async def recover(timestamp: int) -> None:
            with self._next_does_it(RECOVER_TASK):
                await self.recover()

        return app

    @contextlib.contextmanager
    def _retried(self, task: str) -> Iterator[None]:
        """A job cut off from the database fails and is run again (its retry strategy):
        say so, without the connection's details."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as exc:
            self.log("job_retry", task=task, error=type(exc).__name__)
            raise

    @contextlib.contextmanager
    def _next_does_it(self, task: str) -> Iterator[None]:
        """A periodic job cut off from the database ends here, said; the next one does
        its work (what it had not committed is rolled back)."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as exc:
            self.log("job_cut_off", task=task, error=type(exc).__name__, detail="the next one does its work")

    def _defer(self, task: str, arg: str, priority: int) -> Any:
        """The ``Defer`` of ``promote_*``: one ``task`` job per batch, at ``priority``
        (urgent messages' jobs at ``PRIORITY['urgent']``). Jobs deferred here get no
        priority from their task's declaration: it is given with each job."""
        from procrastinate.jobs import Job

        def defer(conn: Any, batches: Sequence[Sequence[str]], urgent: bool) -> list[int]:
            jobs = [
                Job(
                    queue=QUEUE, lock=None, queueing_lock=None, task_name=task, task_kwargs={arg: list(b)},
                    priority=PRIORITY["urgent"] if urgent else priority,
                )
                for b in batches
            ]
            ids = []
            for j in self._defer_jobs.batch_defer_jobs(jobs, connection=conn):
                if j.id is None:  # procrastinate sets each id from its INSERT
                    raise RuntimeError("procrastinate deferred a job without an id")
                ids.append(j.id)
            return ids

        return defer

    # the jobs ------------------------------------------------------------------------------------
    def tick(self) -> None:
        with self.pool.store() as store:
            shared = SharedWork(store)
            shared.promote_timers(self.clock.now(), self._defer(TIMERS_TASK, "ids", PRIORITY["timers"]), batch=self.timer_batch)
            driver = _TickDriver(self.engine, store)
            driver.observe = self._tick_decisions
            # The engine lock stops every batch of waits while it is held: taken only
            # when a firing or an event is due, or the roster has a new timezone (its
            # member-local schedules need a first due time).
            # Messages due go to send jobs first: a tick taking a pass of events (a large
            # import) held back what earlier ticks had queued until it was done.
            shared.promote_messages(self.clock.now(), self._defer(SEND_TASK, "keys", PRIORITY["send"]), batch=self.send_batch)
            now = self.clock.now()
            zones = len(store.member_timezones())
            # The schedules this driver fires, with their positions, read (without them a
            # due firing waited for an event: a new driver each tick knew none); their
            # writes wait for the engine lock (``process_until``).
            driver.abandoned_noted = self._abandoned_noted
            driver.init_schedules(now, write=False)
            due = driver.next_instant()
            if zones != self._zones_seen or (due is not None and due <= now):
                # A pass at a time (as a runner's): a backlog of events does not hold
                # the engine lock, and with it every batch of waits, until it is all done.
                # A firing over the audience goes on chunk by chunk within the pass.
                with shared.alone():
                    chunks = 0
                    while True:
                        self._count(driver.process_until(now, limit=PASS_INPUTS))
                        if not driver.firing_under_way:
                            break
                        chunks += 1
                        if chunks * driver_module.FIRING_CHUNK >= PASS_INPUTS:
                            break  # the next tick goes on with it
                self._tick_decisions.flush()
                self._firing_under_way = driver.firing_under_way
                self._zones_seen = zones
            shared.promote_messages(self.clock.now(), self._defer(SEND_TASK, "keys", PRIORITY["send"]), batch=self.send_batch)
            resent, held = shared.settle_inflight(self._resendable)
            for key in resent:
                self.log("in_doubt_resent", key=key)
            for row in held:
                m = row.message
                self.log("in_doubt_held", key=m.key, playbook=m.playbook, step=m.step, channel=m.channel, member=m.member)
            if resent or held:
                store.record(self.clock.now(), "in_doubt", resent=len(resent), held=len(held))

    def handle_timers(self, ids: Sequence[str]) -> None:
        """The batch in one transaction (one commit, not one per wait), each wait's
        decision applied as it is made, so the next wait's reads see it."""
        decisions: list[Decision] = []
        with self.pool.store() as store:
            shared = SharedWork(store)
            found = shared.job_timers(ids)
            with shared.inputs([member for _, member in found]), store.counters_at_end():
                reads = BatchReads(store, [timer.run for timer, _ in found])
                for timer, _ in found:
                    if not shared.timer_still_there(timer.id):
                        continue  # an earlier try of this job took it
                    now = self.clock.now()  # as the driver: the wait ends at its due time
                    decision = self.engine.handle(reads, min(timer.due, now), TimerDue(timer), earliest=now)
                    for note in decision.notes:  # dated when handled, as the driver's (``Driver._apply``)
                        note.setdefault("at", now)
                    store.apply(decision, consumed_timer=timer.id)
                    reads.forget(decision)
                    decisions.append(decision)
        for decision in decisions:
            self._observe(decision)
        self._count(len(decisions))

    async def send(self, job: int) -> None:
        with self.pool.store() as store:
            shared = SharedWork(store)
            # An earlier try of this job that did not finish (its worker died): a row
            # whose request had not begun goes again; one that had is in doubt unless
            # the platform deduplicates (it held every row the try had claimed).
            resend, held = shared.settle_job_inflight(job, self._resendable)
            for key in resend:
                self.log("in_doubt_resent", key=key)
            for row in held:
                m = row.message
                self.log("in_doubt_held", key=m.key, playbook=m.playbook, step=m.step, channel=m.channel, member=m.member)
            dispatcher = Dispatcher(
                _JobRows(store, shared, job), self.channels, self.clock.now,
                policies=self.policies, concurrency=self.concurrency, log=self.log,
            )
            self._dispatchers.add(dispatcher)
            try:
                stats = await dispatcher.run_due(self.clock.now(), drain=self.drain)
            finally:
                self._dispatchers.discard(dispatcher)
            shared.release_job_messages(job)
            self._add(stats)

    async def recover(self) -> None:
        """Jobs of workers that stopped sending heartbeats: batches are put back to run;
        a periodic job (a tick) is dropped instead, as the next one does its work (and
        one is usually queued already, under the same queueing lock)."""
        from procrastinate.jobs import Status

        self._ensure_presence()
        manager = self.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=self.stalled_after):
            if job.queueing_lock is not None:
                await manager.finish_job(job, status=Status.ABORTED, delete_job=True)
                self.log("job_dropped", job=job.id, task=job.task_name, worker=job.worker_id)
                continue
            await manager.retry_job(job)
            self.log("job_recovered", job=job.id, task=job.task_name, worker=job.worker_id)

    def _resendable(self, row: OutboxRow) -> bool:
        return resendable(row, self.channels, self.policies)

    # life cycle ----------------------------------------------------------------------------------
    def _ensure_presence(self) -> None:
        """The runner lock held shared (``pg_shared``) lives with its session: a worker
        whose connection the database dropped takes it again on a new one."""
        old = self._presence
        conn = old._conn if old is not None else None
        if old is None or conn is None or not (conn.closed or conn.broken):
            return
        old.close()
        self._presence = None
        presence = PostgresStore(self.url, schema=self.schema, exclusive=False)
        try:
            SharedWork(presence).join()
        except UserError as exc:  # a single runner started while this worker was cut off
            presence.close()
            self.log("stopping", reason=str(exc))
            self.stop()
            return
        except BaseException:
            presence.close()
            raise
        self._presence = presence
        self.log("reconnected", detail="holds the workers' share of the state again")

    async def start(self) -> None:
        presence = PostgresStore(self.url, schema=self.schema, exclusive=False)
        try:
            SharedWork(presence).join()
            if ensure_queue_schema(presence):
                self.log("queue_created", schema=self.schema)
            older, missing = versions.older_programs(presence, self.programs, adapter_formats(self.result))
            self.engine = Engine(self.programs, older)
            for (playbook, version), n in sorted(missing.items()):
                self.log("version_unknown", playbook=playbook, version=version[:12], runs=n,
                         detail="no copy of that version is kept; these runs continue on the current version")
            for problem in self.channels.add_older(older):
                self.log("channel_unavailable", detail=problem)
            now = self.clock.now()
            versions.record(presence, self.result.playbooks, now)
            presence.record(now, "worker_started", pid=os.getpid(), versions={p.name: p.version for p in self.programs})
        except BaseException:
            presence.close()
            raise
        self._presence = presence
        await self.channels.open()

    async def serve(self) -> None:
        """Run jobs until ``stop``; a worker the database dropped starts again."""
        backoff = 1.0
        while not self._stopping:
            self._task = asyncio.ensure_future(self._run_once())
            try:
                await self._task
                backoff = 1.0
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
            except Exception as exc:  # noqa: BLE001 - a lost database: log it, start over
                self.log("worker_restarting", error=f"{type(exc).__name__}: {exc}", after_seconds=backoff)
            finally:
                self._task = None
            if not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _run_once(self) -> None:
        async with self.app.open_async():
            await self.app.run_worker_async(
                queues=[QUEUE], concurrency=self.jobs, name=f"cmtyflow-{os.getpid()}", wait=True,
                install_signal_handlers=False, update_heartbeat_interval=self.heartbeat,
                stalled_worker_timeout=self.stalled_after, delete_jobs="successful",
                shutdown_graceful_timeout=self.drain + 5.0,
            )

    def stop(self) -> None:
        """Stop fetching jobs; sends in flight get ``drain`` seconds (the dispatcher's stop)."""
        self._stopping = True
        for dispatcher in list(self._dispatchers):
            dispatcher.stop()
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        try:
            await self.channels.close()
        finally:
            try:
                if self._presence is not None:
                    import psycopg

                    t = self.totals
                    for last_try in (False, True):
                        # A live connection, whatever became of the presence's: an idle one
                        # of the pool may have died with a database restart (then a new one).
                        try:
                            with self.pool.store() as store:
                                store.record(self.clock.now(), "worker_stopped", inputs=self.inputs, sent=t.sent,
                                             failed=t.failed, dead=t.dead, cancelled=t.cancelled)
                            break
                        except psycopg.OperationalError:
                            if last_try:
                                raise
            finally:
                self.pool.close()
                if self._presence is not None:
                    self._presence.close()
                    self._presence = None

    # bookkeeping ---------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        with self._count_lock:
            self.inputs += n

    def _add(self, stats: DispatchStats) -> None:
        add_stats(self.totals, stats)

    def _observe(self, decision: Decision) -> None:
        with self._count_lock:
            self._job_decisions(decision)

    def summary(self) -> str:
        """The line ``worker`` ends with."""
        started = self._tick_decisions.runs_started + self._job_decisions.runs_started
        failed = self._tick_decisions.runs_failed + self._job_decisions.runs_failed
        return summary("stopped", self.inputs, started, self.totals, self._firing_under_way, failed)
