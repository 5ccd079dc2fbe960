"""Calendar waits across daylight-saving changes, the playbook window, and
member-local schedules (SPEC 1 window, 2 durations, 3 schedule triggers)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest


def trio(deliveries):
    return [(d["at"], d["member"], d["step"]) for d in deliveries]


WAIT = """
cmtyflow: 1
name: waits
timezone: {tz}
channels:
  dm: {{adapter: console}}
triggers:
  - id: t
    event: ping
    flow: f
flows:
  f:
    - id: before
      send: {{channel: dm, text: "before"}}
    - wait: {wait}
    - id: after
      send: {{channel: dm, text: "after {{{{ now.isoformat() }}}}"}}
"""


@pytest.mark.parametrize(
    ("tz", "event_at", "after_at"),
    [
        # Europe/Berlin: CEST -> CET on 2026-10-25 (03:00 -> 02:00).
        ("Europe/Berlin", "2026-10-23T10:00:00+02:00", "2026-10-26T10:00:00+01:00"),
        # America/New_York: EDT -> EST on 2026-11-01.
        ("America/New_York", "2026-10-30T10:00:00-04:00", "2026-11-02T10:00:00-05:00"),
        # America/New_York: EST -> EDT on 2026-03-08.
        ("America/New_York", "2026-03-06T10:00:00-05:00", "2026-03-09T10:00:00-04:00"),
    ],
)
def test_wait_days_keeps_wall_clock_time_across_dst(simulate, tmp_path, tz, event_at, after_at):
    pb = WAIT.format(tz=tz, wait="3d")
    roster = [{"id": "m", "name": "Mo"}]
    events = [{"id": "e1", "type": "ping", "at": event_at, "member": "m"}]
    out, summary = simulate(pb, roster, events, event_at[:10], 5, tmp_path)
    assert trio(out) == [(event_at, "m", "before"), (after_at, "m", "after")]
    assert out[1]["text"] == f"after {after_at}"
    assert summary["runs"]["done"] == 1


@pytest.mark.parametrize(
    ("tz", "event_at", "after_at"),
    [
        ("Europe/Berlin", "2026-10-23T10:00:00+02:00", "2026-10-26T09:00:00+01:00"),
        ("America/New_York", "2026-10-30T10:00:00-04:00", "2026-11-02T09:00:00-05:00"),
        ("America/New_York", "2026-03-06T10:00:00-05:00", "2026-03-09T11:00:00-04:00"),
    ],
)
def test_wait_hours_is_elapsed_time_across_dst(simulate, tmp_path, tz, event_at, after_at):
    pb = WAIT.format(tz=tz, wait="72h")
    roster = [{"id": "m", "name": "Mo"}]
    events = [{"id": "e1", "type": "ping", "at": event_at, "member": "m"}]
    out, _ = simulate(pb, roster, events, event_at[:10], 5, tmp_path)
    assert trio(out) == [(event_at, "m", "before"), (after_at, "m", "after")]


def test_wait_days_uses_the_member_timezone_not_the_playbooks(simulate, tmp_path):
    """A member run's timezone is member.timezone (SPEC 2): the DST change that
    matters is New York's, though the playbook is in Shanghai (no DST)."""
    pb = WAIT.format(tz="Asia/Shanghai", wait="3d")
    roster = [
        {"id": "ny", "name": "Nia", "timezone": "America/New_York"},
        {"id": "sh", "name": "Shu"},
    ]
    events = [
        {"id": "e1", "type": "ping", "at": "2026-10-30T10:00:00-04:00", "member": "ny"},
        {"id": "e2", "type": "ping", "at": "2026-10-30T22:00:00+08:00", "member": "sh"},
    ]
    out, _ = simulate(pb, roster, events, "2026-10-30", 5, tmp_path)
    assert trio(out) == [
        ("2026-10-30T22:00:00+08:00", "ny", "before"),
        ("2026-10-30T22:00:00+08:00", "sh", "before"),
        # Nov 2, 10:00 New York (EST, -05:00) is 23:00 in Shanghai, not 22:00.
        ("2026-11-02T22:00:00+08:00", "sh", "after"),
        ("2026-11-02T23:00:00+08:00", "ny", "after"),
    ]
    ny_after = datetime.fromisoformat(out[3]["at"]).astimezone(ZoneInfo("America/New_York"))
    assert ny_after.isoformat() == "2026-11-02T10:00:00-05:00"
    assert out[3]["text"] == "after 2026-11-02T10:00:00-05:00"  # `now` in the member's zone


def test_wait_until_time_of_day_in_member_timezone(simulate, tmp_path):
    pb = WAIT.format(tz="Asia/Shanghai", wait='{until: "09:00"}')
    roster = [{"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    events = [{"id": "e1", "type": "ping", "at": "2026-10-31T10:00:00-04:00", "member": "ny"}]
    out, _ = simulate(pb, roster, events, "2026-10-31", 3, tmp_path)
    assert trio(out) == [
        ("2026-10-31T22:00:00+08:00", "ny", "before"),
        ("2026-11-01T22:00:00+08:00", "ny", "after"),  # 09:00 EST on the day of the change
    ]


WINDOW = """
cmtyflow: 1
name: win
timezone: Asia/Shanghai
window: {start: 2026-12-01, days: 3}
channels:
  group: {adapter: console}
triggers:
  - id: joined
    event: ping
    flow: hello
  - id: daily
    cron: "0 9 * * *"
    flow: morning
flows:
  hello:
    - id: hello
      send: {channel: group, to: member, text: "hi"}
  morning:
    - id: morning
      send: {channel: group, text: "good morning"}
"""


def test_window_edges(simulate, tmp_path):
    roster = [{"id": "m", "name": "Mo"}, {"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    events = [
        {"id": "before", "type": "ping", "at": "2026-11-30T23:59:59+08:00", "member": "m"},
        {"id": "first", "type": "ping", "at": "2026-12-01T00:00:00+08:00", "member": "m"},
        {"id": "last", "type": "ping", "at": "2026-12-03T23:59:59+08:00", "member": "m"},
        {"id": "after", "type": "ping", "at": "2026-12-04T00:00:00+08:00", "member": "m"},
        # Dec 3, 20:00 in New York is Dec 4 in Shanghai: the member's own date counts.
        {"id": "ny-last", "type": "ping", "at": "2026-12-03T20:00:00-05:00", "member": "ny"},
        # Nov 30, 12:00 in New York is Dec 1 in Shanghai but still the day before for ny.
        {"id": "ny-before", "type": "ping", "at": "2026-11-30T12:00:00-05:00", "member": "ny"},
    ]
    out, summary = simulate(WINDOW, roster, events, "2026-11-30", 6, tmp_path)
    assert trio(out) == [
        ("2026-12-01T00:00:00+08:00", "m", "hello"),
        ("2026-12-01T09:00:00+08:00", None, "morning"),
        ("2026-12-02T09:00:00+08:00", None, "morning"),
        ("2026-12-03T09:00:00+08:00", None, "morning"),
        ("2026-12-03T23:59:59+08:00", "m", "hello"),
        ("2026-12-04T09:00:00+08:00", "ny", "hello"),
    ]
    # before, after, ny-before, and the cron firing of Nov 30 (Dec 4's is never scheduled)
    assert summary["skipped"]["outside_window"] == 4
    assert summary["runs"]["started"] == 6


def test_a_firing_at_the_start_instant_is_the_first(simulate, tmp_path):
    """SPEC 6: a dry run covers [start, start + days); a daily midnight firing at the
    start instant (a window's first midnight) was dropped, while an ``at`` there fired."""
    pb = WINDOW.replace('cron: "0 9 * * *"', 'cron: "0 0 * * *"')
    out, _ = simulate(pb, [{"id": "m", "name": "Mo"}], [], "2026-12-01", 3, tmp_path)
    assert trio(out) == [
        ("2026-12-01T00:00:00+08:00", None, "morning"),
        ("2026-12-02T00:00:00+08:00", None, "morning"),
        ("2026-12-03T00:00:00+08:00", None, "morning"),
    ]


@pytest.mark.parametrize("start", ["2026-11-01", "2026-11-01T00:00:00-04:00"])
def test_a_dry_runs_days_are_calendar_days_however_start_is_written(simulate, tmp_path, start):
    """A day across the fall-back change is 25 hours; with --start written with an
    offset the span was 24 hours elapsed, and the evening's firing fell outside it."""
    pb = WINDOW.replace("timezone: Asia/Shanghai", "timezone: America/New_York").replace(
        "window: {start: 2026-12-01, days: 3}\n", "").replace('cron: "0 9 * * *"', 'cron: "30 23 * * *"')
    out, summary = simulate(pb, [{"id": "m", "name": "Mo"}], [], start, 1, tmp_path)
    assert summary["end"] == "2026-11-02T00:00:00-05:00"
    assert trio(out) == [("2026-11-01T23:30:00-05:00", None, "morning")]


MEMBER_CRON = """
cmtyflow: 1
name: evening
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: nightly
    cron: "0 21 * * *"
    timezone: member
    for_each: audience
    flow: f
flows:
  f:
    - id: evening
      send: {channel: dm, text: "{{ now.strftime('%H:%M %Z') }}"}
"""


def test_member_local_cron_fires_at_each_members_own_time(simulate, tmp_path):
    roster = [
        {"id": "sh", "name": "Shu"},
        {"id": "ber", "name": "Ben", "timezone": "Europe/Berlin"},
        {"id": "ny", "name": "Nia", "timezone": "America/New_York"},
        {"id": "ny2", "name": "Ned", "timezone": "America/New_York"},
        {"id": "tok", "name": "Taro", "timezone": "Asia/Tokyo"},
    ]
    # [Dec 1 00:00, Dec 2 00:00) Shanghai = [Nov 30 17:00, Dec 1 17:00) Berlin
    # = [Nov 30 11:00, Dec 1 11:00) New York
    out, summary = simulate(MEMBER_CRON, roster, [], "2026-12-01", 1, tmp_path)
    assert trio(out) == [
        ("2026-12-01T04:00:00+08:00", "ber", "evening"),  # Nov 30 21:00 Berlin
        ("2026-12-01T10:00:00+08:00", "ny", "evening"),  # Nov 30 21:00 New York
        ("2026-12-01T10:00:00+08:00", "ny2", "evening"),
        ("2026-12-01T20:00:00+08:00", "tok", "evening"),  # Dec 1 21:00 Tokyo
        ("2026-12-01T21:00:00+08:00", "sh", "evening"),  # Dec 1 21:00 Shanghai
    ]
    assert {d["member"]: d["text"] for d in out} == {
        "ny": "21:00 EST", "ny2": "21:00 EST", "tok": "21:00 JST", "sh": "21:00 CST", "ber": "21:00 CET",
    }
    assert summary["runs"]["started"] == 5


def test_member_local_cron_keeps_local_time_across_dst(simulate, tmp_path):
    roster = [{"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    out, _ = simulate(MEMBER_CRON, roster, [], "2026-10-31T12:00:00-04:00", 3, tmp_path)
    assert [datetime.fromisoformat(d["at"]).astimezone(ZoneInfo("America/New_York")).isoformat() for d in out] == [
        "2026-10-31T21:00:00-04:00",
        "2026-11-01T21:00:00-05:00",
        "2026-11-02T21:00:00-05:00",
    ]


def test_member_local_cron_window_reads_the_members_calendar(simulate, tmp_path):
    """Window days are the firing's local dates (core docstring): New York's Dec 3,
    21:00 is Dec 4 in Shanghai, but still inside a window ending Dec 3."""
    pb = MEMBER_CRON.replace("channels:", "window: {start: 2026-12-02, end: 2026-12-03}\nchannels:")
    roster = [{"id": "sh", "name": "Shu"}, {"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    out, summary = simulate(pb, roster, [], "2026-12-01", 5, tmp_path)
    assert trio(out) == [
        ("2026-12-02T21:00:00+08:00", "sh", "evening"),
        ("2026-12-03T10:00:00+08:00", "ny", "evening"),  # Dec 2 21:00 New York
        ("2026-12-03T21:00:00+08:00", "sh", "evening"),
        ("2026-12-04T10:00:00+08:00", "ny", "evening"),  # Dec 3 21:00 New York
    ]


def test_cron_with_its_own_timezone_reads_window_in_that_timezone(simulate, tmp_path):
    pb = WINDOW.replace('    cron: "0 9 * * *"', '    cron: "0 9 * * *"\n    timezone: America/New_York')
    out, _ = simulate(pb, [], [], "2026-11-30", 6, tmp_path)
    assert trio(out) == [
        ("2026-12-01T22:00:00+08:00", None, "morning"),  # Dec 1, 09:00 New York
        ("2026-12-02T22:00:00+08:00", None, "morning"),
        ("2026-12-03T22:00:00+08:00", None, "morning"),  # Dec 3, 09:00 New York
    ]
