"""The dispatcher's store calls on a thread of their own (``thread_safe`` stores, i.e.
SQLite): claims and group commits leave the event loop's thread, in order, one at a
time; outcomes are durable once ``run_due`` returns; a failed commit is raised and
leaves its rows inflight (in doubt next start); stop still drains and requeues; the
loop may write through the same store meanwhile (the event intake does). Other stores
are called inline. All against real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.adapters.base import Capabilities, OutboundMessage, Receipt
from cmtyflow.engine.model import Decision, Event, QueuedMessage
from cmtyflow.runtime import dispatch
from cmtyflow.runtime.channels import OpenChannel
from cmtyflow.runtime.dispatch import COMMIT_EVERY, Dispatcher
from cmtyflow.store.memory import MemoryStore
from cmtyflow.store.sqlite import SqliteStore

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=1)  # every message is due


def message(i: int, member: str | None = None) -> QueuedMessage:
    return QueuedMessage(
        key=f"k{i:05d}", playbook="pb", run=f"r{i}", flow="hello", step="hi", occurrence=1, channel="hook",
        adapter="webhook", member=member or f"m{i:05d}", to="member", text=f"hello {i}", format="plain",
        variant=None, urgent=False, queued_at=T0, deliver_at=T0 + timedelta(microseconds=i),
    )


def fill(store: Any, n: int, opted_out: int = 0) -> list[str]:
    """``n`` queued messages to ``n`` members, the first ``opted_out`` of them opted out."""
    store.put_members({"id": f"m{i:05d}", "name": f"M {i}", **({"opted_out": True} if i < opted_out else {})} for i in range(n))
    msgs = [message(i) for i in range(n)]
    store.apply(Decision(messages=msgs))
    return [m.key for m in msgs]


class Hook:
    """An adapter that answers at once (or as ``before`` says) and records what it got."""

    capabilities = Capabilities(formats=("plain",), idempotent=True)

    def __init__(self, before: Callable[[OutboundMessage], Any] | None = None) -> None:
        self.got: list[str] = []
        self.before = before

    async def send(self, message: OutboundMessage) -> Receipt:
        if self.before is not None:
            await self.before(message)
        self.got.append(message.key)
        return Receipt(platform_id=f"p-{message.key}")


class Channels:
    def __init__(self, adapter: Any) -> None:
        self.opened = OpenChannel("hook", "webhook", adapter, adapter.capabilities)

    def adapter_for(self, playbook: str, channel: str) -> OpenChannel | None:
        return self.opened if channel == "hook" else None


class Calls:
    """What a store was asked by whom: (method, thread, rows), and whether two calls overlapped."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int]] = []
        self.busy = 0
        self.overlapped = False
        self.lock = threading.Lock()

    def around(self, name: str, size: Callable[[Any, Any], int], call: Callable[[], Any], arg: Any) -> Any:
        with self.lock:
            self.busy += 1
            self.overlapped |= self.busy > 1
        try:
            result = call()
            self.log.append((name, threading.get_ident(), size(arg, result)))
            return result
        finally:
            with self.lock:
                self.busy -= 1


class RecordingSqlite(SqliteStore):
    def __init__(self, path: Path, fail_commit: int | None = None) -> None:
        super().__init__(path)
        self.calls = Calls()
        self.fail_commit = fail_commit  # the n-th finish_messages (1-based) fails, nothing of it written
        self.commits = 0

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> Any:
        return self.calls.around("claim", lambda _, r: len(r), lambda: super(RecordingSqlite, self).claim_due_messages_with_members(until, limit), None)

    def finish_messages(self, results: Any) -> None:
        results = list(results)
        self.commits += 1
        if self.commits == self.fail_commit:
            raise sqlite3.OperationalError("disk I/O error")
        self.calls.around("finish", lambda r, _: len(r), lambda: super(RecordingSqlite, self).finish_messages(results), results)


class RecordingMemory(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = Calls()

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> Any:
        return self.calls.around("claim", lambda _, r: len(r), lambda: super(RecordingMemory, self).claim_due_messages_with_members(until, limit), None)

    def finish_messages(self, results: Any) -> None:
        results = list(results)
        self.calls.around("finish", lambda r, _: len(r), lambda: super(RecordingMemory, self).finish_messages(results), results)


def dispatcher(store: Any, adapter: Any, concurrency: int = 16) -> Dispatcher:
    return Dispatcher(store, Channels(adapter), lambda: NOW, policies={}, concurrency=concurrency)  # type: ignore[arg-type]


def statuses(path: Path) -> dict[str, str]:
    """Each row's status as a fresh connection reads the file (what a restart finds)."""
    with SqliteStore(path) as store:
        return {r.message.key: r.status for r in store.outbox()}


async def test_claims_and_commits_run_on_one_thread_of_their_own_and_are_durable_after_run_due(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = RecordingSqlite(path)
    keys = fill(store, 1500)
    hook = Hook()
    stats = await dispatcher(store, hook, concurrency=32).run_due(NOW)
    assert stats.sent == 1500 and stats.total() == 1500
    calls = store.calls.log
    threads = {thread for _, thread, _ in calls}
    assert len(threads) == 1 and threading.get_ident() not in threads  # one thread, not the loop's
    assert not store.calls.overlapped
    assert [name for name, _, _ in calls][:1] == ["claim"] and sum(n for name, _, n in calls if name == "claim") == 1500
    assert all(n <= COMMIT_EVERY for name, _, n in calls if name == "finish")
    assert sum(n for name, _, n in calls if name == "finish") == 1500
    store.close()
    # What another connection finds: every row sent, each with its delivery, in the
    # order the sends ended (the groups were committed in the order they were made).
    assert set(statuses(path).values()) == {"sent"}
    with SqliteStore(path) as again:
        delivered = list(again.deliveries())
        assert again.counters()["messages_sent"] == 1500
    assert [d["key"] for d in delivered] == hook.got and sorted(hook.got) == keys
    assert all(d["platform_id"] == f"p-{d['key']}" for d in delivered)


async def test_a_failed_commit_is_raised_and_its_rows_stay_inflight_for_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = RecordingSqlite(path, fail_commit=2)
    fill(store, 1200)
    hook = Hook()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await dispatcher(store, hook).run_due(NOW)
    store.close()
    found = statuses(path)
    sent = {k for k, s in found.items() if s == "sent"}
    # Every message that reached the adapter is sent (committed) or inflight (in doubt
    # next start): none was put back to the queue or lost; and what is sent has its delivery.
    assert all(found[k] in ("sent", "inflight") for k in hook.got)
    assert {k for k, s in found.items() if s == "sent"} <= set(hook.got)
    assert len(sent) >= COMMIT_EVERY  # the first group made it
    assert sum(1 for k in hook.got if found[k] == "inflight") >= COMMIT_EVERY  # the failed one did not
    with SqliteStore(path) as again:
        assert {d["key"] for d in again.deliveries()} == sent


async def test_stop_drains_the_sends_in_flight_and_puts_unstarted_rows_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    fill(store, 1500)
    started = 0
    disp: Dispatcher

    async def before(message: OutboundMessage) -> None:
        nonlocal started
        started += 1
        if started == 300:
            disp.stop()  # as a signal would, with up to 16 sends in flight
        await asyncio.sleep(0)

    disp = dispatcher(store, Hook(before))
    stats = await disp.run_due(NOW, drain=30.0)
    assert stats.abandoned == 0 and stats.requeued > 0 and 300 <= stats.sent < 1500
    store.close()
    found = statuses(path)  # sent, or queued again (claimed and put back, or never claimed)
    assert sum(1 for s in found.values() if s == "sent") == stats.sent
    assert sum(1 for s in found.values() if s == "queued") == 1500 - stats.sent


async def test_rows_no_worker_started_go_back_to_the_queue_when_the_drain_runs_out(tmp_path: Path) -> None:
    """One worker, its send hanging past the drain: that message is abandoned (in doubt
    next start), the rows it never got to are queued again, not left inflight to be
    held as in doubt on a platform that cannot deduplicate."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    fill(store, 6)
    disp: Dispatcher

    async def hang(message: OutboundMessage) -> None:
        if message.key == "k00001":
            disp.stop()
            await asyncio.sleep(3600)

    disp = dispatcher(store, Hook(hang), concurrency=1)
    stats = await disp.run_due(NOW, drain=0.1)
    assert (stats.sent, stats.abandoned, stats.requeued) == (1, 1, 4)
    store.close()
    assert statuses(path) == {"k00000": "sent", "k00001": "inflight", **{f"k0000{i}": "queued" for i in range(2, 6)}}


async def test_the_loop_writes_through_the_same_store_while_the_thread_commits(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    fill(store, 1500)
    posted = 0

    async def before(message: OutboundMessage) -> None:
        nonlocal posted
        if int(message.key[1:]) % 10 == 0:  # as the intake does: a batch of events from the loop's thread
            accepted, _ = store.add_events([Event(f"e-{message.key}", "ping", T0, None, {})])
            posted += accepted
        await asyncio.sleep(0)

    stats = await dispatcher(store, Hook(before)).run_due(NOW)
    assert stats.sent == 1500 and posted == 150
    assert len(store.pending_events(T0 + timedelta(days=1), limit=1000)) == 150
    store.close()
    assert set(statuses(path).values()) == {"sent"}


async def test_other_stores_are_called_inline_on_the_loops_thread() -> None:
    store = RecordingMemory()
    fill(store, 600)
    stats = await dispatcher(store, Hook()).run_due(NOW)
    assert stats.sent == 600
    assert {thread for _, thread, _ in store.calls.log} == {threading.get_ident()}
    assert all(n <= COMMIT_EVERY for name, _, n in store.calls.log if name == "finish")
    assert store.outbox_counts()["sent"] == 600


@pytest.mark.parametrize("make", [lambda p: SqliteStore(p), lambda p: MemoryStore()], ids=["sqlite", "memory"])
async def test_a_chunk_that_is_all_screened_out_does_not_stop_the_claims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], Any]
) -> None:
    monkeypatch.setattr(dispatch, "CHUNK", 10)
    store = make(tmp_path / "state.db")
    fill(store, 35, opted_out=30)  # three whole chunks of opted-out members, then five to send
    hook = Hook()
    stats = await asyncio.wait_for(dispatcher(store, hook).run_due(NOW), timeout=30)
    assert (stats.cancelled, stats.sent) == (30, 5)
    assert sorted(hook.got) == [f"k{i:05d}" for i in range(30, 35)]
    counts = store.outbox_counts()
    assert (counts["cancelled"], counts["sent"], counts["inflight"]) == (30, 5, 0)
    store.close()


async def test_a_platforms_error_is_kept_and_logged_on_one_line() -> None:
    """What an adapter's error says (often a platform's own text) is stored and logged
    without its line breaks or control characters: it is shown in `cmtyflow outbox`'s
    table and in the runner's log on a terminal."""
    from cmtyflow.adapters.base import PermanentDeliveryError, TransientDeliveryError

    async def refuse(message: OutboundMessage) -> None:
        if message.key == "k00000":
            raise PermanentDeliveryError("chat: HTTP 400:\nbad\x1b[2J request")
        raise TransientDeliveryError("chat: busy\r\n\tline two")

    store = MemoryStore()
    fill(store, 2)
    logged: list[dict[str, Any]] = []
    d = Dispatcher(store, Channels(Hook(refuse)), lambda: NOW, policies={},  # type: ignore[arg-type]
                   log=lambda event, **fields: logged.append({"event": event, **fields}))
    stats = await d.run_due(NOW)
    assert (stats.dead, stats.failed) == (1, 1)
    errors = {r.message.key: r.last_error for r in store.outbox()}
    assert errors == {"k00000": "chat: HTTP 400: bad [2J request", "k00001": "chat: busy line two"}
    assert sorted(e["error"] for e in logged if "error" in e) == sorted(errors.values())


async def test_outcomes_are_committed_within_a_second_however_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send job's 200 rows were fewer than a group (256): their outcomes were committed
    when the job ended, and a worker killed after the platform answered sent them all
    again. What is answered is committed within COMMIT_WITHIN, a group or not, also
    while the only send in flight hangs."""
    monkeypatch.setattr(dispatch, "COMMIT_WITHIN", 0.05)
    store = RecordingSqlite(tmp_path / "state.db")
    fill(store, 3)
    release = asyncio.Event()
    committed_while_hanging: list[int] = []

    async def hang_on_the_second(message: OutboundMessage) -> None:
        if message.key != "k00001":
            return
        for _ in range(200):  # up to 2 s for the first one's commit, then let go
            done = sum(n for name, _, n in store.calls.log if name == "finish")
            if done:
                committed_while_hanging.append(done)
                break
            await asyncio.sleep(0.01)
        release.set()
        await release.wait()

    stats = await dispatcher(store, Hook(hang_on_the_second), concurrency=1).run_due(NOW)
    assert stats.sent == 3
    assert committed_while_hanging == [1]  # k00000's outcome, while k00001 hung
    assert statuses(tmp_path / "state.db") == dict.fromkeys(["k00000", "k00001", "k00002"], "sent")
    store.close()


async def test_a_commit_the_committer_could_not_make_stops_run_due_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once every row was claimed nothing heard the committer's failure: the sends went
    on until a worker's own commit failed too (a second later)."""
    monkeypatch.setattr(dispatch, "COMMIT_WITHIN", 0.05)

    class FailingMemory(RecordingMemory):
        def finish_messages(self, results: Any) -> None:
            raise OSError("the state went away")

    store = FailingMemory()
    fill(store, 10)

    async def slow(message: OutboundMessage) -> None:
        await asyncio.sleep(0.3)

    hook = Hook(slow)
    with pytest.raises(OSError, match="the state went away"):
        await dispatcher(store, hook, concurrency=1).run_due(NOW)
    assert hook.got == ["k00000"]  # its commit failed while the second was under way: that one is stopped
