"""``cmtyflow status`` shows urgent messages waiting (a moderators' page), in text and JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmtyflow.cli import main
from cmtyflow.engine.model import Decision, QueuedMessage
from cmtyflow.store.sqlite import SqliteStore

AT = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def queued(key: str, urgent: bool) -> QueuedMessage:
    return QueuedMessage(
        key=key, playbook="crisis", run="r", flow="page", step="page", occurrence=1, channel="mods",
        adapter="console", member=None, to="channel", text="举报：请版主处理", format="plain", variant=None,
        urgent=urgent, queued_at=AT, deliver_at=AT,
    )


def test_status_counts_the_urgent_messages_waiting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state.db")
    with SqliteStore(state) as store:
        store.apply(Decision(messages=[queued("n1", False), queued("n2", False), queued("u1", True)]))
    assert main(["status", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "outbox: queued 3\n  1 urgent waiting to go (sent before any other)\n" in out
    assert main(["status", "--state", state, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["urgent_waiting"] == 1
    with SqliteStore(state) as store:
        store.claim_due_messages(AT, limit=1)  # the urgent one goes first
    assert main(["status", "--state", state]) == 0
    assert "urgent waiting" not in capsys.readouterr().out
