"""The SQLite store's outbox statements that work on a whole chunk or group at once
(the claim read as one JSON array, a group of results applied from one JSON array)
give what the row-by-row statements give; and calls from two threads on one store
wait for each other (the dispatcher's thread and the event loop's)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from store_records import T0, at, event, message

from cmtyflow.engine.model import Decision
from cmtyflow.store import sqlite as sqlite_module
from cmtyflow.store.sqlite import SqliteStore

UTC = ZoneInfo("UTC")
TEXTS = ['plain', 'quotes " and \\ backslash', "tab\tnew\nline\x01\x1f", "你好 🎉 \u2028 é", "$dt not a tag", ""]


def outbox_state(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        outbox = db.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
        deliveries = db.execute("SELECT key, at_ts, at, playbook, platform_id FROM deliveries ORDER BY seq").fetchall()
        counters = db.execute("SELECT * FROM counters ORDER BY name").fetchall()
        return outbox, deliveries, counters
    finally:
        db.close()


@pytest.fixture
def two_states(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    """The same outbox twice: one store on the chunk statements, one on the row-by-row ones."""
    stores = []
    for name in ("json", "rows"):
        store = SqliteStore(tmp_path / f"{name}.db")
        store.put_members([
            {"id": "m1", "name": "Ann", "email": "ann@example.org"},
            {"id": "m2", "name": "Bo", "opted_out": True, "since": datetime(2026, 11, 1, 8, 30, tzinfo=T0.tzinfo)},
            {"id": "m3", "name": 'Cy "the" $dt', "score": 1.5, "tags": ["a", "b"], "nested": {"$tuple": 1}},
        ])
        msgs = []
        for i in range(40):
            # due times out of key and insertion order, some equal (then insertion order)
            due = at((i * 7) % 13)
            member = (None, "m1", "m2", "m3", "ghost")[i % 5]
            msgs.append(message(
                f"k{i:03d}", due, member=member, to="channel" if member is None else "member",
                text=TEXTS[i % len(TEXTS)], urgent=i % 3 == 0, variant="b" if i % 4 == 0 else None,
                deferred="quiet_hours" if i % 6 == 0 else None, occurrence=i,
            ))
        store.apply(Decision(messages=msgs))
        stores.append(store)
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def test_a_claim_read_as_one_json_array_is_the_claim_row_by_row(two_states: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch) -> None:
    chunked, rowwise = two_states
    assert sqlite_module.JSON and sqlite_module.RETURNING
    got = [chunked.claim_due_messages_with_members(at(10), limit=7) for _ in range(3)]
    got.append(chunked.claim_due_messages(at(10), limit=100))
    monkeypatch.setattr(sqlite_module, "JSON", False)
    want = [rowwise.claim_due_messages_with_members(at(10), limit=7) for _ in range(3)]
    want.append(rowwise.claim_due_messages(at(10), limit=100))
    assert got == want
    assert [r.status for r, _ in got[0]] == ["inflight"] * 7
    keys = [r.message.key for chunk in got[:3] for r, _ in chunk] + [r.message.key for r in got[3]]
    claimed = [r for chunk in got[:3] for r, _ in chunk] + got[3]
    order = [(not r.message.urgent, r.message.deliver_at) for r in claimed]  # urgent first, then by due time
    assert order == sorted(order) and len(set(keys)) == len(keys) and order[0][0] is False and order[-1][0] is True
    members = {r.message.member: m for chunk in got[:3] for r, m in chunk}
    assert members["m2"]["since"] == datetime(2026, 11, 1, 8, 30, tzinfo=T0.tzinfo)  # tags still decoded
    assert members["m3"]["nested"] == {"$tuple": 1} and members.get("ghost", 0) is None
    assert outbox_state(Path(chunked.path))[0] == outbox_state(Path(rowwise.path))[0]


def results(now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(30):
        key = f"k{i:03d}"
        if i % 5 == 4:
            out.append((key, "failed", {"attempts": 2, "next_attempt": now + timedelta(seconds=30.123456 * i), "last_error": f"HTTP 500 \"{i}\""}))
        elif i % 7 == 6:
            out.append((key, "dead", {"attempts": 5, "last_error": "HTTP 403: 你好"}))
        elif i % 11 == 10:
            out.append((key, "queued", {}))
        else:
            out.append((key, "sent", {"sent_at": now + timedelta(microseconds=i), "attempts": 1, "platform_id": f"id-{i}", "last_error": None}))
    out.append(("k001", "sent", {"sent_at": now, "attempts": 2, "platform_id": b"\x00bytes", "last_error": None}))  # a value JSON does not carry
    out.append(("k002", "sent", {"sent_at": now, "attempts": True, "platform_id": 7, "last_error": None}))
    return out


def test_a_group_of_results_from_one_json_array_is_the_same_as_row_by_row(two_states: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch) -> None:
    chunked, rowwise = two_states
    now = T0 + timedelta(hours=1)
    for store in (chunked, rowwise):
        store.claim_due_messages(at(100), limit=100)
    chunked.finish_messages(results(now))
    chunked.finish_messages([(f"k{i:03d}", "sent", {"sent_at": now, "attempts": 1, "platform_id": None, "last_error": None}) for i in range(30, 40)])
    monkeypatch.setattr(sqlite_module, "JSON", False)
    rowwise.finish_messages(results(now))
    rowwise.finish_messages([(f"k{i:03d}", "sent", {"sent_at": now, "attempts": 1, "platform_id": None, "last_error": None}) for i in range(30, 40)])
    assert outbox_state(Path(chunked.path)) == outbox_state(Path(rowwise.path))
    assert [r.platform_id for r in chunked.find_messages("k001")] == [b"\x00bytes"]


def test_a_group_of_deliveries_as_the_dispatcher_records_them_is_written_as_the_general_way_writes_it(
    two_states: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, general = two_states
    shanghai = ZoneInfo("Asia/Shanghai")
    sent = [
        (f"k{i:03d}", "sent", {"sent_at": (T0 + timedelta(seconds=i, microseconds=7 * i)).astimezone(shanghai if i % 2 else UTC),
                               "attempts": 1 + i % 3, "platform_id": None if i % 4 == 0 else f"id-{i} 你好 \"q\"", "last_error": None})
        for i in range(40)
    ]
    taken = []
    real = sqlite_module._deliveries_json
    monkeypatch.setattr(sqlite_module, "_deliveries_json", lambda results: taken.append(real(results)) or taken[-1])
    for store in (fast, general):
        store.claim_due_messages(at(100), limit=100)
    fast.finish_messages(sent[:25])
    fast.finish_messages(iter(sent[25:]))
    assert all(t is not None for t in taken)
    monkeypatch.setattr(sqlite_module, "_deliveries_json", lambda results: None)
    general.finish_messages(sent[:25])
    general.finish_messages(sent[25:])
    assert outbox_state(Path(fast.path)) == outbox_state(Path(general.path))
    assert fast.outbox_counts()["sent"] == 40


def test_deliveries_the_shortcut_cannot_write_as_they_are_go_the_general_way() -> None:
    ok = {"sent_at": T0, "attempts": 1, "platform_id": "x", "last_error": None}
    assert sqlite_module._deliveries_json([("a", "sent", ok), ("b", "sent", ok)]) is not None
    for odd in (
        [("a", "sent", ok), ("a", "sent", ok)],  # a key twice: the last result wins, row by row
        [("a", "sent", ok), ("b", "failed", {"attempts": 1, "next_attempt": T0, "last_error": "x"})],
        [("a", "sent", ok), ("b", "sent", {**ok, "platform_id": 7})],
        [("a", "sent", ok), ("b", "sent", {**ok, "attempts": 2**64})],
        [("a", "sent", ok), ("b", "sent", {**ok, "attempts": True})],
        [("a", "sent", ok), ("b", "sent", {**ok, "last_error": "late"})],
        [("a", "sent", ok), ("b", "sent", {"attempts": 1, "sent_at": T0, "platform_id": "x", "last_error": None})],
        [("a", "sent", ok)],  # one: bound as it is
    ):
        assert sqlite_module._deliveries_json(odd) is None, odd


def test_a_group_with_a_missing_key_changes_nothing(two_states: tuple[SqliteStore, SqliteStore]) -> None:
    chunked, _ = two_states
    chunked.claim_due_messages(at(100), limit=100)
    before = outbox_state(Path(chunked.path))
    sent = {"sent_at": T0, "attempts": 1, "platform_id": "x", "last_error": None}
    with pytest.raises(KeyError, match="nope"):
        chunked.finish_messages([("k000", "sent", sent), ("nope", "sent", sent), ("k003", "sent", sent)])
    assert outbox_state(Path(chunked.path)) == before


def test_calls_from_two_threads_wait_for_each_other(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.apply(Decision(messages=[message(f"k{i:04d}", at(0)) for i in range(2000)]))
    errors: list[BaseException] = []
    claimed: list[str] = []

    def dispatcher_side() -> None:
        try:
            while rows := store.claim_due_messages_with_members(at(1), limit=50):
                claimed.extend(r.message.key for r, _ in rows)
                store.finish_messages([(r.message.key, "sent", {"sent_at": T0, "attempts": 1, "platform_id": None, "last_error": None}) for r, _ in rows])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=dispatcher_side)
    thread.start()
    accepted = 0
    while thread.is_alive() or accepted < 300:  # the loop's side: events, reads, member writes
        ok, _ = store.add_events([event(f"e{accepted}", at(0))])
        accepted += ok
        store.put_members([{"id": f"m{accepted}"}])
        store.outbox_counts()
        store.next_message_due()
    thread.join()
    assert not errors
    assert sorted(claimed) == [f"k{i:04d}" for i in range(2000)]
    assert store.outbox_counts()["sent"] == 2000 and len(list(store.deliveries())) == 2000
    assert len(store.pending_events(at(10), limit=100_000)) == accepted
    store.close()


@pytest.mark.parametrize("json_on", [True, False])
def test_an_int_past_64_bits_is_refused_as_binding_refuses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_on: bool) -> None:
    monkeypatch.setattr(sqlite_module, "JSON", json_on)
    store = SqliteStore(tmp_path / "state.db")
    store.apply(Decision(messages=[message("a", at(0)), message("b", at(0))]))
    store.claim_due_messages(at(1))
    sent = {"sent_at": T0, "attempts": 1, "last_error": None}
    with pytest.raises(OverflowError):
        store.finish_messages([("a", "sent", {**sent, "platform_id": "ok"}), ("b", "sent", {**sent, "platform_id": 2**64})])
    assert store.outbox_counts()["inflight"] == 2
    store.close()
