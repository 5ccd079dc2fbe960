"""Quiet hours, the daily cap, urgent sends and opt-outs (SPEC 1 policies, 4 send, 5.2, 5.6)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")


def trio(deliveries):
    return [(d["at"], d["member"], d["step"]) for d in deliveries]


PING = """
cmtyflow: 1
name: qh
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
policies:
  quiet_hours: {start: "22:00", end: "08:00"}
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - id: hello
      send: {channel: dm, text: "hi {{ member.name }}"}
    - id: alert
      if: event.data.get('alert', false)
      send: {channel: dm, text: "ALERT", urgent: true}
"""


def test_quiet_hours_defer_across_midnight_in_member_timezone(simulate, tmp_path):
    roster = [
        {"id": "ny", "name": "Nia", "timezone": "America/New_York"},
        {"id": "sh", "name": "Shu"},  # no timezone: the playbook's (Asia/Shanghai)
    ]
    events = [
        # 23:30 in New York is 12:30 next day in Shanghai: quiet for ny only.
        {"id": "e1", "type": "ping", "at": "2026-12-01T23:30:00-05:00", "member": "ny"},
        {"id": "e2", "type": "ping", "at": "2026-12-01T23:30:00-05:00", "member": "sh"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-02T12:30:00+08:00", "sh", "hello"),
        # 08:00 New York on Dec 2, shown in the playbook's timezone.
        ("2026-12-02T21:00:00+08:00", "ny", "hello"),
    ]
    assert datetime.fromisoformat(out[1]["at"]).astimezone(NY).isoformat() == "2026-12-02T08:00:00-05:00"
    assert out[1]["text"] == "hi Nia"
    assert summary["deferred"] == {"quiet_hours": 1, "daily_cap": 0}


def test_quiet_hours_before_midnight_and_after_midnight_same_end(simulate, tmp_path):
    roster = [{"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T22:00:00-05:00", "member": "ny"},  # first quiet second
        {"id": "e2", "type": "ping", "at": "2026-12-02T07:59:59-05:00", "member": "ny"},  # last quiet second
        {"id": "e3", "type": "ping", "at": "2026-12-02T08:00:00-05:00", "member": "ny"},  # quiet is over
        {"id": "e4", "type": "ping", "at": "2026-12-02T21:59:59-05:00", "member": "ny"},  # not yet quiet
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-02T21:00:00+08:00", "ny", "hello"),
        ("2026-12-02T21:00:00+08:00", "ny", "hello"),
        ("2026-12-02T21:00:00+08:00", "ny", "hello"),
        ("2026-12-03T10:59:59+08:00", "ny", "hello"),
    ]
    assert summary["deferred"]["quiet_hours"] == 2


def test_urgent_send_inside_quiet_hours_goes_out_at_once(simulate, tmp_path):
    roster = [{"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    events = [{"id": "e1", "type": "ping", "at": "2026-12-01T23:30:00-05:00", "member": "ny", "data": {"alert": True}}]
    out, summary = simulate(PING, roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-02T12:30:00+08:00", "ny", "alert"),  # 23:30 New York, at once
        ("2026-12-02T21:00:00+08:00", "ny", "hello"),  # 08:00 New York
    ]
    assert summary["deferred"] == {"quiet_hours": 1, "daily_cap": 0}


def test_opted_out_member_gets_no_non_urgent_send_but_urgent_goes(simulate, tmp_path):
    roster = [
        {"id": "out", "name": "Olga", "opted_out": True},
        {"id": "in", "name": "Ines"},
    ]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "out", "data": {"alert": True}},
        {"id": "e2", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "in"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 2, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "out", "alert"),
        ("2026-12-01T10:00:00+08:00", "in", "hello"),
    ]
    assert summary["skipped"]["opted_out"] == 1


def test_opt_out_recorded_while_deferred_message_queued_is_not_delivered(simulate, tmp_path):
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}]
    events = [
        # 23:00 Shanghai: deferred to 08:00 the next day.
        {"id": "e1", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "a"},
        {"id": "e2", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "b"},
        {"id": "e3", "type": "member.opted_out", "at": "2026-12-02T01:00:00+08:00", "member": "a"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 3, tmp_path)
    assert trio(out) == [("2026-12-02T08:00:00+08:00", "b", "hello")]
    assert summary["skipped"]["opted_out"] == 1
    assert summary["pending"] == 0


def test_opt_out_at_the_delivery_instant_wins(simulate, tmp_path):
    """Inputs at an instant are handled before that instant's deliveries (dryrun docstring)."""
    roster = [{"id": "a", "name": "Ana"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "a"},
        {"id": "e2", "type": "member.opted_out", "at": "2026-12-02T08:00:00+08:00", "member": "a"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 3, tmp_path)
    assert out == []
    assert summary["skipped"]["opted_out"] == 1


LEFT_SPEC = PING.replace(
    "    - id: alert\n",
    "    - {id: later, wait: 1d}\n"
    '    - {id: next-day, send: {channel: dm, text: "day two {{ member.name }}"}}\n'
    "    - id: alert\n",
)


def test_a_member_who_left_gets_nothing_more_from_runs_already_on(simulate, tmp_path):
    """Outside every audience once they left (docs/semantics.md): a run started before
    sent its later steps all the same, and a message deferred past the leaving went
    out. Both are now left out (counted), as for an opt-out."""
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "a"},  # hello deferred to 08:00
        {"id": "e2", "type": "ping", "at": "2026-12-01T12:00:00+08:00", "member": "b"},
        {"id": "e3", "type": "member.left", "at": "2026-12-02T01:00:00+08:00", "member": "a"},
    ]
    out, summary = simulate(LEFT_SPEC, roster, events, "2026-12-01", 4, tmp_path)
    assert [(m, step) for _, m, step in trio(out)] == [("b", "hello"), ("b", "next-day")]
    assert summary["skipped"]["left"] == 2  # the deferred hello (cancelled when due) and day two (not queued)


def test_a_member_who_left_and_joined_again_is_reached_again(simulate, tmp_path):
    """The join took the ``left`` flag away from the record, but the stores merge a
    member's fields, so the stored record kept it: back in the group, the member was
    outside every audience for good."""
    roster = [{"id": "a", "name": "Ana"}]
    events = [
        {"id": "e1", "type": "member.left", "at": "2026-12-01T10:00:00+08:00", "member": "a"},
        {"id": "e2", "type": "ping", "at": "2026-12-01T11:00:00+08:00", "member": "a"},
        {"id": "e3", "type": "member.joined", "at": "2026-12-02T10:00:00+08:00", "member": "a"},
        {"id": "e4", "type": "ping", "at": "2026-12-02T11:00:00+08:00", "member": "a"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 3, tmp_path)
    assert trio(out) == [("2026-12-02T11:00:00+08:00", "a", "hello")]
    assert summary["skipped"]["outside_audience"] == 1  # the ping while away


LEFT_TRIGGER = """
cmtyflow: 1
name: bye
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
audience: {where: "'club' in member.tags"}
triggers:
  - {id: gone, event: member.left, flow: f}
flows:
  f:
    - {id: mods, send: {channel: dm, to: [mod], text: "{{ member.name }} left"}}
    - {id: ask, send: {channel: dm, text: "why, {{ member.name }}?"}}
"""


def test_a_member_left_trigger_starts_a_run_for_who_just_left(simulate, tmp_path):
    """SPEC 3 names member.left a standard event, but the member was marked as gone
    before the triggers were matched, so such a trigger never started anything. It now
    starts for a member of the audience as they were; the moderators are told, and
    the member, who left, is sent nothing. A member who had already left starts
    nothing, nor does one outside the audience."""
    roster = [{"id": "a", "name": "Ana", "tags": ["club"]}, {"id": "o", "name": "Oz"},
              {"id": "mod", "name": "Mo", "tags": ["club"]}]
    events = [
        {"id": "e1", "type": "member.left", "at": "2026-12-01T10:00:00+08:00", "member": "a"},
        {"id": "e2", "type": "member.left", "at": "2026-12-01T11:00:00+08:00", "member": "a"},
        {"id": "e3", "type": "member.left", "at": "2026-12-01T12:00:00+08:00", "member": "o"},
    ]
    out, summary = simulate(LEFT_TRIGGER, roster, events, "2026-12-01", 2, tmp_path)
    assert [(d["member"], d["step"], d["text"]) for d in out] == [("mod", "mods", "Ana left")]
    assert summary["runs"]["started"] == 1 and summary["skipped"]["left"] == 1
    assert summary["skipped"]["outside_audience"] == 2


def test_opt_in_again_receives_later_sends(simulate, tmp_path):
    roster = [{"id": "a", "name": "Ana", "opted_out": True}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "a"},
        {"id": "e2", "type": "member.opted_in", "at": "2026-12-01T11:00:00+08:00", "member": "a"},
        {"id": "e3", "type": "ping", "at": "2026-12-01T12:00:00+08:00", "member": "a"},
    ]
    out, _ = simulate(PING, roster, events, "2026-12-01", 2, tmp_path)
    assert trio(out) == [("2026-12-01T12:00:00+08:00", "a", "hello")]


def test_member_data_in_an_event_does_not_undo_a_recorded_opt_out(simulate, tmp_path):
    """SPEC 5.2: only member.opted_in undoes an opt-out; an event's member object saying
    opted_out false (a platform's stale profile) is kept from doing so, and said."""
    roster = [{"id": "a", "name": "Ana", "opted_out": True}, {"id": "b", "name": "Bo"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": {"id": "a", "name": "Ana", "opted_out": False}},
        {"id": "e2", "type": "ping", "at": "2026-12-01T11:00:00+08:00", "member": "a"},
        {"id": "e3", "type": "member.opted_out", "at": "2026-12-01T12:00:00+08:00", "member": "b"},
        {"id": "e4", "type": "ping", "at": "2026-12-01T13:00:00+08:00", "member": {"id": "b", "opted_out": False}},
        {"id": "e5", "type": "member.opted_in", "at": "2026-12-01T14:00:00+08:00", "member": {"id": "a", "opted_out": False}},
        {"id": "e6", "type": "ping", "at": "2026-12-01T15:00:00+08:00", "member": "a"},
    ]
    out, summary = simulate(PING, roster, events, "2026-12-01", 2, tmp_path)
    assert trio(out) == [("2026-12-01T15:00:00+08:00", "a", "hello")]
    assert any("2 events carried opted_out false for a member who had opted out" in w for w in summary["warnings"])


CAPPED = """
cmtyflow: 1
name: {name}
timezone: Asia/Shanghai
channels:
  dm: {{adapter: console}}
policies:
  quiet_hours: {{start: "22:00", end: "08:00"}}
  max_per_member_per_day: 2
triggers:
  - id: t
    event: {event}
    flow: f
flows:
  f:
{steps}
"""


def _capped(name: str, event: str, step_ids: list[str], urgent: bool = False) -> str:
    steps = "".join(
        f"    - id: {sid}\n      send: {{channel: dm, text: \"{sid}\", urgent: {str(urgent).lower()}}}\n"
        for sid in step_ids
    )
    return CAPPED.format(name=name, event=event, steps=steps)


def test_daily_cap_is_shared_by_two_playbooks(simulate, tmp_path):
    a = _capped("alpha", "ping.a", ["a1", "a2"])
    b = _capped("beta", "ping.b", ["b1"])
    roster = [{"id": "m", "name": "Mo", "timezone": "America/New_York"}, {"id": "n", "name": "Ned"}]
    events = [
        {"id": "e1", "type": "ping.a", "at": "2026-12-01T10:00:00-05:00", "member": "m"},
        {"id": "e2", "type": "ping.b", "at": "2026-12-01T15:00:00-05:00", "member": "m"},
        {"id": "e3", "type": "ping.b", "at": "2026-12-01T15:00:00-05:00", "member": "n"},
    ]
    out, summary = simulate([a, b], roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-01T23:00:00+08:00", "m", "a1"),
        ("2026-12-01T23:00:00+08:00", "m", "a2"),
        # 15:00 New York is 04:00 Shanghai, inside quiet hours for n (Shanghai): 08:00.
        ("2026-12-02T08:00:00+08:00", "n", "b1"),
        # m's third message of Dec 1 (New York) moves to Dec 2, 08:00 New York.
        ("2026-12-02T21:00:00+08:00", "m", "b1"),
    ]
    assert datetime.fromisoformat(out[3]["at"]).astimezone(NY).isoformat() == "2026-12-02T08:00:00-05:00"
    assert summary["deferred"] == {"quiet_hours": 1, "daily_cap": 1}


def test_daily_cap_moved_message_counts_against_the_next_day(simulate, tmp_path):
    pb = _capped("alpha", "ping", ["s1", "s2", "s3", "s4", "s5"])
    roster = [{"id": "m", "name": "Mo"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "m"},
    ]
    out, summary = simulate(pb, roster, events, "2026-12-01", 5, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "m", "s1"),
        ("2026-12-01T10:00:00+08:00", "m", "s2"),
        ("2026-12-02T08:00:00+08:00", "m", "s3"),
        ("2026-12-02T08:00:00+08:00", "m", "s4"),
        ("2026-12-03T08:00:00+08:00", "m", "s5"),
    ]
    assert summary["deferred"]["daily_cap"] == 3


def test_urgent_sends_ignore_and_do_not_use_the_daily_cap(simulate, tmp_path):
    urgent = _capped("alerts", "alarm", ["u1", "u2", "u3"], urgent=True)
    normal = _capped("normal", "ping", ["n1", "n2"])
    roster = [{"id": "m", "name": "Mo"}]
    events = [
        {"id": "e1", "type": "alarm", "at": "2026-12-01T23:00:00+08:00", "member": "m"},
        {"id": "e2", "type": "ping", "at": "2026-12-02T09:00:00+08:00", "member": "m"},
    ]
    out, summary = simulate([urgent, normal], roster, events, "2026-12-01", 3, tmp_path)
    assert trio(out) == [
        ("2026-12-01T23:00:00+08:00", "m", "u1"),
        ("2026-12-01T23:00:00+08:00", "m", "u2"),
        ("2026-12-01T23:00:00+08:00", "m", "u3"),
        ("2026-12-02T09:00:00+08:00", "m", "n1"),
        ("2026-12-02T09:00:00+08:00", "m", "n2"),
    ]
    assert summary["deferred"] == {"quiet_hours": 0, "daily_cap": 0}


def test_quiet_deferral_counts_against_the_day_it_is_delivered(simulate, tmp_path):
    pb = _capped("alpha", "ping", ["s1", "s2"])
    roster = [{"id": "m", "name": "Mo"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "m"},
        {"id": "e2", "type": "ping", "at": "2026-12-02T10:00:00+08:00", "member": "m"},
    ]
    out, summary = simulate(pb, roster, events, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-02T08:00:00+08:00", "m", "s1"),
        ("2026-12-02T08:00:00+08:00", "m", "s2"),
        ("2026-12-03T08:00:00+08:00", "m", "s1"),  # Dec 2 already holds two
        ("2026-12-03T08:00:00+08:00", "m", "s2"),
    ]
    assert summary["deferred"] == {"quiet_hours": 2, "daily_cap": 2}


def test_daytime_quiet_hours_and_messages_due_after_the_span(simulate, tmp_path):
    pb = PING.replace('{start: "22:00", end: "08:00"}', '{start: "12:00", end: "14:00"}')
    roster = [{"id": "m", "name": "Mo"}]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T11:59:59+08:00", "member": "m"},
        {"id": "e2", "type": "ping", "at": "2026-12-01T12:00:00+08:00", "member": "m"},
        {"id": "e3", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "m"},
        {"id": "e4", "type": "ping", "at": "2026-12-02T13:00:00+08:00", "member": "m"},  # outside the span: ignored
        {"id": "e1", "type": "ping", "at": "2026-12-01T15:00:00+08:00", "member": "m"},  # a duplicate id
    ]
    out, summary = simulate(pb, roster, events, "2026-12-01", 1, tmp_path)
    assert trio(out) == [
        ("2026-12-01T11:59:59+08:00", "m", "hello"),
        ("2026-12-01T14:00:00+08:00", "m", "hello"),
        ("2026-12-01T23:00:00+08:00", "m", "hello"),
    ]
    assert summary["skipped"]["events_outside_span"] == 1
    assert summary["skipped"]["duplicate_events"] == 1
    assert summary["pending"] == 0  # e4 was outside the span, so never handled


def test_message_deferred_past_the_span_is_pending(simulate, tmp_path):
    roster = [{"id": "m", "name": "Mo"}]
    events = [{"id": "e1", "type": "ping", "at": "2026-12-01T23:00:00+08:00", "member": "m"}]
    out, summary = simulate(PING, roster, events, "2026-12-01", 1, tmp_path)
    assert out == []
    assert summary["pending"] == 1
    assert summary["deferred"]["quiet_hours"] == 1


def test_quiet_hours_ending_in_the_repeated_hour_end_after_the_send():
    """Quiet 22:00-01:30 in New York, a send at 01:15 in the second pass of the
    fall-back hour (EST): it was moved to 01:30 EDT, 45 minutes before the send, and a
    runner sent it at once, inside the quiet hours. Both passes now end at an 01:30
    after the send."""
    from datetime import time

    from cmtyflow.engine.policies import after_quiet

    quiet, ny = (time(22), time(1, 30)), ZoneInfo("America/New_York")
    for sent, ends in [("2026-11-01T01:15:00-04:00", "2026-11-01T01:30:00-04:00"),
                       ("2026-11-01T01:15:00-05:00", "2026-11-01T01:30:00-05:00"),
                       ("2026-10-31T23:00:00-04:00", "2026-11-01T01:30:00-04:00")]:
        moved = after_quiet(datetime.fromisoformat(sent), quiet, ny)
        assert moved.isoformat() == ends and moved > datetime.fromisoformat(sent)


FILTERS = """
cmtyflow: 1
name: tw
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
audience: {where: "member.tags[0] == 'reading'"}
triggers:
  - {id: c, event: message.posted, flow: f, where: "'打卡' in event.data.text"}
flows:
  f:
    - {id: s, send: {channel: dm, text: "hi"}}
"""


def test_the_dry_run_warns_of_audience_checks_and_trigger_filters_that_failed(simulate, tmp_path):
    """Each starts nothing, and the runner logs it; the dry run said nothing of either."""
    roster = [{"id": "m1", "tags": ["reading"]}, {"id": "m2", "tags": []}]
    events = [
        {"id": "1", "type": "message.posted", "at": "2026-12-01T10:00:00+08:00", "member": "m1", "data": {"image": "x.png"}},
        {"id": "2", "type": "message.posted", "at": "2026-12-01T10:00:00+08:00", "member": "m2", "data": {"text": "打卡"}},
        {"id": "3", "type": "message.posted", "at": "2026-12-01T11:00:00+08:00", "member": "m1", "data": {"text": "打卡"}},
    ]
    out, summary = simulate(FILTERS, roster, events, "2026-12-01", 2, tmp_path)
    assert [d["member"] for d in out] == ["m1"]
    (audience,) = [w for w in summary["warnings"] if "audience checks" in w]
    assert audience.startswith("1 audience checks failed and started nothing (first: tw, member m2: ")
    (trigger,) = [w for w in summary["warnings"] if "trigger filters" in w]
    assert trigger.startswith("1 trigger filters failed and started nothing (first: tw, trigger 'c', member m1: ")
