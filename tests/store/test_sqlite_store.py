"""What only the SQLite store promises: WAL, durability across reopen, migrations and
refusals, atomic writes, a second process writing, the JSON codec, exclusive claims."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from store_records import SHANGHAI, at, event, message, run

from cmtyflow.engine.model import Decision
from cmtyflow.errors import UserError
from cmtyflow.store import codec, migrations
from cmtyflow.store import sqlite as sqlite_module
from cmtyflow.store.open import DEFAULT_STATE, open_store, state_location
from cmtyflow.store.sqlite import SqliteStore


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Callable[..., SqliteStore]]:
    """``opened(path=None)`` opens a store (default ``tmp_path/state.db``); all are
    closed at the end."""
    stores: list[SqliteStore] = []

    def _open(path: Path | None = None) -> SqliteStore:
        store = SqliteStore(path or tmp_path / "state.db")
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.close()


def pragma(path: Path, name: str) -> Any:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


# opening ------------------------------------------------------------------------------------------


def test_wal_and_settings(opened: Callable[..., SqliteStore], tmp_path: Path) -> None:
    store = opened(tmp_path / "deep" / "er" / "state.db")  # the folder is created
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    assert pragma(tmp_path / "deep" / "er" / "state.db", "user_version") == migrations.LATEST


def test_state_location_and_open_store(tmp_path: Path) -> None:
    # open_store with a postgresql:// URL: test_postgres_store.py
    assert state_location("a.db", {"CMTYFLOW_STATE": "b.db"}) == "a.db"
    assert state_location(None, {"CMTYFLOW_STATE": "b.db"}) == "b.db"
    assert state_location(None, {}) == DEFAULT_STATE == ".cmtyflow/state.db"
    store = open_store(str(tmp_path / "s.db"))
    try:
        assert isinstance(store, SqliteStore)
    finally:
        store.close()


def test_empty_file_is_migrated_and_reopen_is_idempotent(opened: Callable[..., SqliteStore], tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"")
    store = opened(path)
    store.put_members([{"id": "m1"}])
    store.close()
    schema = tables(path)
    assert {"members", "runs", "timers", "events", "outbox", "deliveries", "audit", "meta"} <= schema
    again = opened(path)
    assert again.member_count() == 1
    again.close()
    assert tables(path) == schema
    assert pragma(path, "user_version") == migrations.LATEST
    assert pragma(path, "application_id") == migrations.APPLICATION_ID


def test_a_newer_schema_is_refused(opened: Callable[..., SqliteStore], tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    opened(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {migrations.LATEST + 3}")
    db.close()
    with pytest.raises(UserError) as info:
        SqliteStore(path)
    message_text = str(info.value)
    assert str(path) in message_text
    assert f"schema version {migrations.LATEST + 3}" in message_text
    assert f"supports up to version {migrations.LATEST}" in message_text


@pytest.mark.parametrize("content", [b"this is not a database at all" * 200, b"\x00garbage", b"SQLite format 3\x00" + b"\xff" * 200])
def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not an SQLite database"):
        SqliteStore(path)
    assert path.read_bytes() == content  # untouched


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="not cmtyflow state"):
        SqliteStore(path)
    assert tables(path) == {"invoices"}


def test_a_folder_cannot_be_the_state(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="a folder; the state is a file in it, e.g. .*state.db"):
        SqliteStore(tmp_path)


def test_a_new_migration_upgrades_and_a_failing_one_changes_nothing(
    opened: Callable[..., SqliteStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    opened(path).put_members([{"id": "m1"}])
    current = migrations.LATEST
    broken = "CREATE TABLE extra (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    monkeypatch.setattr(migrations, "LATEST", len(migrations.MIGRATIONS))
    with pytest.raises(UserError, match="no_such_table"):
        SqliteStore(path)
    assert "extra" not in tables(path)
    assert pragma(path, "user_version") == current
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS[:-1], "CREATE TABLE extra (x INTEGER);"])
    upgraded = opened(path)
    assert "extra" in tables(path) and pragma(path, "user_version") == current + 1
    assert upgraded.get_member("m1") == {"id": "m1"}


def test_migration_statements_split() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT 'a;b');\n-- a comment\nCREATE INDEX a_x ON a (x);\n"
    assert migrations.statements(script) == ["CREATE TABLE a (x TEXT DEFAULT 'a;b');", "CREATE INDEX a_x ON a (x);"]
    with pytest.raises(ValueError, match="incomplete"):
        migrations.statements("CREATE TABLE a (x TEXT DEFAULT 'a;b)")


# durability -----------------------------------------------------------------------------------------


def test_inflight_rows_stay_inflight_across_reopen_until_marked(opened: Callable[..., SqliteStore], tmp_path: Path) -> None:
    store = opened()
    store.apply(Decision(messages=[message("k1", at(1))]))
    store.claim_due_messages(at(1))
    store.close()  # the process died mid-send
    again = opened()
    assert again.claim_due_messages(at(9)) == []
    assert [r.message.key for r in again.mark_in_doubt()] == ["k1"]
    assert again.outbox_counts()["in_doubt"] == 1


# several connections ---------------------------------------------------------------------------------


def test_a_second_process_adds_events_the_first_sees(opened: Callable[..., SqliteStore]) -> None:
    runner = opened()
    runner.put_members([{"id": "m1"}])
    assert runner.next_event_at() is None
    emit = opened()  # as `cmtyflow emit` would, while the runner holds its connection
    assert emit.add_events([event("e1", at(2)), event("e2", at(1))]) == (2, 0)
    assert emit.add_event(event("e1", at(2))) is False
    emit.close()
    assert runner.next_event_at() == at(1)
    assert [e.id for e in runner.pending_events(at(9))] == ["e2", "e1"]
    assert runner.counters()["duplicate_events"] == 1


def test_a_writer_waits_for_the_other_writers_transaction(opened: Callable[..., SqliteStore]) -> None:
    runner = opened()
    emit = opened()
    result: list[Any] = []
    runner.db.execute("BEGIN IMMEDIATE")  # the runner is in the middle of a write
    writer = threading.Thread(target=lambda: result.append(emit.add_events([event("e1", at(1))])))
    writer.start()
    time.sleep(0.2)
    assert result == []  # waiting for the lock (busy_timeout), not failing
    runner.db.execute("COMMIT")
    writer.join(5)
    assert result == [(1, 0)]
    assert [e.id for e in runner.pending_events(at(9))] == ["e1"]


def test_statistics_of_a_small_outbox_do_not_outlive_it(opened: Callable[..., SqliteStore], tmp_path: Path) -> None:
    """Statistics taken while the outbox was small (PRAGMA optimize at a first run's
    close) planned the group commit as a scan of the whole outbox per delivery: 5,000
    deliveries took 31.6 s instead of 0.13 s. None are kept at close, and those an
    earlier version kept are dropped at open."""
    store = opened()
    store.apply(Decision(messages=[message(f"a{i}", at(1)) for i in range(2)]))
    store.close()
    assert "sqlite_stat1" not in tables(tmp_path / "state.db") or not _stat_rows(tmp_path / "state.db")
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("ANALYZE")  # as the earlier version's close left them
    db.commit()
    db.close()
    assert _stat_rows(tmp_path / "state.db")
    again = opened()
    assert not _stat_rows(tmp_path / "state.db")
    plan = again.db.execute(
        "EXPLAIN QUERY PLAN UPDATE outbox SET status = 'sent' FROM json_each(?) AS v WHERE outbox.key = v.value ->> 3", ("[]",)
    ).fetchall()
    assert [row[3] for row in plan][0].startswith("SCAN v")  # each delivery looked up by its key


def _stat_rows(path: Path) -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM sqlite_stat1").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


# grouped writes ---------------------------------------------------------------------------------


def _commits(store: SqliteStore) -> list[str]:
    """The COMMITs ``store`` makes from now on, as SQLite runs them."""
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def test_grouped_writes_commit_a_group_at_a_time(opened: Callable[..., SqliteStore]) -> None:
    store, other = opened(), opened()
    commits = _commits(store)
    with store.grouped(most=4, within=3600):
        for i in range(10):
            store.apply(Decision(messages=[message(f"k{i}", at(i))]))
            # What is committed is what another connection sees: groups of 4.
            assert other.outbox_counts().get("queued", 0) == (i + 1) // 4 * 4
        assert len(commits) == 2
    assert len(commits) == 3  # the last two, when the block ends
    assert other.outbox_counts()["queued"] == 10


def test_grouped_writes_commit_after_the_time_given(opened: Callable[..., SqliteStore]) -> None:
    store, other = opened(), opened()
    with store.grouped(most=1000, within=0.0):  # every write is already old enough
        store.apply(Decision(messages=[message("k1", at(1))]))
        assert other.outbox_counts()["queued"] == 1


def test_a_failed_write_in_a_group_is_undone_alone(opened: Callable[..., SqliteStore]) -> None:
    store, other = opened(), opened()
    with pytest.raises(KeyError), store.grouped(most=100, within=3600):
        store.apply(Decision(messages=[message("k1", at(1))]))
        # A result for a key that is not there: its transaction's writes roll back
        # (the counter it had added, say), the earlier write stays and is committed.
        store.finish_messages([("k1", "sent", {"sent_at": at(1), "attempts": 1}), ("nope", "sent", {"sent_at": at(1), "attempts": 1})])
    assert other.outbox_counts()["queued"] == 1 and other.outbox_counts()["sent"] == 0
    assert other.counters().get("messages_sent", 0) == 0
    assert not store.db.in_transaction
    store.apply(Decision(messages=[message("k2", at(2))]))  # the store goes on as before
    assert other.outbox_counts()["queued"] == 2


def test_other_threads_wait_for_the_group(opened: Callable[..., SqliteStore]) -> None:
    """A write of another thread (the dispatcher's) must not join a group not yet
    committed: it would count as done and be lost with the group in a crash."""
    store = opened()
    done: list[str] = []
    writer = threading.Thread(target=lambda: (store.add_events([event("e1", at(1))]), done.append("written")))
    with store.grouped(most=100, within=3600):
        store.apply(Decision(messages=[message("k1", at(1))]))
        writer.start()
        time.sleep(0.2)
        assert done == []
    writer.join(5)
    assert done == ["written"]
    assert store.outbox_counts()["queued"] == 1 and [e.id for e in store.pending_events(at(9))] == ["e1"]


def _old_sent_messages(store: SqliteStore, n: int) -> None:
    store.put_members([{"id": "m1"}])
    store.apply(Decision(messages=[message(f"k{i}", at(i)) for i in range(n)]))
    store.claim_due_messages(at(n), limit=n)
    store.finish_messages([(f"k{i}", "sent", {"sent_at": at(i), "attempts": 1}) for i in range(n)])


def test_a_writer_gets_in_between_another_writers_short_pauses(opened: Callable[..., SqliteStore]) -> None:
    """A runner working through a backlog holds the lock for a group of inputs and lets
    it go for a moment between groups. SQLite's own wait tries every 100 ms after its
    first quarter second and missed those moments: an `emit` waited 5.2 s behind
    20,000 inputs. A write now tries every millisecond."""
    runner, emit = opened(), opened()
    holding = threading.Event()
    done = threading.Event()

    def groups() -> None:
        runner.db.execute("BEGIN IMMEDIATE")
        holding.set()
        time.sleep(1.0)  # the waiter is past SQLite's first, quick tries
        while not done.is_set():
            runner.db.execute("COMMIT")
            time.sleep(0.003)  # the moment between two groups
            runner.db.execute("BEGIN IMMEDIATE")
            time.sleep(0.05)
        runner.db.execute("COMMIT")

    holder = threading.Thread(target=groups)
    holder.start()
    try:
        holding.wait(5)
        started = time.monotonic()
        assert emit.add_events([event("e1", at(1))]) == (1, 0)
        waited = time.monotonic() - started
    finally:
        done.set()
        holder.join(5)
    assert waited < 1.5, waited  # in at the first or second pause after the first second


def test_prune_lets_a_runners_writes_in_between_its_transactions(opened: Callable[..., SqliteStore]) -> None:
    """A prune of a large state is many short transactions: a runner's write between
    two of them gets the lock at once (as one transaction of 2 million rows each, it
    held the lock past the runner's 10 s wait, and the runner stopped)."""
    pruner, runner = opened(), opened()
    _old_sent_messages(pruner, 30)
    pruner.PRUNE_WINDOW = 10
    runner.db.execute("PRAGMA busy_timeout = 0")  # a write that had to wait fails
    written: list[str] = []

    def between(line: str, n: int) -> None:
        key = f"{line}-{n}"
        assert runner.add_events([event(key, at(10_000))]) == (1, 0)
        written.append(key)

    counts = pruner.prune(at(5000), progress=between)
    assert counts["deliveries"] == counts["messages sent or cancelled"] == 30
    assert written[:6] == ["deliveries-10", "deliveries-20", "deliveries-30",
                           "messages sent or cancelled-10", "messages sent or cancelled-20", "messages sent or cancelled-30"]
    assert list(pruner.outbox()) == [] and list(pruner.deliveries()) == []


def test_prune_dry_run_only_reads(opened: Callable[..., SqliteStore]) -> None:
    """``--dry-run`` counts beside a runner in the middle of a write, without waiting
    for it or taking the lock (it was a transaction rolled back)."""
    pruner, runner = opened(), opened()
    _old_sent_messages(pruner, 5)
    pruner.db.execute("PRAGMA busy_timeout = 0")
    runner.db.execute("BEGIN IMMEDIATE")
    try:
        counts = pruner.prune(at(5000), keep=True)
    finally:
        runner.db.execute("COMMIT")
    assert counts["deliveries"] == counts["messages sent or cancelled"] == 5
    assert len(list(pruner.outbox())) == 5


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-update"])
def test_claims_never_hand_out_a_row_twice(
    opened: Callable[..., SqliteStore], monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    monkeypatch.setattr(sqlite_module, "RETURNING", returning and sqlite3.sqlite_version_info >= (3, 35, 0))
    first = opened()
    first.apply(Decision(messages=[message(f"k{i:04d}", at(i % 50)) for i in range(1200)]))
    second = opened()
    claimed: list[list[str]] = [[], []]

    def claim(store: SqliteStore, into: list[str]) -> None:
        while True:
            rows = store.claim_due_messages(at(60), limit=25)
            if not rows:
                return
            into.extend(r.message.key for r in rows)

    threads = [threading.Thread(target=claim, args=(s, out)) for s, out in zip((first, second), claimed, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    together = claimed[0] + claimed[1]
    assert len(together) == len(set(together)) == 1200
    assert first.outbox_counts()["inflight"] == 1200


# the codec -------------------------------------------------------------------------------------------

EXACT_VALUES: list[Any] = [
    None, True, False, 0, -3, 2**70, 1.5, -0.0, "", "text ✓ 中文", [], {},
    datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")),  # in a DST gap: kept, not normalised
    datetime(2026, 3, 29, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin")),
    datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York")),  # the first 1:30
    datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),  # the second 1:30
    datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 12, 1, 9, 0),
    date(2026, 12, 1),
    (1, "a", (2,)),
    {"event": {"at": at(1), "data": {"tags": ["a", "b"], "n": None}}, "ok": True},
    {0: 1, 3: [date(2026, 1, 1)], "2": "text key", (1, "x"): "tuple key", None: "none key"},
    {"$dt": "not a datetime"}, {"$map": [1, 2]}, {"$dt": {"$date": 1}},
    [[{"$tuple": []}]],
]


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (and the same tzinfo and fold)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k1, k2) and same(a[k1], b[k2]) for k1, k2 in zip(a, b, strict=True))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat()
    return bool(a == b)


@pytest.mark.parametrize("value", EXACT_VALUES, ids=lambda v: type(v).__name__)
def test_codec_round_trips_exactly(value: Any) -> None:
    back = codec.loads(codec.dumps(value))
    assert same(back, value), (value, back)


def test_codec_keeps_zoneinfo_by_key_and_nan() -> None:
    when = datetime(2026, 12, 1, 9, 0, tzinfo=SHANGHAI)
    assert codec.dumps(when) == '{"$dt":"2026-12-01T09:00:00+08:00[Asia/Shanghai]"}'
    assert codec.loads(codec.dumps(when)).tzinfo is SHANGHAI
    assert math.isnan(codec.loads(codec.dumps(float("nan"))))


@pytest.mark.parametrize("value", [{1, 2}, object(), {"a": [b"bytes"]}, timedelta(1)], ids=lambda v: type(v).__name__)
def test_codec_refuses_what_would_not_come_back(value: Any) -> None:
    with pytest.raises(TypeError, match="cannot store"):
        codec.dumps(value)


def test_values_in_store_records_round_trip(opened: Callable[..., SqliteStore]) -> None:
    store = opened()
    record = {"id": "m1", "joined_at": date(2026, 1, 2), "seen": [at(1), None], "extra": {"1": (1, 2)}}
    store.put_members([record])
    assert same(store.get_member("m1"), record)
    state = {"last": date(2026, 12, 1), "streak": 3, "ratio": 0.25, "badges": ["a"], "deep": {"x": [{"y": at(2)}]}}
    start = {"id": "q1", "playbook": "pb", "flow": "f", "member": None, "event": {"at": at(3)}, "inputs": {"n": 1}}
    the_run = run("r1", occurrences={1: 2}, loops={3: 4}, inputs={"when": at(4)}, wait={"event": None, "timed_out": True},
                  checkin={"duplicate": False})
    store.apply(Decision(states={("pb", None): state}, queued_starts=[start], runs={"r1": the_run}))
    assert same(store.get_state("pb", None), state)
    assert same(store.queued_starts("pb", "f", None), [start])
    got = store.get_run("r1")
    assert got == the_run and same(got.occurrences, {1: 2}) and same(got.inputs, {"when": at(4)})
