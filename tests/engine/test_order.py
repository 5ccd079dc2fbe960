"""SPEC 5.6: inputs due at the same instant are taken in a fixed order: due waits,
then schedule firings (in trigger order), then events (in arrival order); events a
run emits are handled right after the input that emitted them (driver docstring)."""

from __future__ import annotations

ORDER = """
cmtyflow: 1
name: order
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - id: start
    event: start
    flow: waiter
  - id: cron-a
    cron: "0 9 * * *"
    flow: cron_a
  - id: cron-b
    cron: "0 9 * * *"
    flow: cron_b
  - id: ping
    event: ping
    flow: ping
  - id: heard
    event: custom.said
    flow: heard
flows:
  waiter:
    - wait: {until: "09:00"}
    - id: timer
      send: {channel: dm, to: [m], text: "timer"}
    - emit: {event: custom.said, member: "'m'", data: {by: "'timer'"}}
  cron_a:
    - id: cron-a
      send: {channel: dm, to: [m], text: "cron-a"}
    - emit: {event: custom.said, member: "'m'", data: {by: "'cron-a'"}}
  cron_b:
    - id: cron-b
      send: {channel: dm, to: [m], text: "cron-b"}
  ping:
    - id: ping
      send: {channel: dm, text: "ping {{ event.data.n }}"}
    - emit: {event: custom.said, data: {by: "'ping ' ~ event.data.n"}}
  heard:
    - id: heard
      send: {channel: dm, text: "heard {{ event.data.by }}"}
"""


def test_inputs_at_one_instant_in_spec_order_with_emits_right_after(simulate, tmp_path):
    roster = [{"id": "m", "name": "Mo"}]
    events = [
        {"id": "s", "type": "start", "at": "2026-12-01T08:00:00+08:00", "member": "m"},
        {"id": "p1", "type": "ping", "at": "2026-12-01T09:00:00+08:00", "member": "m", "data": {"n": 1}},
        {"id": "p2", "type": "ping", "at": "2026-12-01T09:00:00+08:00", "member": "m", "data": {"n": 2}},
    ]
    out, summary = simulate(ORDER, roster, events, "2026-12-01", 1, tmp_path)
    at_nine = [d["text"] for d in out if d["at"] == "2026-12-01T09:00:00+08:00"]
    assert at_nine == [
        "timer",
        "heard timer",
        "cron-a",
        "heard cron-a",
        "cron-b",
        "ping 1",
        "heard ping 1",
        "ping 2",
        "heard ping 2",
    ]
    assert summary["dropped"] == {}
