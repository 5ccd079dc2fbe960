"""The Store contract (store/base.py), for MemoryStore, SqliteStore and PostgresStore
(twice: its few-rows statements, and with every bulk write going by COPY), plus the
dry-run equivalence: the shipped golden transcripts come out the same with the SQLite
and the PostgreSQL store under the dry run."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from store_records import SHANGHAI, at, event, message, run, timer, wait

import cmtyflow.runtime.dryrun as dryrun_module
from cmtyflow.engine.model import Decision, Event
from cmtyflow.runtime import golden
from cmtyflow.runtime.prepare import load_programs
from cmtyflow.runtime.simulate import Simulation, parse_spec
from cmtyflow.store.base import OUTBOX_STATES, ScheduleUpdate, Store
from cmtyflow.store.memory import MemoryStore
from cmtyflow.store.sqlite import SqliteStore

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
GOLDEN_SPECS = sorted(PLAYBOOKS.glob("*.test.yaml"))


def postgres_store(request: pytest.FixtureRequest, *, copy_always: bool = False) -> Store:
    """A PostgresStore on a schema of its own; ``copy_always``: every bulk write by COPY."""
    from cmtyflow.store import postgres

    url = request.getfixturevalue("pg_url")
    if copy_always:
        request.getfixturevalue("monkeypatch").setattr(postgres, "COPY_MIN", 1)
    return postgres.PostgresStore(url)


@pytest.fixture(params=["memory", "sqlite", "postgres", "postgres-copy"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "state.db")
    else:
        made = postgres_store(request, copy_always=request.param == "postgres-copy")
    yield made
    made.close()


def keys(rows: Any) -> list[str]:
    return [r.message.key for r in rows]


# members -----------------------------------------------------------------------------------------


def test_members_keep_roster_order_and_merge_updates(store: Store) -> None:
    assert store.put_members([{"id": "b", "name": "Bo"}, {"id": "a", "name": "Al", "tags": ["x"]}]) == 2
    assert store.put_members([{"id": "c"}, {"id": "b", "timezone": "Europe/Berlin"}]) == 2
    assert [m["id"] for m in store.iter_members()] == ["b", "a", "c"]
    assert store.get_member("b") == {"id": "b", "name": "Bo", "timezone": "Europe/Berlin"}
    assert store.get_member("a") == {"id": "a", "name": "Al", "tags": ["x"]}
    assert store.get_member("nobody") is None
    assert store.member_count() == 3


def test_members_repeated_in_one_batch_merge_in_order(store: Store) -> None:
    assert store.put_members([{"id": "a", "x": 1, "y": 1}, {"id": "a", "y": 2}]) == 2
    assert store.get_member("a") == {"id": "a", "x": 1, "y": 2}
    assert store.member_count() == 1


def test_members_by_timezone_count_the_default_for_members_without_one(store: Store) -> None:
    store.put_members([
        {"id": "s1", "timezone": "Asia/Shanghai"}, {"id": "n1"}, {"id": "b1", "timezone": "Europe/Berlin"},
        {"id": "s2", "timezone": "Asia/Shanghai"}, {"id": "n2", "timezone": ""},
    ])
    local = store.iter_members(timezone="Asia/Shanghai", default_timezone="Asia/Shanghai")
    assert [m["id"] for m in local] == ["s1", "n1", "s2", "n2"]
    assert [m["id"] for m in store.iter_members(timezone="Asia/Shanghai")] == ["s1", "s2"]
    berlin = store.iter_members(timezone="Europe/Berlin", default_timezone="Asia/Shanghai")
    assert [m["id"] for m in berlin] == ["b1"]
    assert store.member_timezones() == {"Asia/Shanghai", "Europe/Berlin"}


def test_member_timezones_only_grow(store: Store) -> None:
    # The driver compares their number to know whether a schedule zone is new.
    store.put_members([{"id": "a", "timezone": "Europe/Berlin"}])
    store.put_members([{"id": "a", "timezone": "America/New_York"}])
    assert store.member_timezones() == {"Europe/Berlin", "America/New_York"}


def test_many_members_iterate_across_pages(store: Store) -> None:
    store.put_members({"id": f"m{i:05d}", "timezone": "Asia/Shanghai" if i % 3 else None} for i in range(2500))
    assert [m["id"] for m in store.iter_members()] == [f"m{i:05d}" for i in range(2500)]
    local = [m["id"] for m in store.iter_members(timezone="Asia/Shanghai", default_timezone="Asia/Shanghai")]
    assert len(local) == 2500 and local == sorted(local)
    assert store.member_count() == 2500


def test_decision_members_update_the_roster(store: Store) -> None:
    store.put_members([{"id": "m1", "name": "Mo"}])
    store.apply(Decision(members={"m1": {"id": "m1", "name": "Mo", "opted_out": True}}))
    assert store.get_member("m1") == {"id": "m1", "name": "Mo", "opted_out": True}


# states, runs --------------------------------------------------------------------------------------


def test_states_per_member_and_campaign(store: Store) -> None:
    assert store.get_state("pb", "m1") == {}
    store.apply(Decision(states={("pb", "m1"): {"points": 3, "badges": ["a"]}, ("pb", None): {"round": 1}}))
    store.apply(Decision(states={("pb", "m1"): {"points": 4, "badges": ["a", "b"]}, ("other", "m1"): {"x": 1}}))
    assert store.get_state("pb", "m1") == {"points": 4, "badges": ["a", "b"]}
    assert store.get_state("pb", None) == {"round": 1}
    assert store.get_state("pb", "m2") == {}
    assert list(store.states("pb")) == [("m1", {"points": 4, "badges": ["a", "b"]}), (None, {"round": 1})]


def test_runs_upsert_and_active_runs(store: Store) -> None:
    first = run("r1", event={"id": "e1", "at": at(1), "data": {"n": 1}}, occurrences={0: 1, 3: 2}, loops={4: 1})
    store.apply(Decision(runs={"r1": first, "r2": run("r2"), "c1": run("c1", member=None)}))
    assert store.active_runs("pb", "welcome", "m1") == ["r1", "r2"]
    assert store.active_runs("pb", "welcome", None) == ["c1"]
    assert store.active_runs("pb", "other", "m1") == []
    got = store.get_run("r1")
    assert got == first
    assert got.occurrences == {0: 1, 3: 2} and got.event["at"] == at(1)
    moved = run("r1", pc=5, waiting={"kind": "timer", "timer": "t1", "event": None})
    store.apply(Decision(runs={"r1": moved}))
    assert store.get_run("r1") == moved
    assert store.active_runs("pb", "welcome", "m1") == ["r1", "r2"]
    store.apply(Decision(runs={"r1": run("r1", status="done")}))
    assert store.active_runs("pb", "welcome", "m1") == ["r2"]
    assert [r.id for r in store.runs()] == ["r2", "c1"]
    assert [r.id for r in store.runs(status="active", playbook="pb")] == ["r2", "c1"]
    assert list(store.runs(playbook="other")) == []
    done = store.get_run("r1")  # MemoryStore forgets finished runs; SQLite keeps them
    assert done is None or done.status == "done"


# timers, waits, day counts ---------------------------------------------------------------------------


def test_due_timers_in_due_then_id_order_until_consumed(store: Store) -> None:
    utc_same_instant = at(10).astimezone(UTC)
    store.apply(Decision(timers=[
        timer("t3", "r1", at(10)), timer("t1", "r2", utc_same_instant), timer("t2", "r3", at(5)),
        timer("t9", "r4", at(60)),
    ]))
    assert store.next_timer_due() == at(5)
    due = store.due_timers(at(10))
    assert [t.id for t in due] == ["t2", "t1", "t3"]
    assert due[1].due == utc_same_instant and due[1].due.utcoffset() == timedelta(0)
    assert [t.id for t in store.due_timers(at(10), limit=2)] == ["t2", "t1"]
    assert [t.id for t in store.due_timers(at(10))] == ["t2", "t1", "t3"]  # reading takes nothing
    store.apply(Decision(), consumed_timer="t2")
    assert [t.id for t in store.due_timers(at(10))] == ["t1", "t3"]
    assert [t.id for t in store.upcoming_timers(3)] == ["t1", "t3", "t9"]
    store.apply(Decision(cancel_timers_of=["r4", "r2"]))
    assert [t.id for t in store.upcoming_timers()] == ["t3"]
    assert store.next_timer_due() == at(10)


def test_cancelled_timers_of_a_run_then_new_timer_in_one_decision(store: Store) -> None:
    store.apply(Decision(timers=[timer("t1", "r1", at(5))]))
    store.apply(Decision(cancel_timers_of=["r1"], timers=[timer("t2", "r1", at(7))]))
    assert [t.id for t in store.upcoming_timers()] == ["t2"]
    assert store.upcoming_timers()[0] == timer("t2", "r1", at(7))


def test_event_waits_by_member_and_with_where(store: Store) -> None:
    store.apply(Decision(waits=[
        wait("r1", member="m1"), wait("r2", member="m2"), wait("c1", member=None, where="event.data.ok"),
        wait("r3", event_type="other", member="m1"),
    ]))
    assert [(w.run, w.member, w.where) for w in store.event_waits("reply", "m1")] == [
        ("c1", None, "event.data.ok"), ("r1", "m1", None),
    ]
    assert [w.run for w in store.event_waits("reply", None)] == ["c1"]
    assert [w.run for w in store.event_waits("reply", "m9")] == ["c1"]
    store.apply(Decision(cancel_waits_of=["r1", "c1"]))
    assert list(store.event_waits("reply", "m1")) == []
    assert [w.run for w in store.event_waits("reply", "m2")] == ["r2"]


def test_day_counts_add_up(store: Store) -> None:
    assert store.day_count("m1", "2026-12-01") == 0
    store.apply(Decision(day_counts={("m1", "2026-12-01"): 2, ("m2", "2026-12-01"): 1}))
    store.apply(Decision(day_counts={("m1", "2026-12-01"): 1, ("m1", "2026-12-02"): 1}))
    assert store.day_count("m1", "2026-12-01") == 3
    assert store.day_count("m1", "2026-12-02") == 1
    assert store.day_count("m2", "2026-12-01") == 1


# events --------------------------------------------------------------------------------------------


def test_events_dedupe_by_id(store: Store) -> None:
    assert store.add_event(event("e1", at(1))) is True
    assert store.add_event(event("e1", at(2))) is False
    assert store.counters().get("duplicate_events") == 1
    assert [e.at for e in store.pending_events(at(60))] == [at(1)]


def test_pending_events_by_time_then_arrival(store: Store) -> None:
    store.add_events([event("late", at(5)), event("a", at(1)), event("b", at(1).astimezone(UTC))])
    store.add_event(event("c", at(1)))
    assert store.next_event_at() == at(1)
    assert [e.id for e in store.pending_events(at(1))] == ["a", "b", "c"]


def test_pending_events_limit_and_consumption(store: Store) -> None:
    store.add_events(event(f"e{i}", at(i)) for i in range(5))
    first = store.pending_events(at(10), limit=2)
    assert [e.id for e in first] == ["e0", "e1"]
    for e in first:
        store.apply(Decision(), consumed_event=e.id)
    assert [e.id for e in store.pending_events(at(10))] == ["e2", "e3", "e4"]
    assert store.counters()["events_processed"] == 2


def test_event_values_round_trip(store: Store) -> None:
    data = {"text": "hi", "n": 2, "ratio": 0.5, "flag": True, "none": None, "list": [1, "a"], "day": date(2026, 12, 1),
            "at": at(3), "nested": {"deep": [{"x": at(4)}]}}
    sent = event("e1", at(1), etype="message.posted", **data)
    store.add_event(sent)
    assert store.add_event(event("e2", at(2), member=None)) is True
    got, campaign = store.pending_events(at(9))
    assert got == sent and got.data["at"].tzinfo is SHANGHAI
    assert campaign.member is None and campaign.data == {}
    update = Event("e3", "member.joined", at(3), "m9", {}, {"id": "m9", "name": "Nia", "tags": ["new"]})
    store.add_event(update)
    assert store.take_event("e3") == update


def test_take_event_by_id(store: Store) -> None:
    store.add_events([event("e1", at(1)), event("e2", at(2))])
    taken = store.take_event("e2")
    assert taken is not None and taken.id == "e2"
    store.apply(Decision(), consumed_event="e2")
    assert store.take_event("e2") is None
    assert store.take_event("nope") is None
    assert [e.id for e in store.pending_events(at(9))] == ["e1"]


def test_add_events_counts_accepted_and_duplicates(store: Store) -> None:
    store.add_event(event("e1", at(1)))
    assert store.add_events([event("e1", at(1)), event("e2", at(2)), event("e2", at(2)), event("e3", at(3))]) == (2, 2)
    assert store.add_events([]) == (0, 0)
    assert store.counters()["duplicate_events"] == 2
    assert [e.id for e in store.pending_events(at(9))] == ["e1", "e2", "e3"]


def test_emitted_events_are_queued_once(store: Store) -> None:
    store.add_event(event("seen", at(0)))
    store.apply(Decision(emitted=[event("new", at(1)), event("seen", at(1))]))
    assert [e.id for e in store.pending_events(at(9))] == ["seen", "new"]
    assert store.counters()["duplicate_events"] == 1


# schedules, queued starts, goals ----------------------------------------------------------------------


def test_schedule_positions(store: Store) -> None:
    store.set_schedules([ScheduleUpdate("pb", "daily", "Asia/Shanghai", at(60)), ScheduleUpdate("pb", "once", "UTC", at(5))])
    store.apply(Decision(), schedules=[ScheduleUpdate("pb", "once", "UTC", None), ScheduleUpdate("pb", "daily", "Europe/Berlin", at(90))])
    assert list(store.schedule_positions().items()) == [
        (("pb", "daily", "Asia/Shanghai"), at(60)), (("pb", "once", "UTC"), None), (("pb", "daily", "Europe/Berlin"), at(90)),
    ]


def test_a_firing_under_way_keeps_its_place_with_its_position(store: Store) -> None:
    """A firing over the audience goes a chunk at a time (runtime/driver.py): its place
    in the roster is kept with the schedule's position, and cleared with the last chunk."""
    key = ("pb", "daily", "UTC")
    store.apply(Decision(), schedules=[ScheduleUpdate(*key, at(60), 1234, at(61), at(61))])
    assert store.firing_progress() == {key: (at(60), 1234, at(61), at(61))} and store.schedule_positions()[key] == at(60)
    store.apply(Decision(), schedules=[ScheduleUpdate(*key, at(60), 5678, at(61), at(62))])
    assert store.firing_progress() == {key: (at(60), 5678, at(61), at(62))}
    store.apply(Decision(), schedules=[ScheduleUpdate(*key, at(1500))])
    assert store.firing_progress() == {} and store.schedule_positions()[key] == at(1500)


def test_members_are_read_from_a_place_in_the_roster(store: Store) -> None:
    store.put_members([{"id": f"m{i}", "timezone": "Europe/Berlin" if i % 3 == 0 else None} for i in range(8)])
    everyone = list(store.members_from(0))
    assert [m["id"] for _, m in everyone] == [f"m{i}" for i in range(8)]
    places = [seq for seq, _ in everyone]
    assert places == sorted(places) and len(set(places)) == 8
    assert [m["id"] for _, m in store.members_from(places[4])] == ["m5", "m6", "m7"]
    # A zone's members, those without a timezone counted in the default one, in roster order.
    shanghai = [m["id"] for _, m in store.members_from(places[1], "Asia/Shanghai", "Asia/Shanghai")]
    assert shanghai == ["m2", "m4", "m5", "m7"]
    assert [m["id"] for _, m in store.members_from(0, "Europe/Berlin", "Asia/Shanghai")] == ["m0", "m3", "m6"]


def test_active_runs_are_counted_by_playbook_version_and_flow(store: Store) -> None:
    store.apply(Decision(runs={
        "a": run("a"), "b": run("b", member="m2"), "c": run("c", version="v2"), "d": run("d", flow="other"),
        "e": run("e", status="done"),
    }))
    assert store.active_run_counts() == {("pb", "v1", "welcome"): 2, ("pb", "v2", "welcome"): 1, ("pb", "v1", "other"): 1}


def test_queued_starts_and_dequeue(store: Store) -> None:
    rec = {"id": "q1", "playbook": "pb", "flow": "welcome", "member": "m1", "event": {"at": at(1)}, "inputs": {}}
    rec2 = {**rec, "id": "q2"}
    store.apply(Decision(queued_starts=[rec, rec2, {**rec, "id": "c", "member": None}]))
    assert store.queued_starts("pb", "welcome", "m1") == [rec, rec2]
    assert [r["id"] for r in store.queued_starts("pb", "welcome", None)] == ["c"]
    assert [r["id"] for r in store.waiting_starts()] == ["q1", "q2", "c"]  # every one (the versions they need)
    store.apply(Decision(dequeued=["q1"]))
    assert store.queued_starts("pb", "welcome", "m1") == [rec2]
    assert [r["id"] for r in store.waiting_starts()] == ["q2", "c"]


def test_goal_exposures_and_conversions(store: Store) -> None:
    store.apply(Decision(exposures=[
        ("pb", "reply", "m1", "", None, at(0)), ("pb", "reply", "m1", "ask", "A", at(1)),
        ("pb", "reply", "m2", "ask", "A", at(1)), ("pb", "reply", "m1", "ask", "A", at(2)),  # already exposed
    ]))
    assert list(store.exposures("pb", "m1")) == [("reply", "", None, at(0)), ("reply", "ask", "A", at(1))]
    store.apply(Decision(conversions=[("pb", "reply", "m1", "ask", "A")]))
    assert list(store.exposures("pb", "m1")) == [("reply", "", None, at(0))]
    store.apply(Decision(exposures=[("pb", "reply", "m1", "ask", "A", at(5))]))  # once exposed, never again
    assert list(store.exposures("pb", "m1")) == [("reply", "", None, at(0))]
    assert store.goal_stats() == {("pb", "reply", "", None): (1, 0), ("pb", "reply", "ask", "A"): (2, 1)}


def test_counters_add_up(store: Store) -> None:
    store.apply(Decision(counters={"runs_started": 2, "filtered": 1}))
    store.apply(Decision(counters={"runs_started": 1}))
    assert store.counters() == {"runs_started": 3, "filtered": 1}


# outbox --------------------------------------------------------------------------------------------


def test_duplicate_message_keys_are_counted_and_ignored(store: Store) -> None:
    store.apply(Decision(messages=[message("k1", at(1)), message("k1", at(2), text="other")]))
    store.apply(Decision(messages=[message("k1", at(3))]))
    (row,) = store.outbox()
    assert row.message.text == "hello k1" and row.status == "queued"
    assert store.counters()["duplicate_messages"] == 2


def test_message_round_trip(store: Store) -> None:
    sent = message("k1", at(1), member=None, to="channel", variant="B", urgent=True, deferred="quiet_hours",
                   deliver_at=at(1).astimezone(timezone(timedelta(hours=-5))))
    store.apply(Decision(messages=[sent]))
    (row,) = store.outbox(["queued"])
    assert row.message == sent and row.message.deliver_at.utcoffset() == timedelta(hours=-5)
    assert (row.attempts, row.next_attempt, row.last_error, row.sent_at, row.platform_id) == (0, None, None, None, None)


def test_claim_due_messages_oldest_first_with_limit(store: Store) -> None:
    store.apply(Decision(messages=[message("c", at(5)), message("a", at(1)), message("b", at(5)), message("later", at(30))]))
    assert store.next_message_due() == at(1)
    assert keys(store.claim_due_messages(at(5), limit=2)) == ["a", "c"]
    claimed = store.claim_due_messages(at(5))
    assert keys(claimed) == ["b"] and claimed[0].status == "inflight"
    assert store.claim_due_messages(at(5)) == []
    assert store.next_message_due() == at(30)
    assert {r.message.key for r in store.outbox(["inflight"])} == {"a", "b", "c"}


def test_claim_with_members_returns_each_rows_member_record(store: Store) -> None:
    store.put_members([{"id": "m1", "name": "Ann", "email": "ann@example.org"}, {"id": "m2", "name": "Bo", "opted_out": True}])
    store.apply(Decision(messages=[
        message("c", at(3), member="m2"), message("a", at(1)), message("b", at(2), member=None, to="channel"),
        message("d", at(4), member="ghost"), message("later", at(30)),
    ]))
    claimed = store.claim_due_messages_with_members(at(5), limit=3)
    assert [(r.message.key, r.status, member) for r, member in claimed] == [
        ("a", "inflight", {"id": "m1", "name": "Ann", "email": "ann@example.org"}),
        ("b", "inflight", None),
        ("c", "inflight", {"id": "m2", "name": "Bo", "opted_out": True}),
    ]
    assert [(r.message.key, member) for r, member in store.claim_due_messages_with_members(at(5))] == [("d", None)]
    assert store.claim_due_messages_with_members(at(5)) == []
    assert {r.message.key for r in store.outbox(["inflight"])} == {"a", "b", "c", "d"}


def test_urgent_messages_are_claimed_before_older_ones_once_due(store: Store) -> None:
    # A large send queued first, then a crisis page: the page goes in the first claim.
    store.apply(Decision(messages=[message(f"n{i}", at(1)) for i in range(5)]))
    store.apply(Decision(messages=[
        message("page", at(3), urgent=True), message("page-later", at(30), urgent=True), message("n5", at(2)),
    ]))
    assert store.next_message_due() == at(1)
    assert store.urgent_waiting() == 2
    assert keys(store.claim_due_messages(at(3), limit=2)) == ["page", "n0"]  # not yet due: page-later waits
    assert store.urgent_waiting() == 1
    # A retry of an urgent page comes first again once it is due; a requeued one too.
    store.finish_messages([("page", "failed", {"attempts": 1, "next_attempt": at(4), "last_error": "503"})])
    assert store.urgent_waiting() == 2  # a retry to come still waits
    assert keys(store.claim_due_messages(at(3), limit=2)) == ["n1", "n2"]
    assert store.next_message_due() == at(1)
    assert [r.message.key for r, _ in store.claim_due_messages_with_members(at(4), limit=2)] == ["page", "n3"]
    store.finish_messages([("page", "dead", {"attempts": 2, "last_error": "403"})])
    assert store.requeue(["page"], at(5)) == 1
    claimed = [r.message.key for r, _ in store.claim_due_messages_with_members(at(30))]
    assert claimed == ["page", "page-later", "n4", "n5"]
    assert store.claim_due_messages(at(30)) == [] and store.urgent_waiting() == 0
    assert store.next_message_due() is None

@pytest.mark.parametrize(
    ("status", "attempts", "error", "not_listed"),
    [
        ("failed", 1, "503", "queued"),  # a failed attempt, retried
        # Put off for a channel's rate limit (nothing tried): queued again, not failed,
        # with why it waits.
        ("queued", 0, "waiting for the rate limit, 3s", "failed"),
    ],
    ids=["failed", "put-off"],
)
def test_message_is_due_again_at_next_attempt(store: Store, status: str, attempts: int, error: str, not_listed: str) -> None:
    store.apply(Decision(messages=[message("k1", at(1))]))
    store.claim_due_messages(at(1))
    fields = {"attempts": attempts} if attempts else {}
    store.finish_messages([("k1", status, {**fields, "next_attempt": at(4), "last_error": error})])
    assert list(store.outbox([not_listed])) == []
    (row,) = store.outbox([status])
    assert (row.attempts, row.next_attempt, row.last_error) == (attempts, at(4), error)
    assert store.next_message_due() == at(4)
    assert store.claim_due_messages(at(3)) == []
    (again,) = store.claim_due_messages(at(4))
    assert again.message.key == "k1" and again.attempts == attempts and again.status == "inflight"


def test_sent_message_records_a_delivery(store: Store) -> None:
    store.apply(Decision(messages=[message("k1", at(1)), message("k2", at(1), playbook="other")]))
    store.claim_due_messages(at(1))
    store.finish_messages([
        ("k2", "sent", {"sent_at": at(2), "attempts": 1, "platform_id": "p-2"}),
        ("k1", "sent", {"sent_at": at(3), "attempts": 2, "platform_id": "p-1"}),
    ])
    rows = {r.message.key: r for r in store.outbox(["sent"])}
    assert (rows["k1"].sent_at, rows["k1"].attempts, rows["k1"].platform_id) == (at(3), 2, "p-1")
    assert store.counters()["messages_sent"] == 2
    deliveries = list(store.deliveries())
    assert [d["key"] for d in deliveries] == ["k2", "k1"]
    assert deliveries[1] == {
        "key": "k1", "at": at(3), "playbook": "pb", "flow": "welcome", "step": "hello", "channel": "group",
        "adapter": "console", "member": "m1", "to": "member", "text": "hello k1", "variant": None, "platform_id": "p-1",
    }
    assert [d["key"] for d in store.deliveries("other")] == ["k2"]


def test_finish_unknown_key_raises(store: Store) -> None:
    with pytest.raises(KeyError):
        store.finish_messages([("nope", "sent", {"sent_at": at(1)})])


def test_only_a_row_whose_sending_began_is_in_doubt(store: Store) -> None:
    """SPEC 5.2: claimed and never started, a row goes back to the queue at start-up;
    one whose call began is in doubt. A finished row leaves ``sending``; an opted-out
    member's non-urgent row is not marked (the dispatcher cancels it)."""
    store.put_members([{"id": "m1"}, {"id": "gone", "opted_out": True}, {"id": "left", "left": True}])
    store.apply(Decision(messages=[message(k, at(1)) for k in ("a", "b", "c", "d")]))
    store.claim_due_messages(at(1))
    assert store.mark_sending("a", "m1", False) and store.mark_sending("a", "m1", False)  # twice: one mark
    assert store.mark_sending("b", None, False)
    assert not store.mark_sending("c", "left", False)  # a member who left, as one who opted out
    assert not store.mark_sending("c", "gone", False) and store.mark_sending("c", "gone", True)  # urgent goes
    store.finish_messages([("b", "sent", {"sent_at": at(1), "attempts": 1})])
    assert store.requeue_unstarted() == 1  # d
    assert sorted(keys(store.mark_in_doubt())) == ["a", "c"]
    # The call had begun: an attempt (they were listed with "tries 0").
    assert {r.message.key: r.attempts for r in store.outbox(["in_doubt"])} == {"a": 1, "c": 1}
    assert {r.message.key: r.status for r in store.outbox()}["d"] == "queued"
    assert keys(store.claim_due_messages(at(2))) == ["d"]
    assert store.requeue_unstarted() == 1  # sending was emptied by mark_in_doubt: d is unstarted again
    assert store.mark_in_doubt() == []


def test_mark_in_doubt_and_requeue(store: Store) -> None:
    store.apply(Decision(messages=[message(k, at(1)) for k in ("a", "b", "c", "d", "e")]))
    store.claim_due_messages(at(1), limit=4)
    store.finish_messages([
        ("a", "dead", {"attempts": 5, "last_error": "gone"}), ("b", "cancelled", {"last_error": "member opted out"}),
    ])
    in_doubt = store.mark_in_doubt()
    assert sorted(keys(in_doubt)) == ["c", "d"] and {r.status for r in in_doubt} == {"in_doubt"}
    assert store.mark_in_doubt() == []
    assert store.requeue(["a", "c", "e", "missing"], at(10), reset_attempts=True) == 2  # e is queued already
    assert store.requeue(["b"], at(20)) == 1
    rows = {r.message.key: r for r in store.outbox()}
    assert (rows["a"].status, rows["a"].attempts, rows["a"].next_attempt) == ("queued", 0, at(10))
    assert rows["a"].message.text == "hello a"  # the same text goes out
    assert rows["d"].status == "in_doubt"
    assert keys(store.claim_due_messages(at(9))) == ["e"]
    assert keys(store.claim_due_messages(at(10))) == ["a", "c"]
    assert keys(store.claim_due_messages(at(20))) == ["b"]


def test_requeue_moves_a_failed_retry(store: Store) -> None:
    store.apply(Decision(messages=[message("k", at(1))]))
    store.claim_due_messages(at(1))
    store.finish_messages([("k", "failed", {"attempts": 1, "next_attempt": at(5)})])
    assert store.requeue(["k"], at(30)) == 1
    assert store.next_message_due() == at(30)
    assert store.claim_due_messages(at(29)) == []
    assert keys(store.claim_due_messages(at(30))) == ["k"]


def test_unstarted_claim_goes_back_to_the_queue(store: Store) -> None:
    store.apply(Decision(messages=[message("k", at(1))]))
    store.claim_due_messages(at(1))
    store.finish_messages([("k", "queued", {})])
    assert keys(store.claim_due_messages(at(1))) == ["k"]


def test_find_messages_by_key_prefix(store: Store) -> None:
    store.apply(Decision(messages=[message(k, at(1)) for k in ("ab12", "ab9f", "abz", "b0", "a")]))
    assert sorted(keys(store.find_messages("ab"))) == ["ab12", "ab9f", "abz"]
    assert keys(store.find_messages("ab1")) == ["ab12"]
    assert keys(store.find_messages("zz")) == []


def test_outbox_counts_and_filters(store: Store) -> None:
    assert store.outbox_counts() == dict.fromkeys(OUTBOX_STATES, 0)
    store.apply(Decision(messages=[message(k, at(1)) for k in ("a", "b", "c")]))
    store.claim_due_messages(at(1), limit=2)
    store.finish_messages([("a", "sent", {"sent_at": at(1)})])
    assert store.outbox_counts() == {**dict.fromkeys(OUTBOX_STATES, 0), "queued": 1, "inflight": 1, "sent": 1}
    assert keys(store.outbox(["queued", "sent"])) == ["a", "c"]


# audit ---------------------------------------------------------------------------------------------


def test_audit_interleaves_records_and_notes(store: Store) -> None:
    store.record(at(0), "runner_started", pid=1)
    store.apply(Decision(notes=[{"kind": "run_failed", "run": "r1", "error": "boom"}]))
    store.record(at(5), "retry", key="k1", next_attempt=at(6))
    store.apply(Decision(notes=[{"kind": "late_wait", "run": "r2", "late_seconds": 3.5}]))
    store.record(at(9), "runner_stopped", inputs=3)
    store.apply(Decision(notes=[{"kind": "timed", "at": at(10)}]))
    assert store.audit() == [
        {"at": at(0), "kind": "runner_started", "pid": 1},
        {"at": None, "kind": "run_failed", "run": "r1", "error": "boom"},
        {"at": at(5), "kind": "retry", "key": "k1", "next_attempt": at(6)},
        {"at": None, "kind": "late_wait", "run": "r2", "late_seconds": 3.5},
        {"at": at(9), "kind": "runner_stopped", "inputs": 3},
        {"at": at(10), "kind": "timed"},  # a note that carries its time
    ]
    assert [e["kind"] for e in store.audit(["runner_started", "runner_stopped"], limit=1)] == ["runner_stopped"]
    assert [e["kind"] for e in store.audit(limit=2)] == ["runner_stopped", "timed"]
    assert store.audit(["nothing"]) == []
    assert store.notes() == [
        {"kind": "run_failed", "run": "r1", "error": "boom"}, {"kind": "late_wait", "run": "r2", "late_seconds": 3.5},
        {"kind": "timed", "at": at(10)},
    ]


# the durable stores: what survives a reopen -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "postgres-copy"])
def reopenable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """``reopenable()`` opens a durable store on the same file or schema each time
    (a restart); all are closed at the end. ``postgres-copy``: every bulk write by COPY."""
    url = request.getfixturevalue("pg_url") if request.param.startswith("postgres") else None
    if request.param == "postgres-copy":
        from cmtyflow.store import postgres

        request.getfixturevalue("monkeypatch").setattr(postgres, "COPY_MIN", 1)
    stores: list[Store] = []

    def _open() -> Store:
        if url is not None:
            from cmtyflow.store.postgres import PostgresStore  # psycopg: the postgres extra

            made: Store = PostgresStore(url)
        else:
            made = SqliteStore(tmp_path / "state.db")
        stores.append(made)
        return made

    yield _open
    for made in stores:
        made.close()


def test_reopen_keeps_everything(reopenable: Callable[[], Store]) -> None:
    store = reopenable()
    store.put_members([{"id": "m1", "timezone": "Europe/Berlin", "joined": date(2026, 11, 30)}])
    the_run = run("r1", occurrences={2: 1}, waiting={"kind": "event", "event": "reply", "timer": "t1"})
    store.apply(Decision(
        runs={"r1": the_run}, timers=[timer("t1", "r1", at(30), "timeout")], waits=[wait("r1")],
        states={("pb", "m1"): {"points": 2}}, messages=[message("k1", at(1)), message("k2", at(2))],
        day_counts={("m1", "2026-12-01"): 2}, counters={"runs_started": 1},
    ), schedules=[ScheduleUpdate("pb", "daily", "Asia/Shanghai", at(60))])
    store.add_events([event("e1", at(5)), event("e2", at(6))])
    store.apply(Decision(), consumed_event="e1")
    store.claim_due_messages(at(1))
    store.finish_messages([("k1", "sent", {"sent_at": at(1), "attempts": 1, "platform_id": "x"})])
    store.record(at(0), "runner_started", pid=7)
    store.close()

    again = reopenable()
    assert again.get_member("m1") == {"id": "m1", "timezone": "Europe/Berlin", "joined": date(2026, 11, 30)}
    assert again.member_timezones() == {"Europe/Berlin"}
    assert again.get_run("r1") == the_run
    assert again.upcoming_timers() == [timer("t1", "r1", at(30), "timeout")]
    assert [w.run for w in again.event_waits("reply", "m1")] == ["r1"]
    assert again.get_state("pb", "m1") == {"points": 2}
    assert again.day_count("m1", "2026-12-01") == 2
    assert again.schedule_positions() == {("pb", "daily", "Asia/Shanghai"): at(60)}
    assert {r.message.key: r.status for r in again.outbox()} == {"k1": "sent", "k2": "queued"}
    assert [d["platform_id"] for d in again.deliveries()] == ["x"]
    assert [e.id for e in again.pending_events(at(60))] == ["e2"]
    assert again.add_event(event("e1", at(5))) is False  # seen before, even though done
    assert again.counters() == {"runs_started": 1, "events_processed": 1, "messages_sent": 1, "duplicate_events": 1}
    assert again.audit() == [{"at": at(0), "kind": "runner_started", "pid": 7}]


def test_finished_runs_are_kept_with_their_status(reopenable: Callable[[], Store]) -> None:
    store = reopenable()
    store.apply(Decision(runs={"r1": run("r1"), "r2": run("r2")}))
    store.apply(Decision(runs={"r1": run("r1", status="done")}))
    assert store.get_run("r1") == run("r1", status="done")
    assert [(r.id, r.status) for r in store.runs(status=None)] == [("r1", "done"), ("r2", "active")]
    assert [r.id for r in store.runs(status="done")] == ["r1"]



def test_apply_is_all_or_nothing(reopenable: Callable[[], Store]) -> None:
    store = reopenable()
    store.apply(Decision(timers=[timer("t0", "r0", at(1))]))
    store.add_event(event("e0", at(1)))
    bad = Decision(
        runs={"r1": run("r1")}, timers=[timer("t1", "r1", at(5))], messages=[message("k1", at(2))],
        states={("pb", "m1"): {"points": 1}}, emitted=[event("e1", at(3))], counters={"runs_started": 1},
        members={"m1": {"id": "m1"}},
        # the last part written cannot be encoded: a set is no JSON
        notes=[{"kind": "fine", "n": 1}, {"kind": "bad", "value": {1, 2}}],
    )
    with pytest.raises(TypeError, match="cannot store a value of type set"):
        store.apply(bad, consumed_timer="t0", consumed_event="e0",
                    schedules=[ScheduleUpdate("pb", "daily", "UTC", at(60))])

    def nothing_of_it(s: Store) -> None:
        assert s.get_run("r1") is None
        assert [t.id for t in s.upcoming_timers()] == ["t0"]
        assert list(s.outbox()) == []
        assert s.get_state("pb", "m1") == {}
        assert s.get_member("m1") is None
        assert [e.id for e in s.pending_events(at(9))] == ["e0"]
        assert s.counters() == {}
        assert s.audit() == []
        assert s.schedule_positions() == {}

    nothing_of_it(store)
    store.apply(Decision(runs={"r2": run("r2")}))  # the store goes on working
    store.close()
    again = reopenable()
    nothing_of_it(again)
    assert again.get_run("r2") == run("r2")
    again.apply(Decision(messages=[message(f"k{i}", at(1)) for i in range(3)]))
    assert again.outbox_counts()["queued"] == 3


# the dry run on the durable stores ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def durable_dry_run(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """Every DryRun made (as ``cmtyflow test`` makes it) runs on this durable store."""
    made = SqliteStore(tmp_path / "s.db") if request.param == "sqlite" else postgres_store(request)
    monkeypatch.setattr(dryrun_module, "DryRun", functools.partial(dryrun_module.DryRun, store=made))
    yield made
    made.close()


@pytest.mark.parametrize("spec", GOLDEN_SPECS, ids=lambda p: p.name)
def test_golden_transcripts_on_durable_stores(spec: Path, durable_dry_run: Store) -> None:
    result = golden.run_golden(spec)
    assert not result.missing
    assert result.diff == []
    expected = [json.loads(line) for line in result.expected.read_text(encoding="utf-8").splitlines()]
    stored = list(durable_dry_run.deliveries())
    assert len(stored) == len(expected) > 0
    for want, got in zip(expected, stored, strict=True):
        assert datetime.fromisoformat(want["at"]) == got["at"]
        assert {k: v for k, v in want.items() if k not in ("kind", "at")} == {
            k: got[k] for k in ("playbook", "flow", "step", "channel", "adapter", "member", "to", "text", "variant")
        }


@pytest.mark.parametrize("durable", ["sqlite", "postgres"])
def test_simulated_challenge_same_on_memory_and_durable_stores(
    durable: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A roster over three zones with synthetic check-ins and posts: the same
    deliveries and summary from MemoryStore and SqliteStore (PostgresStore)."""
    _, programs = load_programs([PLAYBOOKS / "checkin-challenge.yaml"])
    zones = ["Asia/Shanghai", "America/New_York", "Europe/Berlin", None]
    roster = [
        {"id": f"m{i:03d}", "name": f"M{i}", "tags": ["reading"] if i % 7 else [], **({"timezone": zones[i % 4]} if zones[i % 4] else {})}
        for i in range(90)
    ]
    start = datetime(2026, 12, 1, tzinfo=SHANGHAI)

    def dry_run(store: Store | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sim = dryrun_module.DryRun(
            programs, start=start, days=21, sink=out.append, store=store,
            simulation=Simulation(parse_spec("checkin=0.7,post=0.2"), seed=3, default_tz="Asia/Shanghai"),
        )
        sim.load_roster([dict(m) for m in roster])
        sim.run()
        return out, sim.summary()

    memory = dry_run(None)
    made = SqliteStore(tmp_path / "s.db") if durable == "sqlite" else postgres_store(request)
    try:
        stored = dry_run(made)
    finally:
        made.close()
    assert len(memory[0]) > 1000
    assert stored == memory


def test_prune_keeps_a_message_a_runner_delivers_while_it_prunes(reopenable: Callable[[], Store]) -> None:
    """A message due before the cutoff and still queued when the prune began, then sent
    by a runner beside it: its delivery is after the cutoff, so it stays. Read once at
    the start, the prune took it for one to forget, and left its delivery an orphan
    that no report could see."""
    from cmtyflow.store.sqlbase import SqlStore

    store = reopenable()
    assert isinstance(store, SqlStore)
    store.put_members([{"id": "m1"}])
    # In this order (seq), so that "racing2" lies among the rows the message windows go through.
    store.apply(Decision(messages=[message("old", at(1)), message("racing2", at(3)), message("racing", at(2)),
                                   message("old2", at(1))]))
    store.claim_due_messages(at(1), limit=2)  # the two "old" ones
    store.finish_messages([(key, "sent", {"sent_at": at(1), "attempts": 1}) for key in ("old", "old2")])
    late = at(4000)
    store.PRUNE_WINDOW = 1  # a transaction per row

    sent: set[str] = set()

    def runner_sends(line: str, n: int) -> None:
        key = {("deliveries", 2): "racing", ("messages sent or cancelled", 1): "racing2"}.get((line, n))
        if key is not None and key not in sent:  # after the prune's deliveries; then after its first message
            sent.add(key)
            assert [r.message.key for r in store.claim_due_messages(late, limit=1)] == [key]
            store.finish_messages([(key, "sent", {"sent_at": late, "attempts": 1})])

    counts = store.prune(at(3000), progress=runner_sends)
    assert (counts["deliveries"], counts["messages sent or cancelled"]) == (2, 2)  # the "old" ones, with theirs
    assert sorted(r.message.key for r in store.outbox()) == ["racing", "racing2"]
    assert [d["key"] for d in store.deliveries()] == ["racing", "racing2"]


def test_prune_forgets_what_is_over_and_old_and_keeps_what_is_live(reopenable: Callable[[], Store]) -> None:
    from cmtyflow.store.sqlbase import SqlStore

    store = reopenable()
    assert isinstance(store, SqlStore)
    store.put_members([{"id": "m1"}, {"id": "m2"}])
    late = at(4000)  # after the cutoff (at(3000)); everything else "old" is before it
    store.apply(Decision(
        runs={"old-done": run("old-done", status="done"), "old-active": run("old-active", waiting={"kind": "timer", "timer": "t1"}),
              "new-done": run("new-done", status="done", started_at=late)},
        timers=[timer("t1", "old-active", at(9000))],
        messages=[message("sent", at(1)), message("cancelled", at(2)), message("dead", at(3)),
                  message("sent-late", at(4)), message("new", late), message("queued", at(5))],
        day_counts={("m1", "2026-12-01"): 2, ("m1", "2026-12-05"): 1},
    ))
    store.add_events([event("e-old", at(1), text="a private message"), event("e-new", late), event("e-queued", at(2), text="kept")])
    store.apply(Decision(), consumed_event="e-old")
    store.apply(Decision(), consumed_event="e-new")
    store.claim_due_messages(late, limit=5)  # all but "queued"
    store.finish_messages([
        ("sent", "sent", {"sent_at": at(1), "attempts": 1}), ("cancelled", "cancelled", {"last_error": "member opted out"}),
        ("dead", "dead", {"attempts": 5, "last_error": "HTTP 403"}), ("sent-late", "sent", {"sent_at": late, "attempts": 2}),
        ("new", "sent", {"sent_at": late, "attempts": 1}),
    ])
    store.record(at(1), "runner_started", pid=1)
    store.record(late, "runner_started", pid=2)
    store.record(at(1), "playbook_version", playbook="pb", version="v1", snapshot={"pb.yaml": "..."})

    def snapshot() -> Any:
        return (
            sorted(r.message.key for r in store.outbox()), [d["key"] for d in store.deliveries()],
            sorted(r.id for r in store.runs(status=None)), store.audit(), store.day_count("m1", "2026-12-01"),
        )

    before = snapshot()
    counts = store.prune(at(3000), keep=True)
    assert snapshot() == before  # counted, nothing changed
    store.PRUNE_WINDOW = 2  # a transaction per two rows (by seq)
    seen: list[tuple[str, int]] = []
    assert store.prune(at(3000), progress=lambda line, n: seen.append((line, n))) == counts == {
        "deliveries": 1, "messages sent or cancelled": 2, "finished runs": 1,
        "events taken (data dropped, ids kept)": 1, "audit entries": 1, "daily cap counts": 1,
    }
    assert seen[-1] == ("daily cap counts", 1)
    # Two windows: "sent" and "cancelled" go in the first; "sent-late" (delivered after the
    # cutoff) stays in the second.
    assert [n for line, n in seen if line == "messages sent or cancelled"] == [2, 2]
    assert store.prune(at(3000)) == dict.fromkeys(counts, 0)  # nothing left to forget
    store.close()

    again = reopenable()
    assert sorted(r.message.key for r in again.outbox()) == ["dead", "new", "queued", "sent-late"]
    assert [d["key"] for d in again.deliveries()] == ["sent-late", "new"]  # each still with its message
    assert sorted(r.id for r in again.runs(status=None)) == ["new-done", "old-active"]
    assert again.upcoming_timers() == [timer("t1", "old-active", at(9000))]
    assert again.add_event(event("e-old", at(1))) is False  # its id is still known
    assert isinstance(again, SqlStore)
    assert again._one("SELECT data FROM events WHERE id = ?", ("e-old",)) == ("{}",)  # its data is not
    assert [(e.id, e.data) for e in again.pending_events(late)] == [("e-queued", {"text": "kept"})]
    assert (again.day_count("m1", "2026-12-01"), again.day_count("m1", "2026-12-05")) == (0, 1)
    # What a run started long ago needs to finish on its version is kept.
    assert [(a["kind"], a.get("pid"), a.get("version")) for a in again.audit()] == [
        ("runner_started", 2, None), ("playbook_version", None, "v1"),
    ]
