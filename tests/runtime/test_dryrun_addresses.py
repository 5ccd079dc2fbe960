"""The dry run dead-letters what the run would (runtime/dryrun.py): a message to a
member without the address their channel's adapter sends to (an email channel and no
``email`` column) was counted as delivered, and the run dead-lettered it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from runner_harness import UTC, event, write_playbook

from cmtyflow.runtime.dryrun import DryRun
from cmtyflow.runtime.prepare import load_programs

PLAYBOOK = """
cmtyflow: 1
name: mail
timezone: UTC
channels:
  mail: {adapter: email, host: smtp.example.org, from_address: club@example.org}
  hook: {adapter: slack, webhook_url: "${env:SLACK_HOOK}"}
triggers:
  - {id: joined, event: member.joined, flow: hi}
flows:
  hi:
    - {id: welcome, send: {channel: mail, text: "Welcome {{ member.name }}"}}
    - {id: posted, send: {channel: hook, text: "{{ member.name }} joined"}}
"""


def test_a_member_without_the_channels_address_is_dead_lettered_not_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_HOOK", "https://hooks.example.org/x")
    _, programs = load_programs([write_playbook(tmp_path, PLAYBOOK)])
    out: list[dict[str, Any]] = []
    sim = DryRun(programs, start=datetime(2026, 12, 1, tzinfo=UTC), days=1, sink=out.append)
    sim.load_roster([{"id": "a", "name": "Ann", "email": "ann@example.org"}, {"id": "b", "name": "Bo"}])
    sim.load_events([event({"id": f"j-{m}", "type": "member.joined", "member": m, "at": "2026-12-01T10:00:00+00:00"})
                     for m in ("a", "b")])
    sim.run()
    # Bo's email is dead-lettered; the webhook posts in its channel whoever it names.
    assert sorted((d["step"], d["member"]) for d in out) == [("posted", "a"), ("posted", "b"), ("welcome", "a")]
    summary = sim.summary()
    assert summary["deliveries"] == 3
    assert ("1 message would be dead-lettered, not sent: the member has no address for the channel "
            "(first: member b has no email, channel 'mail'); add the column to the roster") in summary["warnings"]
