"""The ``file`` adapter's lines: what was sent, when it was written, and by which playbook."""

from __future__ import annotations

import json
from pathlib import Path

from cmtyflow.adapters.base import OutboundMessage, Recipient
from cmtyflow.adapters.file import FileAdapter, FileSettings


async def test_a_line_says_when_it_was_written_and_which_playbook_sent_it(tmp_path: Path) -> None:
    path = tmp_path / "out" / "sent.jsonl"
    adapter = FileAdapter(FileSettings(path=str(path), fsync=False), "log", clock=lambda: 1_796_112_000.7)
    try:
        receipt = await adapter.send(
            OutboundMessage("k1", "log", "欢迎 阿明", recipient=Recipient("u1"), playbook="onboarding")
        )
        await adapter.send(OutboundMessage("k2", "log", "rules", urgent=True))
    finally:
        await adapter.close()
    first, second = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert first == {
        "key": "k1", "written_at": "2026-12-01T08:00:00+00:00", "playbook": "onboarding", "channel": "log",
        "member": "u1", "format": "plain", "text": "欢迎 阿明", "urgent": False,
    }
    assert (second["playbook"], second["member"], second["urgent"]) == (None, None, True)
    assert receipt.platform_id == "k1"
