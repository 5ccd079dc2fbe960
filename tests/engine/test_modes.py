"""Trigger modes (SPEC 3): a second firing for the same member while a run waits."""

from __future__ import annotations


def trio(deliveries):
    return [(d["at"], d["member"], d["step"]) for d in deliveries]


FLOW = """
cmtyflow: 1
name: modes
timezone: Asia/Shanghai
channels:
  dm: {{adapter: console}}
triggers:
  - id: t
    event: ping
    flow: f
    {mode}
flows:
  f:
    - id: first
      send: {{channel: dm, text: "first {{{{ event.id }}}}"}}
    - wait: 1d
    - id: second
      send: {{channel: dm, text: "second {{{{ event.id }}}}"}}
"""

ROSTER = [{"id": "m", "name": "Mo"}, {"id": "o", "name": "Oz"}]
EVENTS = [
    {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "m"},
    {"id": "e2", "type": "ping", "at": "2026-12-01T12:00:00+08:00", "member": "m"},
    # another member's firing is never affected by m's run
    {"id": "e3", "type": "ping", "at": "2026-12-01T12:00:00+08:00", "member": "o"},
]


def texts(deliveries):
    return [(d["member"], d["text"]) for d in deliveries]


def test_single_drops_and_counts_the_second_firing(simulate, tmp_path):
    for mode in ("", "mode: single"):  # single is the default
        out, summary = simulate(FLOW.format(mode=mode), ROSTER, EVENTS, "2026-12-01", 4, tmp_path / (mode or "default"))
        assert trio(out) == [
            ("2026-12-01T10:00:00+08:00", "m", "first"),
            ("2026-12-01T12:00:00+08:00", "o", "first"),
            ("2026-12-02T10:00:00+08:00", "m", "second"),
            ("2026-12-02T12:00:00+08:00", "o", "second"),
        ]
        assert texts(out)[2] == ("m", "second e1")
        assert summary["dropped"] == {"t": 1}
        assert summary["runs"]["started"] == 2


def test_restart_cancels_the_first_runs_future_steps(simulate, tmp_path):
    out, summary = simulate(FLOW.format(mode="mode: restart"), ROSTER, EVENTS, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "m", "first"),
        ("2026-12-01T12:00:00+08:00", "m", "first"),
        ("2026-12-01T12:00:00+08:00", "o", "first"),
        # e1's `second` never comes
        ("2026-12-02T12:00:00+08:00", "m", "second"),
        ("2026-12-02T12:00:00+08:00", "o", "second"),
    ]
    assert texts(out)[3] == ("m", "second e2")
    assert summary["runs"]["cancelled"] == 1
    assert summary["runs"]["started"] == 3
    assert summary["runs"]["done"] == 2
    assert summary["dropped"] == {}


def test_queued_starts_the_second_run_when_the_first_ends(simulate, tmp_path):
    out, summary = simulate(FLOW.format(mode="mode: queued"), ROSTER, EVENTS, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "m", "first"),
        ("2026-12-01T12:00:00+08:00", "o", "first"),
        ("2026-12-02T10:00:00+08:00", "m", "second"),
        ("2026-12-02T10:00:00+08:00", "m", "first"),  # e2's run, started as e1's ended
        ("2026-12-02T12:00:00+08:00", "o", "second"),
        ("2026-12-03T10:00:00+08:00", "m", "second"),
    ]
    assert [t for mid, t in texts(out) if mid == "m"] == ["first e1", "second e1", "first e2", "second e2"]
    assert summary["queued_behind_active"] == {"t": 1}
    assert summary["runs"]["started"] == 3
    assert summary["runs"]["done"] == 3
    assert summary["runs"]["active_at_end"] == 0


def test_queued_keeps_arrival_order_for_several_waiting_starts(simulate, tmp_path):
    events = [
        {"id": f"e{i}", "type": "ping", "at": f"2026-12-01T1{i}:00:00+08:00", "member": "m"} for i in range(4)
    ]
    out, summary = simulate(FLOW.format(mode="mode: queued"), ROSTER, events, "2026-12-01", 6, tmp_path)
    assert [(d["at"], d["text"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "first e0"),
        ("2026-12-02T10:00:00+08:00", "second e0"),
        ("2026-12-02T10:00:00+08:00", "first e1"),
        ("2026-12-03T10:00:00+08:00", "second e1"),
        ("2026-12-03T10:00:00+08:00", "first e2"),
        ("2026-12-04T10:00:00+08:00", "second e2"),
        ("2026-12-04T10:00:00+08:00", "first e3"),
        ("2026-12-05T10:00:00+08:00", "second e3"),
    ]
    assert summary["queued_behind_active"] == {"t": 3}


def test_parallel_runs_both(simulate, tmp_path):
    out, summary = simulate(FLOW.format(mode="mode: parallel"), ROSTER, EVENTS, "2026-12-01", 4, tmp_path)
    assert trio(out) == [
        ("2026-12-01T10:00:00+08:00", "m", "first"),
        ("2026-12-01T12:00:00+08:00", "m", "first"),
        ("2026-12-01T12:00:00+08:00", "o", "first"),
        ("2026-12-02T10:00:00+08:00", "m", "second"),
        ("2026-12-02T12:00:00+08:00", "m", "second"),
        ("2026-12-02T12:00:00+08:00", "o", "second"),
    ]
    assert [t for mid, t in texts(out) if mid == "m"] == ["first e1", "first e2", "second e1", "second e2"]
    assert summary["runs"]["started"] == 3
    assert summary["dropped"] == {}


def test_single_allows_a_new_run_once_the_first_has_ended(simulate, tmp_path):
    events = [
        {"id": "e1", "type": "ping", "at": "2026-12-01T10:00:00+08:00", "member": "m"},
        {"id": "e2", "type": "ping", "at": "2026-12-02T10:00:00+08:00", "member": "m"},  # same instant e1 ends
        {"id": "e3", "type": "ping", "at": "2026-12-02T10:00:01+08:00", "member": "m"},
    ]
    out, summary = simulate(FLOW.format(mode=""), ROSTER, events, "2026-12-01", 4, tmp_path)
    # SPEC 5.6: the due wait goes before the event at the same instant, so e1's run
    # has ended when e2 arrives; e3 finds e2's run active.
    assert [(d["at"], d["text"]) for d in out] == [
        ("2026-12-01T10:00:00+08:00", "first e1"),
        ("2026-12-02T10:00:00+08:00", "second e1"),
        ("2026-12-02T10:00:00+08:00", "first e2"),
        ("2026-12-03T10:00:00+08:00", "second e2"),
    ]
    assert summary["dropped"] == {"t": 1}
