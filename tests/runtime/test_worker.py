"""``cmtyflow worker`` processes sharing a PostgreSQL state (docs/scale-out.md): real
worker processes, a real PostgreSQL cluster of the tests' own (it is restarted), a
loopback webhook sink that honours Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg_server
import pytest
import worker_fleet as wf
from loopback_sink import ThreadedSink

from cmtyflow.cli import main
from cmtyflow.errors import UserError


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg_server.Cluster]:
    try:
        import procrastinate  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        reason = f"{exc.name} is not installed (pip install -e '.[test]')"
        if os.environ.get(pg_server.ENV_REQUIRED) == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        with pg_server.cluster(max_connections=300) as made:
            yield made
    except pg_server.Unavailable as exc:
        if os.environ.get(pg_server.ENV_REQUIRED) == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def sink() -> Iterator[ThreadedSink]:
    s = ThreadedSink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def state(cluster: pg_server.Cluster, request: pytest.FixtureRequest) -> str:
    return pg_server.with_schema(cluster.url, f"w_{request.node.name[5:40].lower()}")


def delivered(sink: ThreadedSink) -> tuple[list[Any], dict[str, dict[str, Any]], int]:
    return sink.snapshot()


def check_exactly_once(sink: ThreadedSink, members: int) -> tuple[int, int]:
    """Every expected text delivered under one key, once; returns (requests, resends)."""
    requests, by_key, duplicates = delivered(sink)
    texts = Counter(body["text"] for body in by_key.values())
    assert set(texts) == wf.expected_texts(members)
    assert max(texts.values()) == 1, [t for t, n in texts.items() if n > 1][:5]  # never under a second key
    assert {r.key for r in requests} == set(by_key)  # every resend carried a delivered key
    return len(requests), duplicates


def test_four_workers_take_ten_thousand_waits_and_one_killed_mid_batch_loses_nothing(
    sink: ThreadedSink, state: str, tmp_path: Path
) -> None:
    members = 10_000
    playbook = wf.write_playbook(tmp_path, sink.url)
    wf.seed(state, playbook, members)
    fleet = wf.Fleet(playbook, state, tmp_path, jobs=4)
    fleet.start(4)
    try:
        wf.wait_for(lambda: len(delivered(sink)[1]) >= 1500, 180, "the first 1,500 deliveries", fleet)
        fleet.kill(0)  # SIGKILL, with timer and send jobs in hand
        wf.wait_for(lambda: wf.outbox_counts(state)["sent"] == members and wf.timers_left(state) == 0, 300,
                    "every message sent", fleet)
        wf.wait_for(lambda: not any(wf.invariants(state).values()), 60, "nothing stuck", fleet)
        assert fleet.alive() == [1, 2, 3]
    finally:
        codes = fleet.stop()
    requests, resends = check_exactly_once(sink, members)
    counts = wf.outbox_counts(state)
    assert counts["sent"] == members and counts["in_doubt"] == counts["inflight"] == counts["queued"] == 0
    assert fleet.logged("job_recovered"), fleet.logs()  # the killed worker's jobs were taken up by the others
    assert codes[1:] == [0, 0, 0]
    assert requests == members + resends


def test_an_immediate_postgres_restart_under_load_loses_no_intent(
    sink: ThreadedSink, state: str, tmp_path: Path, cluster: pg_server.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    members = 3000
    playbook = wf.write_playbook(tmp_path, sink.url)
    wf.seed(state, playbook, members)
    fleet = wf.Fleet(playbook, state, tmp_path, jobs=4)
    fleet.start(2)
    try:
        wf.wait_for(lambda: len(delivered(sink)[1]) >= 300, 180, "the first 300 deliveries", fleet)
        cluster.restart("immediate")  # every session cut mid-transaction, no shutdown checkpoint
        wf.wait_for(lambda: wf.outbox_counts(state)["sent"] == members and wf.timers_left(state) == 0, 300,
                    "every message sent after the restart", fleet)
        wf.wait_for(lambda: not any(wf.invariants(state).values()), 60,
                    lambda: f"nothing stuck (still: {wf.stuck(state)})", fleet)
        assert fleet.alive() == [0, 1]  # both rode out the restart
        capsys.readouterr()
        assert main(["status", "--state", state, "--format", "json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["workers"]["alive"] >= 2 and not any(shown["workers"]["stuck"].values())
        assert shown["outbox"]["sent"] == members
    finally:
        codes = fleet.stop()
    check_exactly_once(sink, members)
    felt = fleet.logged("job_retry") + fleet.logged("job_cut_off") + fleet.logged("worker_restarting")
    assert felt > 0, fleet.logs()  # the cut was felt
    assert codes == [0, 0]


def test_workers_need_a_postgresql_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    assert main(["worker", str(playbook), "--state", str(tmp_path / "state.db")]) == 1
    err = capsys.readouterr().err
    assert "workers share a PostgreSQL state" in err and "Traceback" not in err


def test_a_single_runner_and_workers_exclude_each_other(state: str) -> None:
    from cmtyflow.store.pg_shared import SharedWork
    from cmtyflow.store.postgres import PostgresStore

    workers = [PostgresStore(state, exclusive=False) for _ in range(2)]
    runner = PostgresStore(state)
    try:
        for w in workers:
            SharedWork(w).join()  # workers share
        with pytest.raises(UserError, match="or workers, are using"):
            runner.set_schedules([])
    finally:
        runner.close()
        for w in workers:
            w.close()
    runner = PostgresStore(state)
    other = PostgresStore(state, exclusive=False)
    try:
        runner.mark_in_doubt()  # holds the runner lock
        with pytest.raises(UserError, match="a single `cmtyflow run` is using"):
            SharedWork(other).join()
    finally:
        runner.close()
        other.close()



AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@contextlib.contextmanager
def _two_queued(state: str) -> Iterator[Any]:
    """A PostgreSQL store with the queue's tables and two telegram messages queued,
    "started" and "unstarted"."""
    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    store = PostgresStore(state, exclusive=False)
    try:
        ensure_queue_schema(store)
        store.apply(Decision(messages=[
            QueuedMessage(k, "pb", "r", "f", "s", 1, "ch", "telegram", None, "channel", "hi", "plain", None, False, AT, AT)
            for k in ("started", "unstarted")
        ]))
        yield store
    finally:
        store.close()


def test_a_dead_send_jobs_rows_never_started_go_back_to_the_queue(state: str) -> None:
    """SPEC 5.2, as at a runner's start: a worker killed during a send held every row of its
    batch in doubt, 158 of 300 never sent; and its rows stayed in `sending` for good."""
    from cmtyflow.store.pg_shared import SharedWork

    with _two_queued(state) as store:
        store.claim_due_messages(AT)
        assert store.mark_sending("started", None, False)
        resent, held = SharedWork(store).settle_inflight(lambda row: False)
        assert resent == ["unstarted"] and [r.message.key for r in held] == ["started"]
        assert {r.message.key: r.status for r in store.outbox()} == {"started": "in_doubt", "unstarted": "queued"}
        assert store.conn.execute("SELECT count(*) FROM sending").fetchone() == (0,)


def test_a_send_job_run_again_holds_only_what_its_earlier_try_had_begun_to_send(state: str) -> None:
    """A send job run again after its worker was killed held every row its earlier try
    had claimed in doubt (777 of 800 had never been sent); as `settle_inflight` does,
    only a row whose request began is held, the others go again with the job."""
    from cmtyflow.store.pg_shared import SharedWork

    with _two_queued(state) as store:
        store.conn.execute("UPDATE outbox SET job = 77")
        shared = SharedWork(store)
        assert len(shared.claim_job_messages(77, AT, 10)) == 2  # the earlier try
        assert store.mark_sending("started", None, False)
        resent, held = shared.settle_job_inflight(77, lambda row: False)
        assert resent == ["unstarted"] and [r.message.key for r in held] == ["started"]
        assert {r.message.key: r.status for r in store.outbox()} == {"started": "in_doubt", "unstarted": "queued"}
        # The one never started goes with this job, now.
        assert [row.message.key for row, _ in shared.claim_job_messages(77, AT, 10)] == ["unstarted"]


def test_every_job_runs_again_after_a_lost_connection(state: str, tmp_path: Path) -> None:
    """A database restart fails whatever job is running; none may be left failed for
    good (a stuck job in `cmtyflow status`). Batches are retried. The periodic jobs
    (tick, recovery) end as done, said, and the next one does the work: retried, a tick
    went back under its queueing lock where the next tick already was, procrastinate's
    update failed, and the job stayed "doing" on a live worker, its lock holding every
    later tick (after a restart nothing ran again)."""
    import psycopg
    from procrastinate.jobs import Job

    from cmtyflow.clock import SystemClock
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import (
        QUEUE,
        RECOVER_TASK,
        SEND_TASK,
        TICK_TASK,
        TIMERS_TASK,
        Worker,
    )

    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    result, programs = load_programs([playbook])
    lines: list[tuple[str, dict[str, Any]]] = []
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock(),
               log=lambda kind, **fields: lines.append((kind, fields)))
    for name in (TIMERS_TASK, SEND_TASK):
        strategy = w.app.tasks[name].retry_strategy
        job = Job(queue=QUEUE, lock=None, queueing_lock=None, task_name=name, task_kwargs={}, attempts=3)
        assert strategy is not None, name
        assert strategy.get_retry_decision(exception=psycopg.OperationalError("server closed the connection"), job=job), name
        assert strategy.get_retry_decision(exception=ValueError("a bug"), job=job) is None, name
    assert w.app.tasks[TICK_TASK].retry_strategy is None and w.app.tasks[RECOVER_TASK].retry_strategy is None

    def cut_off() -> None:
        raise psycopg.OperationalError("terminating connection due to administrator command")

    async def cut_off_async() -> None:
        cut_off()

    w.tick = cut_off  # type: ignore[method-assign]
    w.recover = cut_off_async  # type: ignore[method-assign]
    w.app.tasks[TICK_TASK].func(timestamp=0)  # ends as done
    asyncio.run(w.app.tasks[RECOVER_TASK].func(timestamp=0))
    assert [(kind, f["task"]) for kind, f in lines] == [("job_cut_off", TICK_TASK), ("job_cut_off", RECOVER_TASK)]

    def bug() -> None:
        raise ValueError("a bug")

    w.tick = bug  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        w.app.tasks[TICK_TASK].func(timestamp=0)  # a bug is not hidden


def test_a_lost_connection_drops_the_pools_idle_connections_too(state: str) -> None:
    """After a restart each idle connection failed the next job handed it, one by one
    (AdminShutdown after AdminShutdown)."""
    import psycopg

    from cmtyflow.runtime.worker import StorePool
    from cmtyflow.store.pg_connect import split_schema

    pool = StorePool(state, None)
    try:
        with pool.store(), pool.store():
            pass
        assert len(pool._free) == 2
        # An OperationalError on a live connection (a deadlock) keeps the pool.
        with pytest.raises(psycopg.OperationalError), pool.store():
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        assert len(pool._free) == 2
        with pytest.raises(psycopg.OperationalError), pool.store() as store:
            with psycopg.connect(split_schema(state)[0], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
            store.conn.execute("SELECT 1")  # the server cut it: as in a restart
        assert pool._free == []
        with pool.store() as store:  # a new one
            assert store.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_a_server_that_cannot_be_reached_is_a_retried_error_for_a_job() -> None:
    """A job that opened a connection while the server restarted ended "failed for good"
    (a stuck job in `cmtyflow status`; a tick, and a send or timers job not retried):
    the store's UserError was neither a cut-off nor a retried error."""
    import socket

    import psycopg

    from cmtyflow.runtime.worker import StorePool

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    pool = StorePool(f"postgresql://nobody@127.0.0.1:{port}/x", None)
    with pytest.raises(psycopg.OperationalError, match="cannot connect to PostgreSQL"), pool.store():
        pass


def test_a_schema_named_in_mixed_case_is_the_one_the_workers_connections_use(cluster: pg_server.Cluster, tmp_path: Path) -> None:
    """`run` quoted the schema's name and `worker` did not: the server folded Team_A to
    team_a, and the worker retried "Database error." for good."""
    import psycopg

    from cmtyflow.clock import SystemClock
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import Worker
    from cmtyflow.store.open import open_store
    from cmtyflow.store.pg_connect import split_schema

    state = pg_server.with_schema(cluster.url, "W_Mixed_Case")
    open_store(state).close()  # the state, in the schema as named
    result, programs = load_programs([wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")])
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock())
    with psycopg.connect(split_schema(state)[0], **w.pool_args) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_the_tick_runs_every_second_and_the_recovery_every_five_seconds(state: str, tmp_path: Path) -> None:
    """As procrastinate's periodic deferrer reads its crons (a 6th column is seconds).
    "*/5 * * * * *" was every second of every fifth minute: a dead worker's jobs waited
    up to four minutes to be taken up."""
    from datetime import UTC, datetime

    from cmtyflow.clock import SystemClock
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import RECOVER_TASK, TICK_TASK, Worker

    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    result, programs = load_programs([playbook])
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock())
    start = datetime(2026, 11, 22, 19, 1, 3, tzinfo=UTC).timestamp()
    firings = {}
    for periodic in w.app.periodic_registry.periodic_tasks.values():
        periodic.croniter.set_current(start_time=start)
        firings[periodic.task.name] = [periodic.croniter.get_next(float) - start for _ in range(4)]
    assert firings == {TICK_TASK: [1.0, 2.0, 3.0, 4.0], RECOVER_TASK: [2.0, 7.0, 12.0, 17.0]}


async def test_recovery_drops_a_stalled_tick_and_runs_a_stalled_batch_again(state: str, tmp_path: Path) -> None:
    from procrastinate.jobs import Job

    from cmtyflow.clock import SystemClock
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import QUEUE, TICK_TASK, TIMERS_TASK, Worker
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    result, programs = load_programs([playbook])
    store = PostgresStore(state, exclusive=False)
    ensure_queue_schema(store)
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock(), stalled_after=30.0)
    async with w.app.open_async():
        manager = w.app.job_manager
        tick = Job(queue=QUEUE, lock=TICK_TASK, queueing_lock=TICK_TASK, task_name=TICK_TASK, task_kwargs={"timestamp": 1})
        batch = Job(queue=QUEUE, lock=None, queueing_lock=None, task_name=TIMERS_TASK, task_kwargs={"ids": ["t1"]})
        dead = await manager.register_worker()
        tick_id = (await manager.defer_job_async(tick)).id
        batch_id = (await manager.defer_job_async(batch)).id
        assert {(await manager.fetch_job([QUEUE], dead)).id for _ in range(2)} == {tick_id, batch_id}  # type: ignore[union-attr]
        queued_tick = (await manager.defer_job_async(tick.evolve(task_kwargs={"timestamp": 2}))).id  # the next tick, waiting
        store.conn.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (dead,))
        await w.recover()
        status = dict(store.conn.execute("SELECT id, status::text FROM procrastinate_jobs").fetchall())
    store.close()
    assert status == {batch_id: "todo", queued_tick: "todo"}  # the stalled tick dropped, the batch put back


def test_a_wait_that_breaks_the_engine_is_set_aside_and_its_batch_goes_on(state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault of cmtyflow's own on one wait of a batch (outside its run's steps) fails
    that run; the batch commits, the other waits move on, nothing is left stuck."""
    from cmtyflow.clock import SystemClock
    from cmtyflow.engine.core import Engine
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import Worker
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    wf.seed(state, playbook, 3)
    program_for = Engine.program_for

    def breaking(self, run):  # type: ignore[no-untyped-def]
        if run.member == "m000001":
            raise AttributeError("'NoneType' object has no attribute 'flows'")
        return program_for(self, run)

    monkeypatch.setattr(Engine, "program_for", breaking)
    store = PostgresStore(state, exclusive=False)
    ensure_queue_schema(store)
    ids = [r[0] for r in store.conn.execute("SELECT id FROM timers ORDER BY id").fetchall()]
    result, programs = load_programs([playbook])
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock())
    try:
        w.handle_timers(ids)
        runs = dict(store.conn.execute("SELECT member, status FROM runs").fetchall())
        queued = [r[0] for r in store.conn.execute("SELECT member FROM outbox ORDER BY member").fetchall()]
        notes = [n for n in store.notes() if n["kind"] == "input_failed"]
    finally:
        w.pool.close()
        store.close()
    assert runs == {"m000000": "done", "m000001": "failed", "m000002": "done"}  # the others sent on
    assert queued == ["m000000", "m000002"]
    assert [(n["input"], n["reason"]) for n in notes] == [
        ("timer", "internal error: AttributeError: 'NoneType' object has no attribute 'flows'")
    ]
    assert wf.timers_left(state) == 0 and wf.stuck(state) == {}


def _hook_worker(state: str, tmp_path: Path, name: str, trigger: str, members: int, clock: Any, log: Any = None) -> tuple[Any, Any]:
    """A worker on a playbook ``name`` whose one ``trigger`` starts a flow that sends
    "hi" to a webhook that is never reached, and its (PostgreSQL) store with
    ``members`` members u00, u01, ..."""
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import Worker
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    playbook = tmp_path / f"{name}.yaml"
    playbook.write_text(
        f"cmtyflow: 1\nname: {name}\ntimezone: UTC\nchannels:\n  hook: {{adapter: webhook, url: \"http://127.0.0.1:9/hook\"}}\n"
        f"triggers:\n  - {trigger}\nflows:\n  f:\n    - {{id: hi, send: {{channel: hook, text: hi}}}}\n",
        encoding="utf-8",
    )
    store = PostgresStore(state, exclusive=False)
    ensure_queue_schema(store)
    store.put_members([{"id": f"u{i:02d}"} for i in range(members)])
    result, programs = load_programs([playbook])
    return Worker(result, programs, state, ChannelSet(programs, {}), clock, log=log), store


def test_a_tick_takes_a_backlog_of_events_a_pass_at_a_time(state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine lock a tick holds for events stops every batch of waits: a backlog is
    taken a pass per tick, not all at once."""
    from datetime import UTC, datetime

    from cmtyflow.clock import SystemClock
    from cmtyflow.runtime import driver, worker
    from cmtyflow.runtime.inputs import parse_event

    monkeypatch.setattr(worker, "PASS_INPUTS", 5)
    monkeypatch.setattr(driver, "MAX_BATCH", 5)
    w, store = _hook_worker(state, tmp_path, "joined", "{id: j, event: member.joined, flow: f}", 12, SystemClock())
    for i in range(12):
        store.add_event(parse_event({"id": f"j{i:02d}", "type": "member.joined", "member": f"u{i:02d}", "at": "2026-11-01T10:00:00+00:00"}, UTC))
    try:
        w.tick()
        left = len(store.pending_events(datetime.now(UTC)))
        w.tick()
        after = len(store.pending_events(datetime.now(UTC)))
        queued = store.outbox_counts()
    finally:
        w.pool.close()
        store.close()
    assert (left, after) == (7, 2)
    assert sum(queued.values()) == 10


def test_a_tick_fires_a_due_schedule_and_goes_on_with_it_chunk_by_chunk(state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick's driver knew no schedule before ``process_until``: a firing that fell due
    between ticks waited for an event. A firing over the audience then goes a few chunks
    per tick, its place kept between ticks, and logged a line a tick, not a chunk."""
    from datetime import UTC, datetime, timedelta

    from cmtyflow.clock import VirtualClock
    from cmtyflow.runtime import driver, worker

    monkeypatch.setattr(worker, "PASS_INPUTS", 5)
    monkeypatch.setattr(driver, "FIRING_CHUNK", 3)
    from cmtyflow.runtime import runner

    monkeypatch.setattr(runner, "LOG_FIRING_EVERY", 5)
    at = datetime(2026, 12, 24, 12, 0, tzinfo=UTC)
    clock = VirtualClock(at - timedelta(minutes=5))
    lines: list[tuple[str, dict[str, Any]]] = []
    w, store = _hook_worker(state, tmp_path, "xmas", '{id: x, at: "2026-12-24T12:00", for_each: audience, flow: f}', 7, clock,
                            log=lambda kind, **fields: lines.append((kind, fields)))
    seen = []
    try:
        for _ in range(3):
            w.tick()
            seen.append(sum(store.outbox_counts().values()))
            if len(seen) == 2:
                assert "part way" in w.summary()
            clock.set(at + timedelta(seconds=1))
        progress = store.firing_progress()
    finally:
        w.pool.close()
        store.close()
    assert seen == [0, 6, 7] and progress == {}
    assert [fields for kind, fields in lines if kind == "runs_started"] == [{"count": 6, "firing": "under way"}, {"count": 1}]
    assert "7 runs started" in w.summary() and "part way" not in w.summary()


def test_an_urgent_message_goes_to_a_send_job_of_its_own_fetched_before_the_others(state: str, tmp_path: Path) -> None:
    """A crisis page queued after a large send is handed out first, in a job of its own
    at the urgent priority: a worker fetches it before any batch of the send."""
    from datetime import UTC, datetime, timedelta

    from cmtyflow.clock import SystemClock
    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import PRIORITY, QUEUE, Worker
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    before = datetime.now(UTC) - timedelta(minutes=5)

    def queued(key: str, urgent: bool, minutes: int) -> QueuedMessage:
        return QueuedMessage(
            key=key, playbook="pb", run="r", flow="f", step="s", occurrence=1, channel="hook", adapter="webhook",
            member=None, to="channel", text=key, format="plain", variant=None, urgent=urgent,
            queued_at=before, deliver_at=before + timedelta(minutes=minutes),
        )

    playbook = wf.write_playbook(tmp_path, "http://127.0.0.1:9/hook")
    store = PostgresStore(state, exclusive=False)
    ensure_queue_schema(store)
    store.apply(Decision(messages=[queued(f"n{i}", False, 0) for i in range(5)] + [queued("page", True, 1)]))
    result, programs = load_programs([playbook])
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock(), send_batch=2)
    try:
        w.tick()
        jobs = store.conn.execute(
            "SELECT j.id, j.priority, array_agg(o.key ORDER BY o.key) FROM procrastinate_jobs AS j "
            "JOIN outbox AS o ON o.job = j.id GROUP BY j.id, j.priority ORDER BY j.id"
        ).fetchall()

        async def first_fetched() -> Any:
            async with w.app.open_async():
                manager = w.app.job_manager
                worker_id = await manager.register_worker()
                return await manager.fetch_job([QUEUE], worker_id)

        fetched = asyncio.run(first_fetched())
    finally:
        w.pool.close()
        store.close()
    assert [(priority, keys) for _, priority, keys in jobs] == [
        (PRIORITY["urgent"], ["page"]),
        (PRIORITY["send"], ["n0", "n1"]), (PRIORITY["send"], ["n2", "n3"]), (PRIORITY["send"], ["n4"]),
    ]
    assert fetched is not None and fetched.task_kwargs == {"keys": ["page"]}


def test_a_batch_reads_runs_members_and_states_once_and_each_wait_sees_the_last_ones_writes(state: str, tmp_path: Path) -> None:
    """``BatchReads``: two waits of one member in one batch; the second must read the
    state the first one wrote (forgotten by the batch's reads, read back from the
    batch's transaction), as it would reading the store each time."""
    from datetime import UTC, datetime, timedelta

    from cmtyflow.clock import SystemClock
    from cmtyflow.engine.core import Engine
    from cmtyflow.engine.model import Event
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.worker import Worker
    from cmtyflow.store.pg_shared import ensure_queue_schema
    from cmtyflow.store.postgres import PostgresStore

    playbook = tmp_path / "count.yaml"
    playbook.write_text(
        "cmtyflow: 1\nname: count\ntimezone: UTC\nchannels:\n  hook: {adapter: webhook, url: \"http://127.0.0.1:9/hook\"}\n"
        "triggers:\n  - {id: t, event: ping, flow: f, mode: parallel}\nflows:\n  f:\n    - wait: 1m\n"
        "    - set: {count: \"state.get('count', 0) + 1\"}\n"
        "    - {id: hi, send: {channel: hook, text: \"{{ member.name }} n={{ state.count }}\"}}\n",
        encoding="utf-8",
    )
    result, programs = load_programs([playbook])
    store = PostgresStore(state, exclusive=False)
    ensure_queue_schema(store)
    store.put_members([{"id": "m1", "name": "Ann"}, {"id": "m2", "name": "Bo"}])
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    engine = Engine(programs)
    for i, member in enumerate(["m1", "m2", "m1"]):
        store.apply(engine.handle(store, at, Event(f"p{i}", "ping", at, member)))
    ids = [r[0] for r in store.conn.execute("SELECT id FROM timers ORDER BY due_ts, id").fetchall()]
    w = Worker(result, programs, state, ChannelSet(programs, {}), SystemClock())
    try:
        w.handle_timers(ids)
        texts = sorted(r[0] for r in store.conn.execute("SELECT text FROM outbox").fetchall())
        states = dict(store.conn.execute("SELECT member, state FROM states WHERE playbook = 'count'").fetchall())
    finally:
        w.pool.close()
        store.close()
    assert len(ids) == 3
    assert texts == ["Ann n=1", "Ann n=2", "Bo n=1"]
    assert {m: json.loads(s)["count"] for m, s in states.items()} == {"m1": 2, "m2": 1}
