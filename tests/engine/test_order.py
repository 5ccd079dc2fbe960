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


def test_passes_of_one_input_keep_the_same_order(compile_text, tmp_path, monkeypatch):
    # The runner takes a backlog a pass at a time (Driver.process_until's limit): here
    # one row per batch and a pass as short as can be, still in SPEC 5.6 order.
    from datetime import datetime

    from cmtyflow.engine.core import Engine
    from cmtyflow.runtime import driver as driver_module
    from cmtyflow.runtime.driver import Driver
    from cmtyflow.runtime.inputs import parse_event
    from cmtyflow.store.memory import MemoryStore

    monkeypatch.setattr(driver_module, "MAX_BATCH", 1)
    programs = compile_text(ORDER, tmp_path)
    store = MemoryStore()
    store.put_members([{"id": "m", "name": "Mo"}])
    for raw in (
        {"id": "s", "type": "start", "at": "2026-12-01T08:00:00+08:00", "member": "m"},
        {"id": "p1", "type": "ping", "at": "2026-12-01T09:00:00+08:00", "member": "m", "data": {"n": 1}},
        {"id": "p2", "type": "ping", "at": "2026-12-01T09:00:00+08:00", "member": "m", "data": {"n": 2}},
    ):
        store.add_event(parse_event(raw, programs[0].tz))
    drv = Driver(Engine(programs), store)
    drv.process_until(datetime.fromisoformat("2026-12-01T08:00:00+08:00"))
    nine = datetime.fromisoformat("2026-12-01T09:00:00+08:00")
    passes = []
    while handled := drv.process_until(nine, limit=1):
        passes.append(handled)
    # A pass takes a batch of waits, the firings and a batch of events of the instant,
    # each with what it emitted: the timer, cron-a, cron-b and ping 1 (7), then ping 2.
    assert passes == [7, 2]
    assert [r.message.text for r in store.outbox()] == [
        "timer", "heard timer", "cron-a", "heard cron-a", "cron-b", "ping 1", "heard ping 1", "ping 2", "heard ping 2",
    ]
