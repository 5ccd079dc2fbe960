"""Crash tests (SPEC 5.2, 5.3): ``cmtyflow run --once`` in a subprocess, killed with
SIGKILL at random points and at the narrow windows between commits, restarted each
time on a virtual clock, against a loopback webhook sink that honours Idempotency-Key.

The harness is bench/soak.py (``python bench/soak.py`` runs it for 500 cycles); here
it runs until at least 50 runners were killed. What must hold at the end: every
expected message was queued once and, on the webhook, delivered (resends only under
the same key, which the sink deduplicates); every console message is sent (printed
once) or held in doubt (printed at most once) and ``cmtyflow outbox`` lists exactly
the held ones; every member run ended (no wait lost) and the daily cron fired once
per day of the window.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

import soak  # noqa: E402

KILLS = 50


def test_runners_killed_at_random_points_lose_nothing_and_send_nothing_twice(tmp_path: Path) -> None:
    report = soak.soak(tmp_path, cycles=KILLS + 10, members=60, seed=20261201, min_kills=KILLS)
    print(report.summary())
    assert not report.violations, report.summary()
    assert report.killed >= KILLS
    # The kills reached the paths under test: messages in flight on both channels.
    assert report.in_doubt_resent > 0 and report.in_doubt_held > 0
    assert report.held_listed > 0 and sum(report.duplicates.values()) > 0


def test_expected_messages_are_counted_from_the_playbook(tmp_path: Path) -> None:
    scenario = soak.Scenario(cycles=60, members=3, seed=1)
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(scenario.playbook("http://127.0.0.1:9/hook"), encoding="utf-8")
    joins = scenario.joins()
    expected = soak.expected_messages(playbook, joins)
    assert (scenario.days, scenario.rounds) == (3, 3)
    rounds = sorted((j["member"], j["data"]["round"]) for j in joins)
    assert len(rounds) == 10 and ("m001", "2b") in rounds  # one join followed by another, queued
    # Per join: hi, tip x3, last on the webhook; hi-con and last-con on the console.
    # Per window day: one digest on the webhook.
    assert sorted(k[2:] for k in expected if k[:2] == ("m001", "2")) == [
        ("hi", 1), ("hi-con", 1), ("last", 1), ("last-con", 1), ("tip", 1), ("tip", 2), ("tip", 3),
    ]
    assert sorted(k[1] for k in expected if k[0] is None) == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert list(expected.values()).count("hook") == 10 * 5 + 3
    assert list(expected.values()).count("con") == 10 * 2
