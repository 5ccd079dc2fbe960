"""The pure engine, one input at a time: ``Engine.handle(store, now, input)`` and the
whole ``Decision`` it returns (no driver, no clock, no I/O)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pytest

from cmtyflow.engine.model import (
    Decision,
    Event,
    EventWait,
    Firing,
    QueuedMessage,
    Run,
    Timer,
    TimerDue,
    message_key,
)

PLAYBOOK = """
cmtyflow: 1
name: p
timezone: Asia/Shanghai
window: {start: 2026-12-01, days: 10}
channels:
  dm: {adapter: console}
policies:
  quiet_hours: {start: "22:00", end: "08:00"}
  max_per_member_per_day: 3
triggers:
  - id: t
    event: ping
    flow: f
  - id: w
    event: join
    flow: waiter
  - id: c
    event: checkin.posted
    flow: daily
  - id: cron
    cron: "0 9 * * *"
    flow: f
flows:
  f:
    - id: hello
      send: {channel: dm, text: "hi {{ member.name }}"}
    - wait: 1d
    - id: bye
      send: {channel: dm, text: "bye"}
  waiter:
    - wait: {event: message.posted, timeout: 2d}
    - id: got
      send: {channel: dm, text: "timed_out={{ wait.timed_out }}"}
  daily:
    - checkin: {}
    - id: streak
      send: {channel: dm, text: "{{ state.streak }}/{{ checkin.duplicate }}", urgent: true}
"""


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def setup(compile_text, tmp_path):
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    (prog,) = compile_text(PLAYBOOK, tmp_path)
    store = MemoryStore()
    store.put_members([{"id": "m", "name": "Mo"}, {"id": "ny", "name": "Nia", "timezone": "America/New_York"}])
    return Engine([prog]), store, prog


def msg(prog, run: str, step: str, member: str, text: str, at: datetime, deliver_at: datetime,
        deferred: str | None = None, occurrence: int = 1, flow: str = "f", urgent: bool = False) -> QueuedMessage:
    return QueuedMessage(
        key=message_key(prog.name, run, step, occurrence, member), playbook=prog.name, run=run, flow=flow,
        step=step, occurrence=occurrence, channel="dm", adapter="console", member=member, to="member",
        text=text, format="plain", variant=None, urgent=urgent, queued_at=at, deliver_at=deliver_at,
        deferred=deferred,
    )


def test_event_starts_a_run_that_sends_deferred_and_waits(setup):
    engine, store, prog = setup
    at = t("2026-12-01T23:00:00+08:00")
    event = Event("e1", "ping", at, "m")
    decision = engine.handle(store, at, event)
    assert decision == Decision(
        runs={
            "p/t:e1": Run(
                id="p/t:e1", playbook="p", version=prog.version, flow="f", member="m", trigger="t",
                mode="single", started_at=at, timezone="Asia/Shanghai", pc=1,
                occurrences={0: 1, 1: 1}, event=event.as_context(),
                waiting={"kind": "timer", "timer": "p/t:e1#1.1"},
            )
        },
        timers=[Timer("p/t:e1#1.1", "p/t:e1", t("2026-12-02T23:00:00+08:00"), "wait", at)],
        states={("p", "m"): {}},
        messages=[msg(prog, "p/t:e1", "hello", "m", "hi Mo", at, t("2026-12-02T08:00:00+08:00"), "quiet_hours")],
        day_counts={("m", "2026-12-02"): 1},
        counters={"runs_started": 1, "deferred_quiet_hours": 1},
    )


def test_due_timer_resumes_and_ends_the_run(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    store.apply(engine.handle(store, at, Event("e1", "ping", at, "m")))
    (timer,) = store.due_timers(t("2026-12-02T10:00:00+08:00"))
    later = t("2026-12-02T10:00:00+08:00")
    decision = engine.handle(store, later, TimerDue(timer))
    assert decision == Decision(
        runs={
            "p/t:e1": Run(
                id="p/t:e1", playbook="p", version=prog.version, flow="f", member="m", trigger="t",
                mode="single", started_at=at, timezone="Asia/Shanghai", pc=3,
                occurrences={0: 1, 1: 1, 2: 1}, event=Event("e1", "ping", at, "m").as_context(),
                status="done",
            )
        },
        cancel_timers_of=["p/t:e1"],
        cancel_waits_of=["p/t:e1"],
        states={("p", "m"): {}},
        messages=[msg(prog, "p/t:e1", "bye", "m", "bye", later, later, occurrence=1)],
        day_counts={("m", "2026-12-02"): 1},
        counters={"runs_done": 1},
    )
    # Handling the same timer again after it was applied is a stale timer: nothing else.
    store.apply(decision, consumed_timer=timer.id)
    assert engine.handle(store, later, TimerDue(timer)) == Decision(counters={"stale_timers": 1})


def test_firing_outside_the_window_does_nothing_but_count(setup):
    engine, store, prog = setup
    at = t("2026-11-30T09:00:00+08:00")
    assert engine.handle(store, at, Firing("p", "cron", at)) == Decision(counters={"outside_window": 1})
    late = t("2026-12-11T09:00:00+08:00")  # the day after the window's last day
    assert engine.handle(store, late, Firing("p", "cron", late)) == Decision(counters={"outside_window": 1})
    assert engine.handle(store, late, Event("e9", "ping", late, "m")) == Decision(counters={"outside_window": 1})
    last = t("2026-12-10T23:59:59+08:00")
    assert engine.handle(store, last, Event("e8", "ping", last, "m")).counters == {"runs_started": 1, "deferred_quiet_hours": 1}


def test_member_run_reads_time_in_the_members_timezone(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00-05:00")
    decision = engine.handle(store, at, Event("e1", "ping", at, "ny"))
    assert decision.runs["p/t:e1"].timezone == "America/New_York"
    (timer,) = decision.timers
    assert timer == Timer("p/t:e1#1.1", "p/t:e1", t("2026-12-02T10:00:00-05:00"), "wait", at)
    assert timer.due.isoformat() == "2026-12-02T10:00:00-05:00"
    (message,) = decision.messages
    assert (message.deliver_at, message.deferred) == (at, None)  # 10:00 New York is not quiet
    assert decision.day_counts == {("ny", "2026-12-01"): 1}  # the member's local date, not Shanghai's


def test_single_mode_drops_a_second_firing(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    store.apply(engine.handle(store, at, Event("e1", "ping", at, "m")))
    later = t("2026-12-01T11:00:00+08:00")
    assert engine.handle(store, later, Event("e2", "ping", later, "m")) == Decision(counters={"dropped:t": 1})
    # The same input handled twice (a replay) starts nothing new either.
    assert engine.handle(store, at, Event("e1", "ping", at, "m")) == Decision(counters={"duplicate_starts": 1})


def test_matching_event_resumes_an_event_wait(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    join = Event("j1", "join", at, "m")
    first = engine.handle(store, at, join)
    assert first == Decision(
        runs={
            "p/w:j1": Run(
                id="p/w:j1", playbook="p", version=prog.version, flow="waiter", member="m", trigger="w",
                mode="single", started_at=at, timezone="Asia/Shanghai", pc=0, occurrences={0: 1},
                event=join.as_context(),
                waiting={
                    "kind": "event", "event": "message.posted", "timer": "p/w:j1#0.1",
                    "since": at.isoformat(), "step": "waiter[0]",
                },
            )
        },
        timers=[Timer("p/w:j1#0.1", "p/w:j1", t("2026-12-03T10:00:00+08:00"), "timeout", at)],
        waits=[EventWait("p/w:j1", "p", "message.posted", "m", None)],
        states={("p", "m"): {}},
        counters={"runs_started": 1},
    )
    store.apply(first)
    # Another member's post leaves the wait alone.
    other = t("2026-12-01T10:30:00+08:00")
    assert engine.handle(store, other, Event("x", "message.posted", other, "ny")) == Decision()
    # So does the member's own post from before the wait began, arriving late: it
    # answered nothing asked after it (the report showed a negative answer time).
    earlier = t("2026-12-01T09:00:00+08:00")
    untouched = engine.handle(store, earlier, Event("early", "message.posted", earlier, "m"))
    assert (untouched.notes, untouched.messages, untouched.cancel_waits_of) == ([], [], [])
    assert all(run == first.runs["p/w:j1"] for run in untouched.runs.values())  # still waiting, as it was
    posted_at = t("2026-12-01T11:00:00+08:00")
    post = Event("p1", "message.posted", posted_at, "m", {"text": "hello"})
    decision = engine.handle(store, posted_at, post)
    assert decision == Decision(
        runs={
            "p/w:j1": Run(
                id="p/w:j1", playbook="p", version=prog.version, flow="waiter", member="m", trigger="w",
                mode="single", started_at=at, timezone="Asia/Shanghai", pc=2, occurrences={0: 1, 1: 1},
                event=join.as_context(), wait={"event": post.as_context(), "timed_out": False}, status="done",
            )
        },
        cancel_timers_of=["p/w:j1", "p/w:j1"],
        cancel_waits_of=["p/w:j1", "p/w:j1"],
        states={("p", "m"): {}},
        messages=[msg(prog, "p/w:j1", "got", "m", "timed_out=False", posted_at, posted_at, flow="waiter")],
        day_counts={("m", "2026-12-01"): 1},
        counters={"runs_done": 1},
        notes=[{
            "kind": "wait_resolved", "playbook": "p", "flow": "waiter", "step": "waiter[0]", "member": "m",
            "run": "p/w:j1", "by": "m", "seconds": 3600.0,
        }],
    )


def test_timeout_resumes_an_event_wait_as_timed_out(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    store.apply(engine.handle(store, at, Event("j1", "join", at, "m")))
    due = t("2026-12-03T10:00:00+08:00")
    (timer,) = store.due_timers(due)
    decision = engine.handle(store, due, TimerDue(timer))
    assert decision.runs["p/w:j1"].wait == {"event": None, "timed_out": True}
    assert decision.runs["p/w:j1"].status == "done"
    assert decision.cancel_waits_of == ["p/w:j1", "p/w:j1"]
    assert decision.messages == [msg(prog, "p/w:j1", "got", "m", "timed_out=True", due, due, flow="waiter")]


def test_checkin_updates_state_from_yesterday(setup):
    engine, store, prog = setup
    store.apply(Decision(states={("p", "m"): {"checkins": 4, "streak": 4, "best_streak": 6, "last_checkin": "2026-11-30"}}))
    at = t("2026-12-01T23:30:00+08:00")
    decision = engine.handle(store, at, Event("c1", "checkin.posted", at, "m"))
    assert decision == Decision(
        states={("p", "m"): {"checkins": 5, "streak": 5, "best_streak": 6, "last_checkin": "2026-12-01"}},
        messages=[msg(prog, "p/c:c1", "streak", "m", "5/False", at, at, flow="daily", urgent=True)],
        counters={"runs_started": 1, "runs_done": 1},
    )
    store.apply(decision)
    again = t("2026-12-01T23:45:00+08:00")
    assert engine.handle(store, again, Event("c2", "checkin.posted", again, "m")) == Decision(
        states={("p", "m"): {"checkins": 5, "streak": 5, "best_streak": 6, "last_checkin": "2026-12-01"}},
        messages=[msg(prog, "p/c:c2", "streak", "m", "5/True", again, again, flow="daily", urgent=True)],
        counters={"runs_started": 1, "runs_done": 1},
    )


def test_opt_out_event_updates_the_roster_only(setup):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    decision = engine.handle(store, at, Event("o1", "member.opted_out", at, "m"))
    assert decision == Decision(members={"m": {"id": "m", "name": "Mo", "opted_out": True}})
    assert store.get_member("m") == {"id": "m", "name": "Mo"}  # the engine never writes


def test_campaign_firing_sends_to_the_channel(compile_text, tmp_path):
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    (prog,) = compile_text(
        """
        cmtyflow: 1
        name: news
        timezone: Asia/Shanghai
        channels:
          group: {adapter: console}
        policies:
          quiet_hours: {start: "22:00", end: "08:00"}
        triggers:
          - id: daily
            cron: "30 7 * * *"
            flow: f
        flows:
          f:
            - id: post
              send: {channel: group, text: "{{ today }}"}
        """,
        tmp_path,
    )
    store = MemoryStore()
    at = t("2026-12-01T07:30:00+08:00")
    decision = Engine([prog]).handle(store, at, Firing("news", "daily", at))
    run_id = "news/daily@2026-12-01T07:30:00+08:00"
    assert decision == Decision(
        states={("news", None): {}},
        messages=[
            QueuedMessage(
                key=message_key("news", run_id, "post", 1, "#group"), playbook="news", run=run_id, flow="f",
                step="post", occurrence=1, channel="group", adapter="console", member=None, to="channel",
                text="2026-12-01", format="plain", variant=None, urgent=False, queued_at=at,
                deliver_at=t("2026-12-01T08:00:00+08:00"), deferred="quiet_hours",
            )
        ],
        counters={"runs_started": 1, "deferred_quiet_hours": 1, "runs_done": 1},
    )


def test_restart_cancels_the_active_run_in_the_same_decision(compile_text, tmp_path):
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    (prog,) = compile_text(PLAYBOOK.replace("    flow: f\n  - id: w", "    flow: f\n    mode: restart\n  - id: w"), tmp_path)
    engine = Engine([prog])
    store = MemoryStore()
    store.put_members([{"id": "m", "name": "Mo"}])
    at = t("2026-12-01T10:00:00+08:00")
    e1 = Event("e1", "ping", at, "m")
    store.apply(engine.handle(store, at, e1))
    later = t("2026-12-01T11:00:00+08:00")
    e2 = Event("e2", "ping", later, "m")
    decision = engine.handle(store, later, e2)
    common = {"playbook": "p", "version": prog.version, "flow": "f", "member": "m", "trigger": "t", "mode": "restart",
              "timezone": "Asia/Shanghai", "pc": 1, "occurrences": {0: 1, 1: 1}}
    assert decision == Decision(
        runs={
            "p/t:e1": Run(id="p/t:e1", started_at=at, event=e1.as_context(), status="cancelled", **common),
            "p/t:e2": Run(id="p/t:e2", started_at=later, event=e2.as_context(),
                        waiting={"kind": "timer", "timer": "p/t:e2#1.1"}, **common),
        },
        timers=[Timer("p/t:e2#1.1", "p/t:e2", t("2026-12-02T11:00:00+08:00"), "wait", later)],
        cancel_timers_of=["p/t:e1"],
        cancel_waits_of=["p/t:e1"],
        states={("p", "m"): {}},
        messages=[msg(prog, "p/t:e2", "hello", "m", "hi Mo", later, later)],
        day_counts={("m", "2026-12-01"): 1},
        counters={"runs_cancelled": 1, "runs_started": 1},
        notes=[{"kind": "run_cancelled", "playbook": "p", "run": "p/t:e1", "flow": "f", "member": "m", "reason": "restarted by t"}],
    )


def test_an_event_that_breaks_outside_any_run_is_set_aside(setup, monkeypatch):
    # A fault of cmtyflow's own while the event's triggers are matched (not inside a
    # run, where it would fail that run only): nothing of the event applies but a note.
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")

    def broken(prog, member, now):  # type: ignore[no-untyped-def]
        raise AttributeError("'NoneType' object has no attribute 'get'")

    monkeypatch.setattr(engine, "in_audience", broken)
    decision = engine.handle(store, at, Event("e1", "ping", at, "m"))
    assert decision == Decision(
        notes=[{
            "kind": "input_failed", "at": at, "input": "event", "event": "e1", "type": "ping", "member": "m",
            "reason": "internal error: AttributeError: 'NoneType' object has no attribute 'get'",
        }],
        counters={"inputs_failed": 1},
    )


def test_a_timer_that_breaks_outside_its_run_fails_that_run(setup, monkeypatch):
    engine, store, prog = setup
    at = t("2026-12-01T10:00:00+08:00")
    store.apply(engine.handle(store, at, Event("e1", "ping", at, "m")))
    (timer,) = store.due_timers(t("2026-12-02T10:00:00+08:00"))
    waiting = store.get_run("p/t:e1")

    def broken(run):  # type: ignore[no-untyped-def]
        raise KeyError("f")

    monkeypatch.setattr(engine, "program_for", broken)
    later = t("2026-12-02T10:00:00+08:00")
    decision = engine.handle(store, later, TimerDue(timer))
    reason = "internal error: KeyError: 'f'"
    assert decision == Decision(
        runs={"p/t:e1": Run(
            id="p/t:e1", playbook="p", version=prog.version, flow="f", member="m", trigger="t", mode="single",
            started_at=at, timezone="Asia/Shanghai", pc=1, occurrences={0: 1, 1: 1},
            event=Event("e1", "ping", at, "m").as_context(), status="failed",
        )},
        cancel_timers_of=["p/t:e1"],
        cancel_waits_of=["p/t:e1"],
        notes=[
            {"kind": "run_failed", "playbook": "p", "run": "p/t:e1", "flow": "f", "step": "f", "member": "m", "error": reason},
            {"kind": "input_failed", "at": later, "input": "timer", "timer": timer.id, "run": "p/t:e1", "reason": reason},
        ],
        counters={"runs_failed": 1, "inputs_failed": 1},
    )
    # The store's own record is not touched until the decision is applied.
    assert store.get_run("p/t:e1") == waiting
    assert waiting is not None and waiting.status == "active"
    # A timer its run does not wait for (stale) that breaks fails no run.
    monkeypatch.setattr(engine, "_timer", lambda interp, item: broken(None))
    stale = Timer("p/t:e1#0.9", "p/t:e1", timer.due, "wait", at)
    set_aside = engine.handle(store, later, TimerDue(stale))
    assert (set_aside.runs, set_aside.counters) == ({}, {"inputs_failed": 1})


def test_a_run_failed_by_a_set_aside_wait_lets_the_start_queued_behind_it_go(compile_text, tmp_path, monkeypatch):
    # mode: queued: the start waiting behind a run goes when that run ends, however it
    # ends; a run failed because its wait was set aside ends too.
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    (prog,) = compile_text(PLAYBOOK.replace("    flow: f\n  - id: w", "    flow: f\n    mode: queued\n  - id: w"), tmp_path)
    engine = Engine([prog])
    store = MemoryStore()
    store.put_members([{"id": "m", "name": "Mo"}])
    at = t("2026-12-01T10:00:00+08:00")
    store.apply(engine.handle(store, at, Event("e1", "ping", at, "m")))
    store.apply(engine.handle(store, at, Event("e2", "ping", at, "m")))  # queued behind t:e1
    later = t("2026-12-02T10:00:00+08:00")
    (timer,) = store.due_timers(later)

    def broken(interp, item):  # type: ignore[no-untyped-def]
        raise KeyError("f")

    monkeypatch.setattr(engine, "_timer", broken)
    decision = engine.handle(store, later, TimerDue(timer))
    assert {rid: r.status for rid, r in decision.runs.items()} == {"p/t:e1": "failed", "p/t:e2": "active"}
    assert [m.text for m in decision.messages] == ["hi Mo"]  # t:e2's first send
    assert [n["kind"] for n in decision.notes] == ["run_failed", "input_failed"]
    assert decision.counters == {"runs_failed": 1, "runs_started": 1, "inputs_failed": 1}
    assert len(decision.dequeued) == 1

    # If starting it breaks as well, the run fails alone; the start waits as before.
    monkeypatch.setattr(engine, "start_queued", lambda interp, prog, ended: broken(None, None))
    alone = engine.handle(store, later, TimerDue(timer))
    assert ({rid: r.status for rid, r in alone.runs.items()}, alone.messages, alone.dequeued) == ({"p/t:e1": "failed"}, [], [])


def test_a_firing_that_breaks_is_set_aside(setup, monkeypatch):
    engine, store, prog = setup

    def broken(*args):  # type: ignore[no-untyped-def]
        raise TypeError("'<' not supported between instances of 'str' and 'int'")

    monkeypatch.setattr(engine, "_campaign_start", broken)
    at = t("2026-12-01T09:00:00+08:00")
    decision = engine.handle(store, at, Firing("p", "cron", at))
    assert decision == Decision(
        notes=[{
            "kind": "input_failed", "at": at, "input": "firing", "playbook": "p", "trigger": "cron", "due": at.isoformat(),
            "reason": "internal error: TypeError: '<' not supported between instances of 'str' and 'int'",
        }],
        counters={"inputs_failed": 1},
    )


def test_a_store_error_outside_any_run_still_ends_the_decision(setup, monkeypatch):
    # The state itself failing is not a fault of the input: nothing is decided, and the
    # input is taken again (the caller applies nothing).
    engine, store, prog = setup

    def locked(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "get_member", locked)
    at = t("2026-12-01T09:00:00+08:00")
    with pytest.raises(sqlite3.OperationalError):
        engine.handle(store, at, Event("e1", "ping", at, "m"))


QUEUED = """
cmtyflow: 1
name: q
timezone: UTC
channels:
  dm: {adapter: console}
triggers:
  - {id: go, event: go.now, flow: w, mode: queued}
  - {id: also, event: go.also, flow: w, mode: parallel}
flows:
  w:
STEPS
"""


def _queued(compile_text, tmp_path, steps: str):  # type: ignore[no-untyped-def]
    (prog,) = compile_text(QUEUED.replace("STEPS\n", steps), tmp_path)
    return prog


def test_a_start_queued_behind_a_run_of_an_older_version_runs_wholly_on_its_own(compile_text, tmp_path):
    """A start queued after an edit is a new run (of the new version); it ran its first
    steps, up to its first wait, on the version of the run it waited behind."""
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    v1 = _queued(compile_text, tmp_path, '    - {id: w1, send: {text: "v1 start {{ event.id }}"}}\n'
                                         '    - {id: ww, wait: 1h}\n'
                                         '    - {id: w2, send: {text: "v1 end {{ event.id }}"}}\n')
    v2 = _queued(compile_text, tmp_path, '    - {id: intro, send: {text: "v2 intro {{ event.id }}"}}\n'
                                         '    - {id: w1, send: {text: "v2 start {{ event.id }}"}}\n'
                                         '    - {id: ww, wait: 1h}\n'
                                         '    - {id: w2, send: {text: "v2 end {{ event.id }}"}}\n')
    assert v1.version != v2.version
    store = MemoryStore()
    store.put_members([{"id": "u1"}])
    at = t("2026-12-01T10:00:00+00:00")
    store.apply(Engine([v1]).handle(store, at, Event("A", "go.now", at, "u1")))
    edited = Engine([v2], older=[v1])
    store.apply(edited.handle(store, at, Event("C", "go.now", at, "u1")))  # queued behind A
    (timer,) = store.due_timers(t("2026-12-01T11:00:00+00:00"))
    decision = edited.handle(store, timer.due, TimerDue(timer))
    assert [m.text for m in decision.messages] == ["v1 end A", "v2 intro C", "v2 start C"]


def test_a_queued_start_waits_while_any_run_of_its_flow_is_active(compile_text, tmp_path):
    """With `parallel` and `queued` triggers on one flow, a queued start goes when no
    run of the flow is left, not when the first of two ends."""
    from cmtyflow.engine.core import Engine
    from cmtyflow.store.memory import MemoryStore

    prog = _queued(compile_text, tmp_path, '    - {id: hi, send: {text: "hi {{ event.id }}"}}\n'
                                           '    - {id: ww, wait: 1h}\n'
                                           '    - {id: bye, send: {text: "bye {{ event.id }}"}}\n')
    engine = Engine([prog])
    store = MemoryStore()
    store.put_members([{"id": "u1"}])
    at = t("2026-12-01T10:00:00+00:00")
    store.apply(engine.handle(store, at, Event("P1", "go.also", at, "u1")))
    later = t("2026-12-01T10:30:00+00:00")
    store.apply(engine.handle(store, later, Event("P2", "go.also", later, "u1")))
    store.apply(engine.handle(store, later, Event("Q", "go.now", later, "u1")))  # queued: two runs active
    (first,) = store.due_timers(t("2026-12-01T11:00:00+00:00"))
    ended_one = engine.handle(store, first.due, TimerDue(first))
    assert [m.text for m in ended_one.messages] == ["bye P1"]  # P2 is still active: Q waits
    store.apply(ended_one)
    (second,) = store.due_timers(t("2026-12-01T11:30:00+00:00"))
    assert [m.text for m in engine.handle(store, second.due, TimerDue(second)).messages] == ["bye P2", "hi Q"]
