"""The runner against a loopback webhook sink, on a virtual clock and the SQLite store:
retries and Retry-After, dead letters and `outbox retry`, opt-out while queued,
catch-up across missed firings, in-doubt settlement at start-up, drain on stop."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from runner_harness import UTC, event, write_playbook

from cmtyflow.adapters.base import Capabilities, Receipt
from cmtyflow.cli import main
from cmtyflow.runtime.logs import json_log, text_log

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

HOOK_PLAYBOOK = """
cmtyflow: 1
name: hooks
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
policies:
  retry: {{attempts: {attempts}, max_delay: 10m}}
  in_doubt: {in_doubt}
triggers:
  - {{id: joined, event: member.joined, flow: hello}}
flows:
  hello:
    - id: hi
      send: {{channel: hook, text: "你好 {{{{ member.name }}}}", urgent: {urgent}}}
"""

ROSTER = [{"id": "u1", "name": "阿明"}, {"id": "u2", "name": "Bea"}]


def hooks(tmp_path: Path, url: str, *, attempts: int = 5, in_doubt: str = "hold", urgent: str = "false") -> list[Path]:
    return [write_playbook(tmp_path / "pb", HOOK_PLAYBOOK.format(url=url, attempts=attempts, in_doubt=in_doubt, urgent=urgent))]


async def joined(h: Any, member: str = "u1", at: datetime = T0) -> None:
    h.store.put_members(ROSTER)
    h.store.add_event(event({"id": f"j-{member}", "type": "member.joined", "member": member, "at": at.isoformat()}))


def rows(h: Any, *statuses: str) -> list[Any]:
    return list(h.store.outbox(list(statuses) or None))


async def test_a_join_is_delivered_once_with_its_key_and_text(tmp_path, sink, harness):
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    await joined(h)
    assert await h.at(T0) is None
    assert [r.body["text"] for r in sink.requests] == ["你好 阿明"]
    (row,) = rows(h)
    assert (row.status, row.attempts) == ("sent", 1)
    assert sink.requests[0].key == row.message.key
    (delivery,) = list(h.store.deliveries())
    assert (delivery["step"], delivery["member"], delivery["at"]) == ("hi", "u1", T0)
    await h.close()


async def test_429_with_retry_after_waits_at_least_that_long_and_costs_no_attempt(tmp_path, sink, harness):
    sink.script = [(429, {"Retry-After": "7"})]
    h = harness(hooks(tmp_path, sink.url, attempts=1), T0)
    await h.open()
    await joined(h)
    nxt = await h.at(T0)
    (row,) = rows(h)
    assert (row.status, row.attempts) == ("failed", 0)  # attempts: 1 allowed, none spent
    assert row.next_attempt >= T0 + timedelta(seconds=7)
    assert nxt == row.next_attempt
    await h.at(T0 + timedelta(seconds=6.9))
    assert len(sink.requests) == 1  # nothing before the 7 seconds are up
    await h.at(row.next_attempt)
    assert len(sink.requests) == 2 and len(sink.delivered) == 1
    assert rows(h)[0].status == "sent"
    await h.close()


async def test_500_three_times_then_200_is_one_delivery(tmp_path, sink, harness):
    sink.script = [500, 500, 500, 200]
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    await joined(h)
    await h.run_until(T0 + timedelta(days=1))
    assert [r.status for r in sink.requests] == [500, 500, 500, 200]
    assert len({r.key for r in sink.requests}) == 1
    assert len({r.body["text"] for r in sink.requests}) == 1  # the same bytes each time
    assert len(sink.delivered) == 1 and sink.duplicates == 0
    (row,) = rows(h)
    assert (row.status, row.attempts) == ("sent", 4)
    # Backoff grows: each wait is at least half the doubled delay (30 s, 60 s, 120 s).
    log = [e for e in h.store.audit() if e["kind"] == "runner_started"]
    assert log
    await h.close()


async def test_retries_end_in_a_dead_letter_after_the_attempts(tmp_path, sink, harness):
    sink.script = [503, 503, 503]
    h = harness(hooks(tmp_path, sink.url, attempts=3), T0)
    await h.open()
    await joined(h)
    await h.run_until(T0 + timedelta(days=1))
    assert len(sink.requests) == 3
    (row,) = rows(h)
    assert (row.status, row.attempts) == ("dead", 3)
    assert "503" in row.last_error
    await h.close()


async def test_403_dead_letters_at_once_and_outbox_retry_resends_it_once(tmp_path, sink, harness, capsys):
    sink.script = [403]
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    await joined(h)
    await h.run_until(T0 + timedelta(days=1))
    (row,) = rows(h)
    assert (row.status, row.attempts, len(sink.requests)) == ("dead", 1, 1)
    await h.close()

    assert main(["outbox", "--state", str(h.state)]) == 0
    listed = capsys.readouterr().out
    assert row.message.key[:12] in listed and "dead" in listed and "403" in listed
    # The report says what did not go, per step, beside the deliveries (it showed none).
    assert main(["report", "hooks", "--state", str(h.state), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["undelivered"] == {"hi": {"dead": 1}}
    assert main(["report", "hooks", "--state", str(h.state)]) == 0
    assert "not delivered (cmtyflow outbox lists them):\n  hi: 1 dead\n" in capsys.readouterr().out
    assert main(["outbox", "retry", row.message.key[:8], "--state", str(h.state)]) == 0
    assert "queued 1 message again" in capsys.readouterr().out

    await h.open()
    await h.run_until(T0 + timedelta(days=2))
    assert [r.status for r in sink.requests] == [403, 200]
    assert len(sink.delivered) == 1
    (row,) = rows(h)
    assert (row.status, row.attempts) == ("sent", 1)
    assert [e["kind"] for e in h.store.audit(["outbox_retry"])] == ["outbox_retry"]
    await h.close()



async def test_outbox_retry_all_queues_every_dead_letter_once(tmp_path, sink, harness, capsys):
    # A wrong token overnight: both members' welcomes dead-lettered (403). Once it is
    # fixed, one command queues every dead letter again, not one key at a time.
    sink.script = [403, 403]
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    await joined(h, "u1")
    await joined(h, "u2")
    await h.run_until(T0 + timedelta(hours=1))
    assert sorted(r.status for r in rows(h)) == ["dead", "dead"]
    await h.close()
    state = str(h.state)
    capsys.readouterr()
    assert main(["outbox", "--limit", "1", "--state", state]) == 0
    out, err = capsys.readouterr()
    assert "showing the first 1; 1 more (raise --limit to see them)" in err and out.count(" dead ") == 1
    assert main(["outbox", "retry", "--state", state]) == 1
    assert "give the keys of the messages to retry, or --all" in capsys.readouterr().err
    assert main(["outbox", "retry", "abc", "--status", "dead", "--state", state]) == 1
    assert "with keys, give only the keys" in capsys.readouterr().err
    assert main(["outbox", "retry", "--all", "--playbook", "other", "--state", state]) == 0
    assert "queued 0 messages again" in capsys.readouterr().out
    assert main(["outbox", "retry", "--all", "--status", "failed", "--state", state]) == 0
    assert "queued 0 messages again" in capsys.readouterr().out
    assert main(["outbox", "retry", "--all", "--playbook", "hooks", "--channel", "hook", "--state", state]) == 0
    assert "queued 2 messages again" in capsys.readouterr().out
    assert main(["outbox", "retry", "--all", "--state", state]) == 0  # nothing dead any more
    assert "queued 0 messages again" in capsys.readouterr().out

    await h.open()
    await h.run_until(T0 + timedelta(hours=2))
    assert sorted(r.status for r in rows(h)) == ["sent", "sent"]
    assert len(sink.delivered) == 2 and len(sink.requests) == 4
    (record,) = h.store.audit(["outbox_retry"])
    assert (record["all"], record["playbook"], record["channel"]) == (["dead"], "hooks", "hook")
    assert sorted(record["keys"]) == sorted(r.message.key for r in rows(h))
    await h.close()



async def test_a_backlog_is_taken_a_pass_at_a_time_sending_between_passes(tmp_path, sink, harness, monkeypatch):
    # A runner back after a long stop, or a large import: each pass handles a bounded
    # number of inputs and sends what they queued before the next, logs its progress,
    # and a stop between passes leaves the rest queued for the next start.
    from cmtyflow.runtime import driver, runner

    monkeypatch.setattr(runner, "PASS_INPUTS", 5)
    monkeypatch.setattr(driver, "MAX_BATCH", 5)
    lines: list[tuple[str, dict[str, Any]]] = []
    h = harness(hooks(tmp_path, sink.url), T0, log=lambda kind, **fields: lines.append((kind, fields)))
    await h.open()
    h.store.put_members([{"id": f"u{i:02d}", "name": f"M{i}"} for i in range(12)])
    for i in range(12):
        h.store.add_event(event({"id": f"j{i:02d}", "type": "member.joined", "member": f"u{i:02d}", "at": T0.isoformat()}))
    assert await h.at(T0) == T0  # still due: the next pass follows at once
    assert [r.body["member"] for r in sink.requests] == [f"u{i:02d}" for i in range(5)]  # sent before the rest is taken
    assert len(h.store.pending_events(T0)) == 7
    assert [f["handled"] for k, f in lines if k == "catching_up"] == [5]
    h.runner.stop()
    assert await h.at(T0) == T0  # stopped: nothing more is taken
    await h.close()

    await h.open()  # the next start takes the rest, in order
    await h.runner.run_once()
    assert [r.body["member"] for r in sink.requests] == [f"u{i:02d}" for i in range(12)]
    assert h.store.pending_events(T0) == [] and not h.runner.behind
    assert [f["handled"] for k, f in lines if k == "catching_up"] == [5, 5]  # a pass of 5, then the last 2
    await h.close()



async def test_a_pass_lets_the_event_loop_go_between_slices(tmp_path, sink, harness, monkeypatch):
    """A pass of thousands of inputs held the event loop until it ended: the intake's
    answers (and signals) waited seconds for it. Between slices of PASS_SLICE inputs the
    loop runs what is ready: here a callback sees the pass half done."""
    from cmtyflow.runtime import runner

    monkeypatch.setattr(runner, "PASS_SLICE", 4, raising=False)
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    h.store.put_members([{"id": f"u{i:02d}", "name": f"M{i}"} for i in range(12)])
    for i in range(12):  # a second apart, as members join (a step of one instant is not cut)
        at = (T0 + timedelta(seconds=i)).isoformat()
        h.store.add_event(event({"id": f"j{i:02d}", "type": "member.joined", "member": f"u{i:02d}", "at": at}))
    seen: list[int] = []
    end = T0 + timedelta(minutes=1)
    asyncio.get_running_loop().call_soon(lambda: seen.append(len(h.store.pending_events(end))))
    await h.at(end)
    assert seen and 0 < seen[0] < 12  # ran while the pass was under way
    assert len(sink.requests) == 12
    await h.close()


async def test_a_long_send_gives_way_to_inputs_between_passes(tmp_path, sink, harness, monkeypatch):
    # A large send on a slow or rate-limited platform: after SEND_PASS_SECONDS a pass
    # starts no more sends (the rest stays queued), so an event that came meanwhile (a
    # report to page the moderators for) is handled before the send goes on.
    from cmtyflow.runtime import runner

    monkeypatch.setattr(runner, "SEND_PASS_SECONDS", 3.5)
    h = harness(hooks(tmp_path, sink.url), T0)
    await h.open()
    ticks = iter(range(1_000_000))
    h.runner.dispatcher.monotonic = lambda: float(next(ticks))  # one second per send started
    h.store.put_members([{"id": f"u{i:02d}", "name": f"M{i}"} for i in range(13)])
    for i in range(12):
        h.store.add_event(event({"id": f"j{i:02d}", "type": "member.joined", "member": f"u{i:02d}", "at": T0.isoformat()}))
    assert await h.at(T0) == T0  # messages are still due
    assert len(sink.requests) == 3 and h.runner.sending_behind
    assert sorted(r.status for r in rows(h)).count("queued") == 9  # put back, not in flight
    h.store.add_event(event({"id": "late", "type": "member.joined", "member": "u12", "at": T0.isoformat()}))
    await h.at(T0)
    assert h.store.pending_events(T0) == []  # taken before the rest of the send
    assert len(sink.requests) == 6
    await h.runner.run_once()
    assert sorted(r.body["member"] for r in sink.requests) == [f"u{i:02d}" for i in range(13)]  # each once
    assert not h.runner.sending_behind and {r.status for r in rows(h)} == {"sent"}
    await h.close()


CRISIS_PLAYBOOK = """
cmtyflow: 1
name: crisis
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
triggers:
  - {{id: joined, event: member.joined, flow: hello}}
  - {{id: report, event: report.filed, flow: page}}
flows:
  hello:
    - {{id: hi, send: {{channel: hook, text: "hi"}}}}
  page:
    - {{id: page, send: {{channel: hook, to: channel, text: "举报：请版主处理", urgent: true}}}}
"""


async def test_an_urgent_page_queued_during_a_long_send_goes_out_before_the_rest_of_it(tmp_path, sink, harness, monkeypatch):
    # The send passes bound how late the report is handled; the claim's order bounds
    # how late its page goes: first in the next pass, not after the send queued before.
    from cmtyflow.runtime import runner

    monkeypatch.setattr(runner, "SEND_PASS_SECONDS", 3.5)
    h = harness([write_playbook(tmp_path / "pb", CRISIS_PLAYBOOK.format(url=sink.url))], T0)
    await h.open()
    ticks = iter(range(1_000_000))
    h.runner.dispatcher.monotonic = lambda: float(next(ticks))  # one second per send started
    h.store.put_members([{"id": f"u{i:02d}", "name": f"M{i}"} for i in range(12)])
    for i in range(12):
        h.store.add_event(event({"id": f"j{i:02d}", "type": "member.joined", "member": f"u{i:02d}", "at": T0.isoformat()}))
    assert await h.at(T0) == T0
    assert len(sink.requests) == 3  # nine greetings still queued
    h.store.add_event(event({"id": "r1", "type": "report.filed", "member": "u03", "at": T0.isoformat()}))
    await h.at(T0)
    assert [r.body["text"] for r in sink.requests[3:6]].count("举报：请版主处理") == 1  # in the next pass
    await h.runner.run_once()
    assert [r.body["text"] for r in sink.requests].count("hi") == 12 and len(sink.requests) == 13
    await h.close()


QUIET_PLAYBOOK = """
cmtyflow: 1
name: nightly
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
policies:
  quiet_hours: {{start: "22:00", end: "08:00"}}
triggers:
  - {{id: joined, event: member.joined, flow: hello}}
  - {{id: bye, event: member.opted_out, flow: farewell}}
flows:
  hello:
    - {{id: hi, send: {{channel: hook, text: "hi"}}}}
    - wait: 1d
    - {{id: again, send: {{channel: hook, text: "again"}}}}
  farewell:
    - {{id: page, send: {{channel: hook, to: channel, text: "someone left"}}}}
"""


async def _queued_then(tmp_path, sink, harness, event_type):  # type: ignore[no-untyped-def]
    """u1 joins at 23:00 (its "hi" deferred to 08:00 by quiet hours); two hours later an
    event of ``event_type`` for u1; then three days run. Returns the harness, open."""
    night = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
    h = harness([write_playbook(tmp_path / "pb", QUIET_PLAYBOOK.format(url=sink.url))], night)
    await h.open()
    h.store.put_members(ROSTER)
    h.store.add_event(event({"id": "j1", "type": "member.joined", "member": "u1", "at": night.isoformat()}))
    await h.at(night)
    assert [r.message.step for r in rows(h, "queued")] == ["hi"]  # deferred to 08:00 by quiet hours
    later = night + timedelta(hours=2)
    h.store.add_event(event({"id": "x1", "type": event_type, "member": "u1", "at": later.isoformat()}))
    await h.run_until(night + timedelta(days=3))
    return h


async def test_an_opt_out_recorded_while_messages_are_queued_stops_all_of_them(tmp_path, sink, harness):
    h = await _queued_then(tmp_path, sink, harness, "member.opted_out")
    # Only the channel notice went out; no message to u1, neither the queued one nor later ones.
    assert [r.body["member"] for r in sink.requests] == [None]
    assert {r.message.step: r.status for r in rows(h)}["hi"] == "cancelled"
    await h.close()



async def test_a_member_who_left_while_a_message_was_queued_does_not_get_it(tmp_path, sink, harness):
    h = await _queued_then(tmp_path, sink, harness, "member.left")
    assert sink.requests == []  # neither the queued "hi" nor the run's "again" a day later
    assert [(r.message.step, r.status, r.last_error) for r in rows(h)] == [("hi", "cancelled", "member left")]
    await h.close()


async def test_an_event_that_breaks_the_engine_is_set_aside_and_the_runner_goes_on(tmp_path, sink, harness, monkeypatch, capsys):
    # A fault of cmtyflow's own outside any run (here: the audience check for u1)
    # would otherwise stop the runner at the same event on every start.
    from cmtyflow.engine.core import Engine

    check = Engine.in_audience

    def in_audience(self, prog, member, now):  # type: ignore[no-untyped-def]
        if member["id"] == "u1":
            raise TypeError("'NoneType' object is not subscriptable")
        return check(self, prog, member, now)

    monkeypatch.setattr(Engine, "in_audience", in_audience)
    lines: list[tuple[str, dict[str, Any]]] = []
    # The runner's own loggers too: the note has a field named ``event``, which their
    # first parameter is named (they raised TypeError, and the runner stopped).
    text, jsonl = io.StringIO(), io.StringIO()
    loggers = [text_log(text, lambda: T0, UTC), json_log(jsonl, lambda: T0)]

    def log(kind: str, /, **fields: Any) -> None:
        lines.append((kind, fields))
        for logger in loggers:
            logger(kind, **fields)

    h = harness(hooks(tmp_path, sink.url), T0, log=log)
    await h.open()
    await joined(h, "u1")
    await joined(h, "u2")
    await h.at(T0)
    assert [r.body["member"] for r in sink.requests] == ["u2"]
    assert h.store.pending_events(T0 + timedelta(days=1)) == []  # taken, not left to stop the next start
    reason = "internal error: TypeError: 'NoneType' object is not subscriptable"
    failed = {"kind": "input_failed", "at": T0, "input": "event", "event": "j-u1", "type": "member.joined", "member": "u1", "reason": reason}
    assert [n for n in h.store.notes() if n["kind"] == "input_failed"] == [failed]
    logged = {"input": "event", "event_id": "j-u1", "type": "member.joined", "member": "u1", "reason": reason}
    assert ("input_failed", logged) in lines
    assert "set an input aside" in text.getvalue() and "event_id=j-u1" in text.getvalue()
    (line,) = [json.loads(x) for x in jsonl.getvalue().splitlines() if '"input_failed"' in x]
    assert line == {**logged, "at": T0.isoformat(), "event": "input_failed"}
    assert h.store.counters()["inputs_failed"] == 1
    await h.close()
    # ``cmtyflow status`` names it, for people and for scripts.
    capsys.readouterr()
    assert main(["status", "--state", str(h.state)]) == 0
    out = capsys.readouterr().out
    assert f"inputs set aside: 1 (see docs/semantics.md, Runs); the last:\n  {T0.isoformat()}  event j-u1 (member.joined, u1): {reason}\n" in out
    assert main(["status", "--state", str(h.state), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs_set_aside"] == {"count": 1, "last": [{**failed, "at": T0.isoformat()}]}


DAILY_PLAYBOOK = """
cmtyflow: 1
name: daily
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
policies:
  catch_up: {{grace: 1h}}
triggers:
  - {{id: nightly, cron: "0 20 * * *", flow: remind}}
flows:
  remind:
    - {{id: post, send: {{channel: hook, text: "今晚打卡 {{{{ today }}}}"}}}}
"""


async def test_a_runner_stopped_across_three_firings_sends_one_late_and_reports_the_others(tmp_path, sink, harness):
    start = datetime(2026, 12, 1, 19, 0, tzinfo=UTC)
    h = harness([write_playbook(tmp_path / "pb", DAILY_PLAYBOOK.format(url=sink.url))], start)
    await h.open()
    await h.at(datetime(2026, 12, 1, 20, 0, tzinfo=UTC))
    assert [r.body["text"] for r in sink.requests] == ["今晚打卡 2026-12-01"]
    await h.close()
    # Down from Dec 1 20:00 to Dec 4 20:30: firings of Dec 2, 3, 4 are missed.
    await h.open()
    await h.at(datetime(2026, 12, 4, 20, 30, tzinfo=UTC))
    assert [r.body["text"] for r in sink.requests] == ["今晚打卡 2026-12-01", "今晚打卡 2026-12-04"]
    kinds = [e["kind"] for e in h.store.audit(["coalesced_firing", "late_firing", "skipped_firing"])]
    assert sorted(kinds) == ["coalesced_firing", "coalesced_firing", "late_firing"]
    # Stopped past the grace: nothing is sent, every missed firing is reported skipped.
    await h.close()
    await h.open()
    await h.at(datetime(2026, 12, 6, 23, 0, tzinfo=UTC))
    assert len(sink.requests) == 2
    skipped = [e["due"] for e in h.store.audit(["skipped_firing"])]
    assert skipped == ["2026-12-05T20:00:00+00:00", "2026-12-06T20:00:00+00:00"]
    await h.close()


def _texts(sink) -> list[str]:
    return [r.body["text"] for r in sink.requests]


async def test_a_schedule_the_runner_has_not_loaded_does_not_hold_it(tmp_path, sink, harness):
    """The state held a position for a playbook run before and not loaded now (or a
    trigger since renamed). The runner's loop took it as due, fired nothing, and turned
    for good, deaf to SIGTERM. It is left alone now, for a runner that loads it."""
    other = DAILY_PLAYBOOK.replace("name: daily", "name: other")
    paths = [write_playbook(tmp_path / "pb", DAILY_PLAYBOOK.format(url=sink.url)),
             write_playbook(tmp_path / "pb", other.format(url=sink.url), "other.yaml")]
    h = harness(paths, datetime(2026, 12, 1, 19, 0, tzinfo=UTC))
    await h.open()
    await h.close()
    only = harness(paths[:1], datetime(2026, 12, 1, 19, 0, tzinfo=UTC))
    await only.open()
    assert await asyncio.wait_for(only.at(datetime(2026, 12, 1, 20, 0, 5, tzinfo=UTC)), 10) is not None
    assert _texts(sink) == ["今晚打卡 2026-12-01"]
    await only.close()
    # Loaded again, the other playbook catches up on its own position (SPEC 5.3).
    both = harness(paths, datetime(2026, 12, 1, 20, 10, tzinfo=UTC))
    await both.open()
    await both.at(datetime(2026, 12, 1, 20, 10, tzinfo=UTC))
    assert _texts(sink) == ["今晚打卡 2026-12-01"] * 2
    await both.close()


async def test_an_edited_schedule_fires_as_edited_not_as_it_was(tmp_path, sink, harness):
    """A changed timezone fired in both zones every day; a moved cron fired once more at
    its old time; a new window after an ended one fired nothing (docs/playbooks.md tells
    users to change the window to run a challenge again)."""
    text = DAILY_PLAYBOOK.format(url=sink.url)
    path = write_playbook(tmp_path / "pb", text.replace("timezone: UTC", "timezone: UTC\nwindow: {start: 2026-12-01, days: 1}"))
    h = harness([path], datetime(2026, 12, 1, 19, 0, tzinfo=UTC))
    await h.open()
    await h.run_until(datetime(2026, 12, 3, tzinfo=UTC))
    assert _texts(sink) == ["今晚打卡 2026-12-01"]
    await h.close()
    # The same challenge again in January, and at 21:00 Berlin time.
    write_playbook(tmp_path / "pb", text.replace("timezone: UTC", "timezone: Europe/Berlin\nwindow: {start: 2027-01-04, days: 2}")
                   .replace('cron: "0 20 * * *"', 'cron: "0 21 * * *"').replace("{{ today }}", "{{ today }} {{ now.strftime('%H:%M') }}"))
    again = harness([path], datetime(2026, 12, 3, tzinfo=UTC))
    await again.open()
    await again.run_until(datetime(2027, 1, 7, tzinfo=UTC))
    assert _texts(sink) == ["今晚打卡 2026-12-01", "今晚打卡 2027-01-04 21:00", "今晚打卡 2027-01-05 21:00"]
    await again.close()


async def test_a_firing_caught_up_after_midnight_is_handled_as_of_its_own_day(tmp_path, sink, harness):
    """A 23:30 reminder caught up at 00:10 (within the grace) read the next day as
    ``today``; as a wait taken late, it is handled as of its due time, and sent now."""
    text = DAILY_PLAYBOOK.format(url=sink.url).replace('cron: "0 20 * * *"', 'cron: "30 23 * * *"')
    h = harness([write_playbook(tmp_path / "pb", text)], datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    await h.open()
    await h.close()
    await h.open()
    await h.at(datetime(2026, 12, 2, 0, 10, tzinfo=UTC))
    assert _texts(sink) == ["今晚打卡 2026-12-01"]
    assert [row.sent_at for row in h.store.outbox(["sent"])] == [datetime(2026, 12, 2, 0, 10, tzinfo=UTC)]
    await h.close()


async def test_a_position_kept_under_the_zone_alone_is_taken_over(tmp_path, sink, harness):
    """Positions written before keys had a digest: a missed firing is still caught up."""
    from cmtyflow.store.base import ScheduleUpdate
    from cmtyflow.store.sqlite import SqliteStore

    path = write_playbook(tmp_path / "pb", DAILY_PLAYBOOK.format(url=sink.url))
    store = SqliteStore(tmp_path / "state.db")
    store.set_schedules([ScheduleUpdate("daily", "nightly", "UTC", datetime(2026, 12, 1, 20, 0, tzinfo=UTC))])
    store.close()
    h = harness([path], datetime(2026, 12, 1, 20, 30, tzinfo=UTC))
    await h.open()
    await h.at(datetime(2026, 12, 1, 20, 30, tzinfo=UTC))
    assert _texts(sink) == ["今晚打卡 2026-12-01"]
    await h.close()


WAITS_PLAYBOOK = """
cmtyflow: 1
name: waits
timezone: Asia/Shanghai
channels:
  hook: {{adapter: webhook, url: "{url}"}}
triggers:
  - {{id: j, event: member.joined, flow: w}}
flows:
  w:
    - {{id: first, wait: {{event: message.posted, timeout: 1h}}}}
    - {{id: nudge, if: wait.timed_out, send: {{channel: hook, text: nudge}}}}
    - {{id: second, wait: {{event: message.posted, timeout: 1d}}}}
    - {{id: thanks, if: not wait.timed_out, send: {{channel: hook, text: thanks}}}}
    - {{id: silent, if: wait.timed_out, send: {{channel: hook, text: silent}}}}
"""


async def test_a_wait_taken_late_ends_at_its_due_time_so_a_later_event_still_answers_the_next(tmp_path, sink, harness):
    """Joined at 10:00, the 1h wait timed out at 11:00, posted at 12:00; the runner was
    down from 10:00 to two days later. The late wait went on as of the restart, so the
    second wait began after the 12:00 post, which then answered nothing: the member
    was reported silent a day later. As step by step (and in the dry run): nudge, then
    thanks, sent at the restart."""
    shanghai = ZoneInfo("Asia/Shanghai")
    joined_at = datetime(2026, 12, 1, 10, 0, tzinfo=shanghai)
    h = harness([write_playbook(tmp_path / "pb", WAITS_PLAYBOOK.format(url=sink.url))], joined_at)
    await h.open()
    h.store.put_members([{"id": "m1", "name": "Ann"}])
    h.store.add_events([event({"id": "j1", "type": "member.joined", "member": "m1", "at": joined_at.isoformat()})])
    await h.at(joined_at)
    await h.close()
    h.store = None
    await h.open()
    h.store.add_events([event({"id": "p1", "type": "message.posted", "member": "m1", "at": "2026-12-01T12:00:00+08:00"})])
    back = datetime(2026, 12, 3, 9, 0, tzinfo=shanghai)
    await h.at(back)
    await h.at(back + timedelta(days=2))
    assert [r.body["text"] for r in sink.requests] == ["nudge", "thanks"]
    (late,) = h.store.audit(["late_wait"])
    assert late["late_seconds"] == (back - joined_at - timedelta(hours=1)).total_seconds()
    await h.close()


async def test_a_minutely_schedule_down_for_a_day_is_reported_in_a_few_notes(tmp_path, sink, harness):
    """1,440 missed firings: the first ten noted one by one, the rest in one note with
    their count (each note is an audit row and a log line; a month down made 43,000)."""
    from cmtyflow.runtime.driver import NOTED_FIRINGS

    start = datetime(2026, 12, 1, 19, 0, tzinfo=UTC)
    text = DAILY_PLAYBOOK.replace('"0 20 * * *"', '"* * * * *"').replace("grace: 1h", "grace: 10m")
    h = harness([write_playbook(tmp_path / "pb", text.format(url=sink.url))], start)
    await h.open()
    await h.at(start)
    await h.close()
    await h.open()
    await h.at(start + timedelta(days=1, seconds=30))
    notes = h.store.audit(["coalesced_firing"])
    assert len(notes) == NOTED_FIRINGS + 1
    (summary,) = [n for n in notes if "more" in n]
    assert summary["more"] == 24 * 60 - 1 - NOTED_FIRINGS  # all but the one fired late
    assert h.store.counters()["coalesced_firings"] == 24 * 60 - 1
    await h.close()


async def _leave_inflight(h: Any, overrides: dict[str, Any] | None = None, *, started: bool = True) -> str:
    """Queue a message and claim it, as a runner does, and (``started``) record that its
    call to the platform began, then 'crash' (stop without finishing it); restart.
    Returns the message's key."""
    await h.open(overrides)
    await joined(h)
    h.runner.driver.process_until(T0)
    (row,) = h.store.claim_due_messages(T0, 10)
    if started:
        assert h.store.mark_sending(row.message.key, row.message.member, row.message.urgent)
    await h.crash()
    await h.open(overrides)
    return row.message.key


async def test_in_doubt_on_an_idempotent_adapter_is_resent_with_the_same_key(tmp_path, sink, harness):
    h = harness(hooks(tmp_path, sink.url), T0)
    key = await _leave_inflight(h)
    await h.at(T0)
    assert [r.key for r in sink.requests] == [key]
    assert rows(h)[0].status == "sent"
    await h.close()


class Recording:
    """A non-idempotent adapter (it cannot deduplicate by key), recording its sends."""

    capabilities = Capabilities(formats=("plain",), idempotent=False)

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: Any) -> Any:
        self.sent.append(message.key)
        return Receipt(message.key)


async def test_in_doubt_on_a_plain_adapter_is_held_and_listed(tmp_path, sink, harness, capsys):
    h = harness(hooks(tmp_path, sink.url), T0)
    adapter = Recording()
    key = await _leave_inflight(h, {"hook": adapter})
    await h.at(T0)
    assert adapter.sent == []
    assert rows(h)[0].status == "in_doubt"
    await h.close()
    assert main(["outbox", "--state", str(h.state), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["status"]) for r in listed] == [(key, "in_doubt")]


async def test_a_message_claimed_and_never_started_is_sent_after_a_crash_not_held(tmp_path, sink, harness):
    """SPEC 5.2: only a message whose call was in flight is in doubt. A runner claims up to
    1,000 rows at a time; killed during a rate-limited send, it left every one of them in
    doubt, and the platform had seen a few: held, the others never went."""
    h = harness(hooks(tmp_path, sink.url), T0)
    adapter = Recording()
    key = await _leave_inflight(h, {"hook": adapter}, started=False)
    await h.at(T0)
    assert adapter.sent == [key]
    assert rows(h)[0].status == "sent"
    await h.close()


async def test_a_member_who_opts_out_while_a_message_waits_for_its_rate_limit_gets_nothing(tmp_path, sink, harness):
    """The opt-out was read when the row was claimed; a message then waiting in the adapter
    for its chat's rate limit went out after the opt-out was recorded (SPEC 5.2)."""
    from cmtyflow.adapters.base import about_to_write

    class Waiting(Recording):
        marks_writes = True

        def __init__(self) -> None:
            super().__init__()
            self.go = asyncio.Event()

        async def send(self, message: Any) -> Any:
            await self.go.wait()  # a rate limit's token
            await about_to_write()
            return await super().send(message)

    h = harness(hooks(tmp_path, sink.url), T0)
    adapter = Waiting()
    await h.open({"hook": adapter})
    await joined(h)
    tick = asyncio.ensure_future(h.at(T0))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if rows(h)[0].status == "inflight":
            break
    h.store.put_members([{"id": rows(h)[0].message.member, "opted_out": True}])
    adapter.go.set()
    await tick
    assert adapter.sent == []
    assert [(r.status, r.last_error) for r in rows(h)] == [("cancelled", "member opted out or left")]
    await h.close()


async def test_in_doubt_is_resent_when_urgent_or_when_the_policy_says_resend(tmp_path, sink, harness):
    for case, kw in (("urgent", {"urgent": "true"}), ("policy", {"in_doubt": "resend"})):
        folder = tmp_path / case
        h = harness(hooks(folder, sink.url, **kw), T0)
        h.state = folder / "state.db"
        adapter = Recording()
        key = await _leave_inflight(h, {"hook": adapter})
        await h.at(T0)
        assert adapter.sent == [key], case
        await h.close()


async def test_stop_drains_and_an_abandoned_send_is_in_doubt_at_the_next_start(tmp_path, sink, harness):
    sink.script = ["hang"]
    h = harness(hooks(tmp_path, sink.url), T0, drain=0.2)
    runner = await h.open()
    await joined(h)
    tick = asyncio.create_task(h.at(T0))
    while not sink.requests:
        await asyncio.sleep(0.01)
    runner.stop()
    await tick
    assert rows(h)[0].status == "inflight"
    await h.close()
    sink.release.set()
    await h.open()
    await h.at(T0 + timedelta(seconds=1))
    # The webhook deduplicates by key, so the in-doubt message is resent with its key.
    assert [r.key for r in sink.requests][-1] == sink.requests[0].key
    assert len(sink.delivered) == 1
    await h.close()


async def test_an_event_posted_to_the_intake_wakes_the_runner(tmp_path, sink, harness, aiohttp_client):
    from cmtyflow.runtime.intake import IntakeConfig, make_app, store_accept

    h = harness(hooks(tmp_path, sink.url), T0, poll=60)  # a poll this long never fires in the test
    runner = await h.open()
    h.store.put_members(ROSTER)
    app = make_app(store_accept(h.store), IntakeConfig(token="t0k"), default_tz=UTC, now=h.clock.now, wake=runner.wake)
    client = await aiohttp_client(app)
    loop = asyncio.create_task(runner.run_forever())
    body = {"id": "j9", "type": "member.joined", "member": "u2", "at": T0.isoformat()}
    resp = await client.post("/events", json=body, headers={"Authorization": "Bearer t0k"})
    assert (resp.status, await resp.json()) == (202, {"accepted": 1, "duplicates": 0})
    for _ in range(500):  # the runner reacts to the wake-up, not to a timer
        if sink.requests:
            break
        await asyncio.sleep(0.01)
    runner.stop()
    await loop
    assert [r.body["text"] for r in sink.requests] == ["你好 Bea"]
    await h.close()


def test_listen_needs_a_token_or_a_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CMTYFLOW_INTAKE_TOKEN", raising=False)
    monkeypatch.delenv("CMTYFLOW_INTAKE_SECRET", raising=False)
    path = hooks(tmp_path, "http://127.0.0.1:9/hook")[0]
    assert main(["run", str(path), "--state", str(tmp_path / "s.db"), "--listen", "127.0.0.1:8765"]) == 1
    assert "CMTYFLOW_INTAKE_TOKEN" in capsys.readouterr().err


def test_a_port_already_taken_stops_run_before_the_runner_starts(tmp_path, monkeypatch, capsys):
    """It was found out after the runner had started: the state recorded a start, a stop
    and a first run of the playbook, for a runner that never ran."""
    import socket

    from cmtyflow.store.sqlite import SqliteStore

    monkeypatch.setenv("CMTYFLOW_INTAKE_TOKEN", "tok-1234567890")
    path = hooks(tmp_path, "http://127.0.0.1:9/hook")[0]
    state = tmp_path / "s.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["run", str(path), "--state", str(state), "--once", "--listen", f"127.0.0.1:{port}"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    with SqliteStore(state) as store:
        assert store.audit() == []


async def test_a_state_file_deleted_under_the_runner_stops_it(tmp_path, sink, harness):
    """The runner went on writing to the deleted file: the intake answered 202, a message
    was sent, and all of it was gone when it stopped, while `emit` made a new, empty
    state at the path that the runner never read."""
    from cmtyflow.errors import UserError

    h = harness([write_playbook(tmp_path / "pb", DAILY_PLAYBOOK.format(url=sink.url))], datetime(2026, 12, 1, 19, 0, tzinfo=UTC))
    await h.open()
    await h.at(datetime(2026, 12, 1, 19, 30, tzinfo=UTC))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{h.state}{suffix}").unlink(missing_ok=True)
    with pytest.raises(UserError, match="the state file was deleted or replaced while the runner had it open"):
        await h.at(datetime(2026, 12, 1, 20, 0, tzinfo=UTC))
    assert sink.requests == []
    await h.crash()


def test_a_second_runner_on_the_same_state_is_refused(tmp_path, capsys):
    from cmtyflow.runtime.runner import StateLock
    from cmtyflow.store.sqlite import SqliteStore

    state = tmp_path / "s.db"
    SqliteStore(state).close()  # the state exists: a runner has run on it
    held = StateLock(state)
    held.acquire()
    try:
        path = hooks(tmp_path, "http://127.0.0.1:9/hook")[0]
        assert main(["run", str(path), "--state", str(state), "--once"]) == 1
        assert "another runner is using" in capsys.readouterr().err
        # The same file through a symbolic link is the same state.
        (tmp_path / "link.db").symlink_to(state)
        assert main(["run", str(path), "--state", str(tmp_path / "link.db"), "--once"]) == 1
        assert "another runner is using" in capsys.readouterr().err
        # A lock file deleted under the runner (a "stale" lock cleared): the state file's
        # own lock still holds (a second runner started, and both sent the first one's
        # messages not yet sent).
        Path(f"{state}.lock").unlink()
        assert main(["run", str(path), "--state", str(state), "--once"]) == 1
        assert "another runner is using" in capsys.readouterr().err
    finally:
        held.release()


def test_sigterm_stops_claiming_and_drains_within_the_timeout(tmp_path):
    """The real signal path: `cmtyflow run` in a subprocess, a send hanging at the sink,
    SIGTERM: the runner exits 0 after --drain seconds; the abandoned send is left in
    flight (in doubt at the next start)."""
    import signal
    import subprocess
    import sys
    import time

    from loopback_sink import ThreadedSink

    from cmtyflow.store.sqlite import SqliteStore

    sink = ThreadedSink()
    url = sink.start()
    sink.call(lambda: sink.sink.script.append("hang"))
    try:
        path = hooks(tmp_path, url)[0]
        state = str(tmp_path / "s.db")
        roster = tmp_path / "members.csv"
        roster.write_text("id,name\nu1,阿明\n", encoding="utf-8")
        assert main(["members", "import", str(roster), "--state", state]) == 0
        assert main(["emit", "member.joined", "--member", "u1", "--id", "j1", "--state", state]) == 0
        cmd = [sys.executable, "-c", "from cmtyflow.cli import main; raise SystemExit(main())",
               "run", str(path), "--state", state, "--drain", "0.5", "--poll", "0.1"]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not sink.call(lambda: len(sink.sink.requests)) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for the subprocess to reach the sink, not for a schedule
            assert sink.call(lambda: len(sink.sink.requests)) == 1
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "stopping" in err and "abandoned" in err
        store = SqliteStore(state)
        try:
            assert [r.status for r in store.outbox()] == ["inflight"]
        finally:
            store.close()
    finally:
        sink.call(lambda: sink.sink.release.set() if sink.sink.release is not None else None)
        sink.stop()


def test_what_libraries_log_is_one_line_of_the_runners_log_without_traceback_or_password():
    """A database restart under a worker printed dozens of tracebacks (procrastinate,
    psycopg's pool, asyncio's "Task exception was never retrieved") into a JSON log."""
    import io
    import json
    import logging

    from cmtyflow.runtime.logs import LibraryLog, json_log

    out = io.StringIO()
    handler = LibraryLog(json_log(out, lambda: T0))
    with handler.installed():
        try:
            raise ConnectionError("connection to server at 127.0.0.1 failed\nIs the server running?")
        except ConnectionError:
            logging.getLogger("procrastinate.worker").exception("Side task listener failed, stopping worker")
        logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1': postgresql://cm:s3cret@db/x password=s3cret")
        logging.getLogger("asyncio").info("not at warning level: left out")
    assert handler not in logging.getLogger().handlers  # taken away after
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["event"], d["source"], d["level"]) for d in lines] == [
        ("library", "procrastinate.worker", "error"), ("library", "psycopg.pool", "warning")
    ]
    assert lines[0]["message"] == "Side task listener failed, stopping worker: ConnectionError: connection to server at 127.0.0.1 failed"
    assert "s3cret" not in out.getvalue() and "Traceback" not in out.getvalue()
    assert "where" not in lines[0]  # the library's own fault: no frames of ours


def test_a_fault_of_cmtyflows_own_logged_by_asyncio_keeps_where_it_happened():
    """An unretrieved exception of one of cmtyflow's tasks lost its traceback with the
    one-line form: the last frames of ours are kept, in one field."""
    import io
    import json
    import logging

    from cmtyflow.runtime import runner
    from cmtyflow.runtime.logs import LibraryLog, json_log

    out = io.StringIO()
    with LibraryLog(json_log(out, lambda: T0)).installed():
        try:
            runner.note_fields(None)  # type: ignore[arg-type]  # a fault inside cmtyflow
        except AttributeError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["message"].startswith("Task exception was never retrieved: AttributeError")
    assert "runner.py:" in line["where"] and "note_fields" in line["where"]


def test_run_once_ends_with_the_runs_that_failed(tmp_path, capsys):
    """A template reading a roster column no member has failed every run, and `run
    --once` ended 'done: 1 inputs handled, 1 runs started, 0 sent, ...' with nothing
    said of the failure."""
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "cmtyflow: 1\nname: p\ntimezone: UTC\nchannels:\n  dm: {adapter: console}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\nflows:\n  f:\n"
        "    - send: {text: \"hi {{ member.first_name }}\"}\n",
        encoding="utf-8",
    )
    state = str(tmp_path / "s.db")
    assert main(["emit", "member.joined", "--member", "u1", "--at", "2026-12-01T10:00:00+00:00", "--state", state]) == 0
    capsys.readouterr()
    assert main(["run", str(playbook), "--state", state, "--once", "--now", "2026-12-01T10:00:00+00:00"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("done: 1 inputs handled, 1 runs started, 1 run failed (cmtyflow status says why), 0 sent"), last


def test_the_last_line_counts_messages_held_in_doubt():
    from cmtyflow.runtime.dispatch import DispatchStats
    from cmtyflow.runtime.runner import add_stats, summary

    total = DispatchStats()
    add_stats(total, DispatchStats(sent=2, held=1))
    add_stats(total, DispatchStats(held=2))
    assert summary("done", 3, 1, total, False).endswith(", 3 held in doubt (cmtyflow outbox)")


def test_a_start_earlier_than_the_last_run_says_so(tmp_path, capsys):
    """A rehearsal with --now a week ahead, on the live state, moved the daily firing on;
    the real runs after it sent nothing, and nothing said why."""
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "cmtyflow: 1\nname: p\ntimezone: UTC\nchannels:\n  dm: {adapter: console}\n"
        "triggers:\n  - {id: daily, cron: \"0 9 * * *\", flow: f}\nflows:\n  f:\n    - send: {text: hi}\n",
        encoding="utf-8",
    )
    state = str(tmp_path / "s.db")
    assert main(["run", str(playbook), "--state", state, "--once", "--now", "2026-12-08T10:00:00+00:00"]) == 0
    assert "clock behind" not in capsys.readouterr().err
    assert main(["run", str(playbook), "--state", state, "--once", "--now", "2026-12-01T10:00:00+00:00"]) == 0
    err = capsys.readouterr().err
    assert "clock behind: now=2026-12-01T10:00:00+00:00, last_run=2026-12-08T10:00:00+00:00, hint=schedules and waits" in err


def test_a_lock_file_that_cannot_be_written_is_named(tmp_path):
    """On a full disk the runner stopped with 'No space left on device', naming no file
    (the pid is written into state.db.lock first). /dev/full stands in for the disk."""
    from cmtyflow.errors import UserError
    from cmtyflow.runtime.runner import StateLock

    (tmp_path / "s.db.lock").symlink_to("/dev/full")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 's.db.lock'}: cannot write the runner's lock file: ")):
        StateLock(tmp_path / "s.db").acquire()
