"""`cmtyflow state migrate FROM TO`: an SQLite store in use (pending timers, queued,
failed, dead and in-doubt outbox rows, events seen and pending, schedules, audit)
copied into PostgreSQL equals its source table by table through the Store API, and a
driver started on the copy at the cut-over instant fires nothing twice; then both go
on alike. Refusals: a non-empty target, a runner holding the lock, wrong arguments."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.cli import main
from cmtyflow.engine.core import Engine
from cmtyflow.engine.model import Event
from cmtyflow.runtime.driver import Driver
from cmtyflow.runtime.prepare import load_programs
from cmtyflow.runtime.runner import StateLock
from cmtyflow.store.base import Store
from cmtyflow.store.sqlite import SqliteStore

pytest.importorskip("psycopg")

from cmtyflow.store.postgres import PostgresStore  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 12, 1, 20, 0, tzinfo=TZ)
CUT = datetime(2026, 12, 1, 21, 30, tzinfo=TZ)  # the nightly fired at 21:00; the joins' waits are pending

PLAYBOOK = """
cmtyflow: 1
name: cut
timezone: Asia/Shanghai
policies: {max_per_member_per_day: 3}
channels:
  group: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: hello}
  - {id: nightly, cron: "0 21 * * *", timezone: member, for_each: audience, flow: nightly}
flows:
  hello:
    - {id: hi, send: {channel: group, text: "hi {{ member.name }}"}}
    - {wait: {event: message.posted, timeout: 2d}}
    - {id: again, if: wait.timed_out, send: {channel: group, text: "still here, {{ member.name }}?"}}
    - {id: thanks, if: "not wait.timed_out", send: {channel: group, text: "thanks for posting"}}
  nightly:
    - {id: post, send: {channel: group, text: "good night from {{ now.strftime('%H:%M %Z') }}"}}
    - {set: {nights: "state.get('nights', 0) + 1"}}
"""
ROSTER = [
    {"id": "u1", "name": "阿明"}, {"id": "u2", "name": "Bea", "timezone": "Europe/Berlin"},
    {"id": "u3", "name": "Cy", "tags": ["x"]},
]


def joined(member: str, at: datetime) -> Event:
    return Event(f"join-{member}", "member.joined", at, member, {})


def driver(programs: list[Any], store: Store) -> Driver:
    return Driver(Engine(programs), store)


@pytest.fixture
def programs(tmp_path: Path) -> list[Any]:
    path = tmp_path / "pb" / "cut.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(PLAYBOOK).lstrip(), encoding="utf-8")
    _, loaded = load_programs([path])
    return loaded


@pytest.fixture
def source(tmp_path: Path, programs: list[Any]) -> Iterator[Path]:
    """An SQLite state as a runner stopped at CUT leaves it."""
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        store.put_members(ROSTER)
        store.record(T0, "runner_started", pid=1)
        running = driver(programs, store)
        running.process_until(T0)  # started at T0: the nightly is due at 21:00 in each zone
        store.add_events([joined("u1", T0), joined("u2", T0 + timedelta(minutes=5)), joined("u3", T0)])
        assert running.process_until(CUT) == 4  # the three joins; the nightly in Shanghai (u1, u3)
        store.add_events([joined("u1", T0), Event("later", "message.posted", CUT + timedelta(hours=1), "u1", {"text": "hi"})])
        rows = store.claim_due_messages(CUT)
        assert len(rows) >= 5
        keys = [r.message.key for r in rows]
        store.finish_messages([
            (keys[0], "sent", {"sent_at": CUT, "attempts": 1, "platform_id": "p0"}),
            (keys[1], "failed", {"attempts": 1, "next_attempt": CUT + timedelta(minutes=5), "last_error": "503"}),
            (keys[2], "dead", {"attempts": 5, "last_error": "gone"}),
            (keys[3], "queued", {}),
        ])
        assert len(store.mark_in_doubt()) == len(keys) - 4
        store.record(CUT, "runner_stopped", inputs=6)
        assert store.outbox_counts()["queued"] >= 1
    yield path


def migrate(source: Path, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["state", "migrate", str(source), url])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(store: Store) -> dict[str, Any]:
    """Everything the Store API shows, with datetimes by repr (their zones too)."""
    members = list(store.iter_members())
    ids = [m["id"] for m in members]
    return {k: repr(v) for k, v in {
        "members": members, "zones": sorted(store.member_timezones()), "count": store.member_count(),
        "runs": list(store.runs(status=None)), "active": [store.active_runs("cut", "hello", m) for m in ids],
        "states": list(store.states("cut")), "timers": store.upcoming_timers(1000), "next_timer": store.next_timer_due(),
        "waits": [list(store.event_waits("message.posted", m)) for m in [*ids, None]],
        "day_counts": [store.day_count(m, d) for m in ids for d in ("2026-12-01", "2026-12-02")],
        "schedules": store.schedule_positions(), "outbox": list(store.outbox()), "counts": store.outbox_counts(),
        "next_message": store.next_message_due(), "deliveries": list(store.deliveries()),
        "events": store.pending_events(CUT + timedelta(days=30)), "next_event": store.next_event_at(),
        "counters": store.counters(), "notes": store.notes(), "audit": store.audit(), "goals": store.goal_stats(),
        "queued_starts": [store.queued_starts("cut", f, m) for f in ("hello", "nightly") for m in [*ids, None]],
    }.items()}


def test_migrate_copies_everything_and_nothing_fires_twice(
    source: Path, pg_url: str, programs: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = migrate(source, pg_url, capsys)
    assert (code, err) == (0, "")
    lines = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert (lines["members"], lines["runs"], lines["timers"], lines["waits"], lines["schedules"]) == ("3", "3", "3", "3", "2")
    assert (lines["events"], lines["outbox"], lines["deliveries"], lines["audit"]) == ("4", "5", "1", "3")
    assert int(lines["day_counts"]) > 0
    assert "copied" in out and "schema test_" in out

    with SqliteStore(source) as old, PostgresStore(pg_url) as new:
        before = snapshot(old)
        assert snapshot(new) == before
        assert {row.status for row in new.outbox()} == {"sent", "failed", "dead", "queued", "in_doubt"}
        # The cut-over: started at the same instant, the copy takes nothing again.
        assert driver(programs, new).process_until(CUT) == 0
        assert snapshot(new) == before
        assert new.add_events([joined("u1", T0), joined("u2", T0)]) == (0, 2)  # seen before the move
        # What is due to send is the same: the row put back to the queue, once.
        claimed = [r.message.key for r in new.claim_due_messages(CUT)]
        assert claimed == [r.message.key for r in old.claim_due_messages(CUT)] and len(claimed) == 1
        assert new.claim_due_messages(CUT) == []
        # Both go on alike: the waits resume, the nightly fires again in each zone, the later event is taken.
        later = CUT + timedelta(days=2, hours=1)
        assert driver(programs, old).process_until(later) == driver(programs, new).process_until(later) > 0
        old.add_events([joined("u1", T0), joined("u2", T0)])  # the same duplicates as the copy saw
        assert snapshot(new) == snapshot(old)


def test_a_target_with_state_is_refused_and_left_alone(
    source: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with PostgresStore(pg_url) as store:
        store.put_members([{"id": "someone"}])
    code, out, err = migrate(source, pg_url, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: postgresql://") and "already holds cmtyflow state (1 members)" in err
    with PostgresStore(pg_url) as store:
        assert [m["id"] for m in store.iter_members()] == ["someone"] and list(store.runs(status=None)) == []
    assert migrate(source, pg_url, capsys)[0] == 1  # and again: still refused


def test_a_second_migration_into_the_same_schema_is_refused(
    source: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate(source, pg_url, capsys)[0] == 0
    code, _, err = migrate(source, pg_url, capsys)
    assert code == 1 and "already holds cmtyflow state (3 members, " in err


def test_a_running_runner_is_refused(source: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    lock = StateLock(source)
    lock.acquire()
    try:
        code, out, err = migrate(source, pg_url, capsys)
    finally:
        lock.release()
    assert code == 1 and out == ""
    assert err.startswith(f"error: a runner is using {source} (pid ") and "stop it before migrating" in err
    with PostgresStore(pg_url) as store:
        assert store.member_count() == 0


def test_wrong_arguments(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = migrate(tmp_path / "nothing.db", "postgresql://u:pw1234@h/db", capsys)
    assert code == 1 and "no state at" in err and not (tmp_path / "nothing.db").exists()
    code, _, err = migrate(source, str(tmp_path / "other.db"), capsys)
    assert code == 1 and "TO must be a postgresql:// URL" in err
    code, _, err = main(["state", "migrate", "postgresql://u:pw1234@h/db", "postgresql://h/x"]), *capsys.readouterr()
    assert code == 1 and "FROM must be an SQLite state file" in err and "pw1234" not in err


def test_a_server_that_is_down_is_named_without_the_password(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = migrate(source, f"postgresql://cf:pw-9876@127.0.0.1:{port}/db", capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: postgresql://cf:***@127.0.0.1:{port}/db: cannot connect to PostgreSQL:")
    assert "pw-9876" not in err
