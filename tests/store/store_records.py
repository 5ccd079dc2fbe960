"""Small engine records for the store tests: one message, run, timer or event with
sensible defaults, so a test states only what it is about."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cmtyflow.engine.model import Event, EventWait, QueuedMessage, Run, Timer

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=SHANGHAI)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def message(key: str, due: datetime | None = None, **fields: Any) -> QueuedMessage:
    values: dict[str, Any] = {
        "key": key, "playbook": "pb", "run": "r1", "flow": "welcome", "step": "hello", "occurrence": 1,
        "channel": "group", "adapter": "console", "member": "m1", "to": "member", "text": f"hello {key}",
        "format": "plain", "variant": None, "urgent": False, "queued_at": T0, "deliver_at": due or T0,
    }
    values.update(fields)
    return QueuedMessage(**values)


def run(run_id: str, member: str | None = "m1", status: str = "active", **fields: Any) -> Run:
    values: dict[str, Any] = {
        "id": run_id, "playbook": "pb", "version": "v1", "flow": "welcome", "member": member,
        "trigger": "joined", "mode": "single", "started_at": T0, "timezone": "Asia/Shanghai", "status": status,
    }
    values.update(fields)
    return Run(**values)


def timer(timer_id: str, run_id: str, due: datetime, kind: str = "wait") -> Timer:
    return Timer(timer_id, run_id, due, kind, T0)


def event(event_id: str, when: datetime, etype: str = "ping", member: str | None = "m1", **data: Any) -> Event:
    return Event(event_id, etype, when, member, dict(data))


def wait(run_id: str, event_type: str = "reply", member: str | None = "m1", where: str | None = None) -> EventWait:
    return EventWait(run_id, "pb", event_type, member, where)
