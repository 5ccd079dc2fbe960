"""Check-ins and streaks (SPEC 2 state, 4 checkin)."""

from __future__ import annotations

CHECKIN = """
cmtyflow: 1
name: streaks
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: checkin
    event: checkin.posted
    flow: checkin
  - id: status
    event: status.asked
    flow: status
flows:
  checkin:
    - checkin: {}
    - id: reply
      send:
        channel: dm
        text: >-
          dup={{ checkin.duplicate }} streak={{ state.streak }} best={{ state.best_streak }}
          checkins={{ state.checkins }} last={{ state.last_checkin }}
  status:
    - id: status
      send: {channel: dm, text: "streak={{ state.streak }} checkins={{ state.checkins }}"}
"""


def ev(eid: str, etype: str, at: str, member: str = "m") -> dict:
    return {"id": eid, "type": etype, "at": at, "member": member}


def replies(deliveries):
    return [(d["at"], d["step"], d["text"]) for d in deliveries]


def test_streak_continues_across_a_month_boundary(simulate, tmp_path):
    events = [
        ev("c1", "checkin.posted", "2026-11-29T20:00:00+08:00"),
        ev("c2", "checkin.posted", "2026-11-30T23:59:00+08:00"),
        ev("c3", "checkin.posted", "2026-12-01T00:01:00+08:00"),
    ]
    out, _ = simulate(CHECKIN, [{"id": "m", "name": "Mo"}], events, "2026-11-29", 4, tmp_path)
    assert replies(out) == [
        ("2026-11-29T20:00:00+08:00", "reply", "dup=False streak=1 best=1 checkins=1 last=2026-11-29"),
        ("2026-11-30T23:59:00+08:00", "reply", "dup=False streak=2 best=2 checkins=2 last=2026-11-30"),
        ("2026-12-01T00:01:00+08:00", "reply", "dup=False streak=3 best=3 checkins=3 last=2026-12-01"),
    ]


def test_missed_day_resets_the_streak_and_reads_zero_before_checking_in(simulate, tmp_path):
    events = [
        ev("c1", "checkin.posted", "2026-11-30T09:00:00+08:00"),
        ev("c2", "checkin.posted", "2026-12-01T09:00:00+08:00"),
        ev("s1", "status.asked", "2026-12-02T23:00:00+08:00"),  # no check-in today yet: still alive
        # Dec 2 passes without a check-in.
        ev("s2", "status.asked", "2026-12-03T00:00:00+08:00"),
        ev("s3", "status.asked", "2026-12-03T08:00:00+08:00"),
        ev("c3", "checkin.posted", "2026-12-03T09:00:00+08:00"),
        ev("s4", "status.asked", "2026-12-03T10:00:00+08:00"),
    ]
    out, _ = simulate(CHECKIN, [{"id": "m", "name": "Mo"}], events, "2026-11-30", 5, tmp_path)
    assert replies(out) == [
        ("2026-11-30T09:00:00+08:00", "reply", "dup=False streak=1 best=1 checkins=1 last=2026-11-30"),
        ("2026-12-01T09:00:00+08:00", "reply", "dup=False streak=2 best=2 checkins=2 last=2026-12-01"),
        ("2026-12-02T23:00:00+08:00", "status", "streak=2 checkins=2"),
        ("2026-12-03T00:00:00+08:00", "status", "streak=0 checkins=2"),
        ("2026-12-03T08:00:00+08:00", "status", "streak=0 checkins=2"),
        ("2026-12-03T09:00:00+08:00", "reply", "dup=False streak=1 best=2 checkins=3 last=2026-12-03"),
        ("2026-12-03T10:00:00+08:00", "status", "streak=1 checkins=3"),
    ]


def test_duplicate_checkin_the_same_day_changes_nothing(simulate, tmp_path):
    events = [
        ev("c1", "checkin.posted", "2026-12-01T08:00:00+08:00"),
        ev("c2", "checkin.posted", "2026-12-01T21:00:00+08:00"),
        ev("c3", "checkin.posted", "2026-12-01T23:59:59+08:00"),
        ev("c4", "checkin.posted", "2026-12-02T00:00:00+08:00"),
    ]
    out, _ = simulate(CHECKIN, [{"id": "m", "name": "Mo"}], events, "2026-12-01", 2, tmp_path)
    assert replies(out) == [
        ("2026-12-01T08:00:00+08:00", "reply", "dup=False streak=1 best=1 checkins=1 last=2026-12-01"),
        ("2026-12-01T21:00:00+08:00", "reply", "dup=True streak=1 best=1 checkins=1 last=2026-12-01"),
        ("2026-12-01T23:59:59+08:00", "reply", "dup=True streak=1 best=1 checkins=1 last=2026-12-01"),
        ("2026-12-02T00:00:00+08:00", "reply", "dup=False streak=2 best=2 checkins=2 last=2026-12-02"),
    ]


def test_checkin_days_are_the_members_local_days(simulate, tmp_path):
    """23:00 on Nov 30 and 01:00 on Dec 1 in New York are the same day in Shanghai
    (Dec 1) but consecutive days for the member: the streak goes on."""
    roster = [{"id": "ny", "name": "Nia", "timezone": "America/New_York"}]
    events = [
        ev("c1", "checkin.posted", "2026-11-30T23:00:00-05:00", "ny"),  # Dec 1 12:00 Shanghai
        ev("c2", "checkin.posted", "2026-12-01T01:00:00-05:00", "ny"),  # Dec 1 14:00 Shanghai
        ev("c3", "checkin.posted", "2026-12-01T10:00:00-05:00", "ny"),  # Dec 1 23:00 Shanghai
    ]
    out, _ = simulate(CHECKIN, roster, events, "2026-11-30", 4, tmp_path)
    assert replies(out) == [
        ("2026-12-01T12:00:00+08:00", "reply", "dup=False streak=1 best=1 checkins=1 last=2026-11-30"),
        ("2026-12-01T14:00:00+08:00", "reply", "dup=False streak=2 best=2 checkins=2 last=2026-12-01"),
        ("2026-12-01T23:00:00+08:00", "reply", "dup=True streak=2 best=2 checkins=2 last=2026-12-01"),
    ]


def test_streaks_are_per_member(simulate, tmp_path):
    roster = [{"id": "a", "name": "Ana"}, {"id": "b", "name": "Bo"}]
    events = [
        ev("a1", "checkin.posted", "2026-12-01T09:00:00+08:00", "a"),
        ev("a2", "checkin.posted", "2026-12-02T09:00:00+08:00", "a"),
        ev("b1", "checkin.posted", "2026-12-02T09:00:00+08:00", "b"),
    ]
    out, _ = simulate(CHECKIN, roster, events, "2026-12-01", 3, tmp_path)
    assert [(d["member"], d["text"]) for d in out] == [
        ("a", "dup=False streak=1 best=1 checkins=1 last=2026-12-01"),
        ("a", "dup=False streak=2 best=2 checkins=2 last=2026-12-02"),
        ("b", "dup=False streak=1 best=1 checkins=1 last=2026-12-02"),
    ]
