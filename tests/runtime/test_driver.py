"""The driver commits the inputs' transactions a group at a time on a store that can
(``SqliteStore.grouped``, runtime/driver.py): each input's writes with what it
consumed, a group of them per commit; a fault part way keeps the inputs handled before
it and replays the rest."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runner_harness import UTC, event, write_playbook

from cmtyflow.engine.core import Engine
from cmtyflow.runtime import driver as driver_module
from cmtyflow.runtime.driver import Driver
from cmtyflow.runtime.prepare import load_programs
from cmtyflow.store.sqlite import SqliteStore

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

PLAYBOOK = """
cmtyflow: 1
name: hello
timezone: UTC
channels:
  dm: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: hi}
flows:
  hi:
    - {id: hi, send: {channel: dm, text: "hi {{ member.id }}"}}
    - wait: 1d
    - {id: later, send: {channel: dm, text: "again {{ member.id }}"}}
"""


def _joined(tmp_path: Path, n: int) -> tuple[SqliteStore, Driver]:
    _, programs = load_programs([write_playbook(tmp_path / "pb", PLAYBOOK)])
    store = SqliteStore(tmp_path / "s.db")
    store.put_members([{"id": f"m{i:03d}"} for i in range(n)])
    store.add_events(event({"id": f"j{i}", "type": "member.joined", "member": f"m{i:03d}", "at": AT.isoformat()}) for i in range(n))
    return store, Driver(Engine(programs), store)


def _commits(store: SqliteStore) -> list[str]:
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def test_inputs_are_committed_a_group_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "GROUP_SECONDS", 3600.0)
    store, driver = _joined(tmp_path, 60)
    commits = _commits(store)
    monkeypatch.setattr(driver_module, "GROUP_WRITES", 25)
    assert driver.process_until(AT) == 60
    assert len(commits) == 3  # 25, 25 and the last 10 (a commit per input made 60)
    assert store.outbox_counts()["queued"] == 60
    commits.clear()
    assert driver.process_until(AT + timedelta(days=1)) == 60  # the 60 waits
    assert len(commits) == 3
    assert store.outbox_counts()["queued"] == 120
    store.close()


def test_a_fault_part_way_keeps_the_inputs_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "GROUP_SECONDS", 3600.0)
    store, driver = _joined(tmp_path, 30)
    applied = 0
    real_apply = store.apply

    def failing_apply(decision: Any, **consumed: Any) -> None:
        nonlocal applied
        applied += 1
        if applied == 8:  # the disk filled up, say, in the eighth input's transaction
            raise OSError("disk full")
        real_apply(decision, **consumed)

    monkeypatch.setattr(store, "apply", failing_apply)
    with pytest.raises(OSError):
        driver.process_until(AT)
    store.close()
    # A restart: the seven inputs handled before the fault were committed with the
    # group; the rest are still pending, and are handled once each.
    again = SqliteStore(tmp_path / "s.db")
    assert again.outbox_counts()["queued"] == 7
    assert len(list(again.pending_events(AT, 100))) == 23
    _, programs = load_programs([tmp_path / "pb" / "pb.yaml"])
    assert Driver(Engine(programs), again).process_until(AT) == 23
    texts = sorted(row.message.text for row in again.outbox())
    assert texts == sorted(f"hi m{i:03d}" for i in range(30))
    again.close()
