"""What `dry-run` and `run` prepare before the engine runs: the default span."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from runner_harness import write_playbook

from cmtyflow.cli import main
from cmtyflow.runtime.prepare import default_days, load_programs

PLAYBOOK = """
cmtyflow: 1
name: late
timezone: Asia/Shanghai
window: {start: 2026-12-01, days: 2}
channels: {dm: {adapter: console}}
triggers:
  - {id: nightly, cron: "0 21 * * *", timezone: member, for_each: audience, flow: f}
flows:
  f: [{id: r, send: {text: "reminder {{ today }}"}}]
"""


def test_the_default_span_covers_the_windows_last_day_in_every_members_zone(tmp_path, capsys):
    """A New Yorker's reminder at 21:00 on the window's last day is 10:00 the next day in
    Shanghai: the default span (the window's days) ended before it, and it was neither
    listed nor counted as pending."""
    path = write_playbook(tmp_path, PLAYBOOK)
    _, programs = load_programs([path])
    start = datetime(2026, 12, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert default_days(programs, start) == 3
    assert default_days(load_programs([write_playbook(tmp_path / "b", PLAYBOOK.replace(" timezone: member,", ""))])[1], start) == 2
    roster = tmp_path / "m.csv"
    roster.write_text("id,name,timezone\nsh,S,Asia/Shanghai\nny,N,America/New_York\n", encoding="utf-8")
    assert main(["dry-run", str(path), "--roster", str(roster), "--format", "jsonl"]) == 0
    sent = [line for line in capsys.readouterr().out.splitlines() if '"delivery"' in line]
    assert sum('"member": "ny"' in line for line in sent) == 2 and sum('"member": "sh"' in line for line in sent) == 2
