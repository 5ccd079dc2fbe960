"""``cmtyflow state prune``: forget what is over and old (docs/semantics.md)."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cmtyflow.cli import main
from cmtyflow.engine.model import Decision, QueuedMessage, Run
from cmtyflow.runtime.runner import StateLock
from cmtyflow.store.sqlite import SqliteStore

OLD = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def queued(key: str, due: datetime) -> QueuedMessage:
    return QueuedMessage(
        key=key, playbook="pb", run="r1", flow="f", step="s", occurrence=1, channel="group", adapter="console",
        member="m1", to="member", text="你好 " * 200, format="plain", variant=None, urgent=False,
        queued_at=due, deliver_at=due,
    )


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A state with 2,000 messages sent on 2026-09-01 and one dead, and a run still active."""
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        store.put_members([{"id": "m1"}])
        active = Run("r-live", "pb", "v1", "f", "m1", "joined", "single", OLD, "UTC", "active")
        store.apply(Decision(runs={"r-live": active}, messages=[queued(f"k{i:04d}", OLD) for i in range(2001)]))
        store.claim_due_messages(OLD + timedelta(hours=1), limit=5000)
        results = [(f"k{i:04d}", "sent", {"sent_at": OLD, "attempts": 1}) for i in range(2000)]
        store.finish_messages([*results, ("k2000", "dead", {"attempts": 1, "last_error": "HTTP 403"})])
    return str(path)


def test_prune_counts_forgets_and_gives_the_space_back(state: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "prune", "--before", "2026-10-01", "--dry-run", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "would forget what was over before 2026-10-01T00:00:00+00:00 in" in out
    assert re.search(r"\n  deliveries +2,000\n", out)
    assert main(["state", "prune", "--before", "2026-10-01", "--dry-run", "--state", state, "--format", "json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    # snake_case names, as every other command's JSON has them
    assert set(counted["counts"]) == {"deliveries", "messages", "runs", "events", "audit", "day_counts"}
    assert counted["dry_run"] is True and counted["counts"]["messages"] == 2000

    assert main(["state", "prune", "--before", "2026-10-01", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "forgot what was over before" in out and re.search(r"\n  messages sent or cancelled +2,000\n", out)
    assert "--vacuum (runner stopped) gives it back to the disk" in out
    size = os.path.getsize(state)
    assert main(["state", "prune", "--before", "30d", "--vacuum", "--state", state, "--format", "json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["counts"]["deliveries"] == 0 and done["bytes_freed"] > 0
    assert os.path.getsize(state) < size
    with SqliteStore(state) as store:
        assert [(r.message.key, r.status) for r in store.outbox()] == [("k2000", "dead")]  # for `cmtyflow outbox`
        assert [r.id for r in store.runs()] == ["r-live"]


@pytest.mark.parametrize(("args", "message"), [
    (["--before", "2h"], "less than a day ago: today's report and the daily cap need today's rows; give 1d or more"),
    (["--before", "soon"], "--before 'soon' is neither an age (e.g. 90d, 12w) nor an ISO 8601 date"),
    (["--before", "9999999d"], "--before: '9999999d' is longer than 3660 days"),
    (["--before", "0001-01-01"], "--before '0001-01-01' is out of range: give a date between 1971 and now"),
    (["--before", "8000-01-01"], "in the future: today's report and the daily cap need today's rows"),
    (["--before", "30d", "--vacuum", "--dry-run"], "--vacuum changes the file; leave it out with --dry-run"),
])
def test_prune_refuses_a_cutoff_it_cannot_take(state: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "prune", *args, "--state", state]) == 1
    assert message in capsys.readouterr().err


def test_prune_vacuum_waits_for_the_runner_to_stop_and_changes_nothing_meanwhile(state: str, capsys: pytest.CaptureFixture[str]) -> None:
    lock = StateLock(state)
    lock.acquire()  # a runner
    try:
        assert main(["state", "prune", "--before", "30d", "--vacuum", "--state", state]) == 1
    finally:
        lock.release()
    assert "a runner is using" in capsys.readouterr().err
    with SqliteStore(state) as store:
        assert store.outbox_counts()["sent"] == 2000
    assert main(["state", "prune", "--before", "30d", "--state", str(Path(state).parent / "none.db")]) == 1
    assert "no state at" in capsys.readouterr().err


def test_prune_reports_progress_and_what_an_interruption_left(
    state: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmtyflow.cli import statecmd

    monkeypatch.setattr(statecmd, "PROGRESS_EVERY", 1000)
    windows = iter(range(3))

    def interrupted_at_the_third_window(self: SqliteStore, took: float) -> None:
        if next(windows, 2) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SqliteStore, "_between_batches", interrupted_at_the_third_window)
    monkeypatch.setattr(SqliteStore, "PRUNE_WINDOW", 1000)
    assert main(["state", "prune", "--before", "2026-10-01", "--state", state]) == 130
    err = capsys.readouterr().err
    assert "... deliveries: 1,000 forgotten so far\n... deliveries: 2,000 forgotten so far\n" in err
    assert ("note: stopped part way (2,000 deliveries, 1,000 messages sent or cancelled); "
            "what was forgotten stays forgotten, and the same command finishes the rest") in err
    with SqliteStore(state) as store:  # the deliveries went first; half of the messages after them
        assert list(store.deliveries()) == [] and len(list(store.outbox())) == 1001
    monkeypatch.undo()
    assert main(["state", "prune", "--before", "2026-10-01", "--state", state]) == 0  # the same command finishes it
    assert re.search(r"\n  deliveries +0\n  messages sent or cancelled +1,000\n", capsys.readouterr().out)
    with SqliteStore(state) as store:
        assert [row.message.key for row in store.outbox()] == ["k2000"]  # the dead one stays
