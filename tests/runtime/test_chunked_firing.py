"""A firing over the audience is handled FIRING_CHUNK members at a time, each chunk in
its own transaction with the firing's place (runtime/driver.py): memory stays bounded,
the runner lets go between chunks (a signal, the intake, a send pass), and a stop or a
crash goes on from the place kept, with nobody reached twice or left out."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runner_harness import UTC, write_playbook

from cmtyflow.engine.core import Engine
from cmtyflow.runtime import driver as driver_module
from cmtyflow.runtime.driver import Driver
from cmtyflow.runtime.prepare import load_programs
from cmtyflow.store.memory import MemoryStore
from cmtyflow.store.sqlite import SqliteStore

AT = datetime(2026, 12, 24, 12, 0, tzinfo=UTC)

PLAYBOOK = """
cmtyflow: 1
name: blast
timezone: UTC
channels:
  dm: {adapter: console}
audience: {where: "'in' in member.tags"}
policies: {catch_up: {grace: 1h}}
triggers:
  - {id: xmas, at: "2026-12-24T12:00", for_each: audience, flow: hi}
flows:
  hi:
    - award: {points: 5}
    - {id: hi, send: {channel: dm, text: "hi {{ member.name }}"}}
"""

ROSTER = [{"id": f"m{i:02d}", "name": f"M{i}", "tags": ["in"] if i != 4 else ["out"]} for i in range(10)]


def _driver(path: Path, store: Any) -> Driver:
    _, programs = load_programs([path])
    return Driver(Engine(programs), store)


def _sent(store: Any) -> list[str]:
    return sorted(row.message.text for row in store.outbox())


@pytest.fixture
def chunk_of_three(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "FIRING_CHUNK", 3)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_firing_in_chunks_reaches_the_audience_once_each(tmp_path, chunk_of_three, kind):
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    store.put_members(ROSTER)
    driver = _driver(path, store)
    driver.process_until(AT - timedelta(minutes=1))  # schedules get their first due time
    assert driver.process_until(AT) == 1  # one firing, in 4 chunks (10 members, one outside)
    assert not driver.firing_under_way
    assert _sent(store) == sorted(f"hi M{i}" for i in range(10) if i != 4)
    assert store.counters()["runs_started"] == 9 and store.counters()["outside_audience"] == 1
    assert store.firing_progress() == {}
    assert store.schedule_positions()[next(iter(store.schedule_positions()))] is None  # the `at` fired
    store.close()


def test_with_a_limit_the_driver_lets_go_after_each_chunk(tmp_path, chunk_of_three):
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    store = SqliteStore(tmp_path / "s.db")
    store.put_members(ROSTER)
    driver = _driver(path, store)
    driver.process_until(AT - timedelta(minutes=1))
    chunks = []
    while True:
        driver.process_until(AT, limit=250)
        chunks.append(len(_sent(store)))
        if not driver.firing_under_way:
            break
    assert chunks == [3, 5, 8, 9]  # m04 is outside the audience
    store.close()


def _stopped_after_two_chunks(tmp_path, path):  # type: ignore[no-untyped-def]
    state = tmp_path / "s.db"
    store = SqliteStore(state)
    store.put_members(ROSTER)
    first = _driver(path, store)
    first.process_until(AT - timedelta(minutes=1))
    first.process_until(AT, limit=250)
    first.process_until(AT, limit=250)
    assert first.firing_under_way and len(_sent(store)) == 5
    store.close()
    return state


def test_a_restart_between_chunks_goes_on_from_the_place_kept(tmp_path, chunk_of_three):
    """A stop (or a crash) after two chunks: the next runner, within the grace, finishes
    the firing, and no member is reached twice (points awarded once, counters once)."""
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    again = SqliteStore(_stopped_after_two_chunks(tmp_path, path))
    ((key, (due, after, started, last)),) = again.firing_progress().items()
    assert (due, after, started, last) == (AT, 6, AT, AT)  # the roster's places: m00..m05 done (m04 outside)
    assert _driver(path, again).process_until(AT + timedelta(minutes=30)) == 1
    assert _sent(again) == sorted(f"hi M{i}" for i in range(10) if i != 4)
    assert again.counters()["runs_started"] == 9
    assert all(again.get_state("blast", f"m{i:02d}")["points"] == 5 for i in range(10) if i != 4)
    assert again.firing_progress() == {} and "skipped_firings" not in again.counters()
    again.close()


def test_a_firing_taken_up_again_past_its_grace_skips_the_rest_and_says_so(tmp_path, chunk_of_three):
    """SPEC 5.3: a firing older than the grace is skipped and reported, the rest of one
    stopped part way too (a reminder for the 24th went out on the 27th)."""
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    again = SqliteStore(_stopped_after_two_chunks(tmp_path, path))
    assert _driver(path, again).process_until(AT + timedelta(minutes=90)) == 1
    assert len(_sent(again)) == 5 and again.firing_progress() == {}
    assert again.counters()["skipped_firings"] == 1
    (note,) = again.audit(["skipped_firing"])
    assert note["after"] == 6 and "the members after that place were not reached" in note["reason"]
    again.close()


def test_a_firing_whose_schedule_was_edited_while_under_way_is_said_and_kept_for_an_undo(tmp_path, chunk_of_three):
    """The rest of its audience is not reached by it: said once. Its place is kept, so
    that undoing the edit goes on with it (it started again from the first member, and
    the first ones were awarded their points twice)."""
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    again = SqliteStore(_stopped_after_two_chunks(tmp_path, path))
    path.write_text(PLAYBOOK.replace('at: "2026-12-24T12:00"', 'at: "2026-12-24T12:30"'), encoding="utf-8")
    edited = _driver(path, again)
    edited.process_until(AT + timedelta(minutes=10))
    edited.init_schedules(AT + timedelta(minutes=11))
    (note,) = again.audit(["firing_abandoned"])  # once
    assert note["after"] == 6 and "its schedule was edited while it was under way" in note["reason"]
    path.write_text(PLAYBOOK, encoding="utf-8")  # undone
    _driver(path, again).process_until(AT + timedelta(minutes=12))
    assert _sent(again) == sorted(f"hi M{i}" for i in range(10) if i != 4)
    assert all(again.get_state("blast", f"m{i:02d}")["points"] == 5 for i in range(10) if i != 4)
    again.close()


def test_a_firing_longer_than_its_grace_is_not_cut_short(tmp_path, chunk_of_three):
    """The grace counts from when the firing was taken, not from its due time: a firing
    still going after the grace (a large one, or one taken late) goes on to its end."""
    path = write_playbook(tmp_path / "pb", PLAYBOOK.replace("grace: 1h", "grace: 1m"))
    store = SqliteStore(tmp_path / "s.db")
    store.put_members(ROSTER)
    driver = _driver(path, store)
    driver.process_until(AT - timedelta(minutes=1))
    now = AT + timedelta(seconds=50)  # taken late, near the end of its grace
    while True:
        driver.process_until(now, limit=250)
        if not driver.firing_under_way:
            break
        now += timedelta(seconds=40)
        driver = _driver(path, store)  # a new driver each chunk, as a worker's tick has
    assert len(_sent(store)) == 9 and "skipped_firings" not in store.counters()
    store.close()


def test_every_chunk_is_planned_from_when_the_firing_was_taken(tmp_path, chunk_of_three):
    """As in the dry run: a firing taken at 21:59:50 just before quiet hours at 22:00 sends
    to all its members at once, however long its chunks take."""
    spec = PLAYBOOK.replace("policies: {catch_up: {grace: 1h}}", 'policies: {catch_up: {grace: 1h}, quiet_hours: {start: "22:00", end: "08:00"}}')
    spec = spec.replace('at: "2026-12-24T12:00"', 'at: "2026-12-24T21:59:50"')
    path = write_playbook(tmp_path / "pb", spec)
    store = SqliteStore(tmp_path / "s.db")
    store.put_members(ROSTER)
    driver = _driver(path, store)
    fire = datetime(2026, 12, 24, 21, 59, 50, tzinfo=UTC)
    driver.process_until(fire - timedelta(minutes=1))
    now = fire
    while True:
        driver.process_until(now, limit=250)
        if not driver.firing_under_way:
            break
        now += timedelta(seconds=5)  # the clock moves on between chunks
        driver = _driver(path, store)  # and a worker's tick has a new driver each time
    assert {row.message.deliver_at for row in store.outbox()} == {fire}
    store.close()


def test_status_says_which_firing_is_under_way_and_how_far(tmp_path, chunk_of_three, capsys):
    import json

    from cmtyflow.cli import main

    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    state = _stopped_after_two_chunks(tmp_path, path)
    assert main(["status", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "firing under way: blast/xmas due 2026-12-24T12:00:00+00:00, members up to place 6 reached" in out
    assert main(["status", "--state", str(state), "--format", "json"]) == 0
    (firing,) = json.loads(capsys.readouterr().out)["firings_under_way"]
    assert (firing["playbook"], firing["trigger"], firing["after"]) == ("blast", "xmas", 6)


async def test_the_runner_logs_a_firing_once_a_pass_not_once_a_chunk(tmp_path, chunk_of_three, monkeypatch, harness):
    """A million members were a thousand "runs started" lines: the chunks add up, one
    line a pass while the firing is under way and one when it completes. Stopped part
    way, the last line says the next run goes on with it."""
    from cmtyflow.runtime import runner as runner_module

    monkeypatch.setattr(runner_module, "PASS_INPUTS", 6)  # a pass takes two chunks
    monkeypatch.setattr(runner_module, "LOG_FIRING_EVERY", 5)  # a line for five runs or more
    path = write_playbook(tmp_path / "pb", PLAYBOOK)
    lines: list[tuple[str, dict[str, Any]]] = []
    h = harness([path], AT - timedelta(minutes=1), log=lambda kind, **fields: lines.append((kind, fields)))
    runner = await h.open()
    assert h.store is not None
    h.store.put_members(ROSTER)
    await runner.tick()
    h.clock.set(AT)
    await runner.tick()
    assert runner.driver.firing_under_way
    assert "part way: the next run goes on with it" in runner.summary("stopped")
    await runner.tick()
    started = [fields for kind, fields in lines if kind == "runs_started"]
    assert started == [{"count": 5, "firing": "under way"}, {"count": 4}]  # m04 is outside the audience
    assert runner.summary("done").startswith("done: 1 inputs handled, 9 runs started, 9 sent,")
    await h.close()
