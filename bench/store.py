"""Benchmark: the SQLite store under a daily firing for a large audience (issue: durable store).

    python bench/store.py [--members 100000] [--batch 1000] [--path DIR]

Three phases on a fresh database file (WAL, synchronous=NORMAL), as the runner drives them:

- apply: one ``Decision`` as a schedule firing for the whole audience makes it: a new
  run per member (with its event context and occurrence counts), a message per member
  and a timer per member (the follow-up wait), plus the members' daily counts, in one
  transaction.
- dispatch: ``claim_due_messages`` in batches, each finished ``sent`` (with sent_at,
  attempts, platform_id, so a delivery row each) by ``finish_messages``.
- timers: ``due_timers`` in batches, each timer consumed by its own ``apply`` (one
  transaction per input, as the driver does), once with an empty decision and once
  with the run moved on (a run upsert per timer).

Figures are wall times and rates; the database file size at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmtyflow.engine.model import Decision, QueuedMessage, Run, Timer, message_key  # noqa: E402
from cmtyflow.store.sqlite import RETURNING, SqliteStore  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
FIRED = datetime(2026, 12, 1, 20, 0, tzinfo=TZ)


def firing_decision(n: int) -> Decision:
    d = Decision()
    due = FIRED + timedelta(days=1)
    day = FIRED.date().isoformat()
    for i in range(n):
        member = f"m{i:06d}"
        rid = f"nightly@{FIRED.isoformat()}:{member}"
        tid = f"{rid}#2"
        d.runs[rid] = Run(
            id=rid, playbook="checkin-challenge", version="v1", flow="remind", member=member, trigger="nightly",
            mode="single", started_at=FIRED, timezone="Asia/Shanghai", pc=2, occurrences={0: 1, 1: 1, 2: 1},
            event=None, waiting={"kind": "timer", "timer": tid, "event": None},
        )
        key = message_key("checkin-challenge", rid, "remind", 1, member)
        d.messages.append(QueuedMessage(
            key=key, playbook="checkin-challenge", run=rid, flow="remind", step="remind", occurrence=1,
            channel="group", adapter="webhook", member=member, to="member", text=f"今晚打卡 {member}: 第 3 天",
            format="plain", variant=None, urgent=False, queued_at=FIRED, deliver_at=FIRED,
        ))
        d.timers.append(Timer(tid, rid, due, "wait", FIRED))
        d.day_counts[(member, day)] = 1
    d.count("runs_started", n)
    return d


def measure(label: str, n: int, started: float) -> float:
    took = time.perf_counter() - started
    print(f"{label:<58} {took:8.2f} s  {n / took:10,.0f} /s")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--path", help="folder for the database (default: a temporary one)")
    args = parser.parse_args()
    n, batch = args.members, args.batch
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version} (RETURNING: {RETURNING}), {platform.machine()}")
    with tempfile.TemporaryDirectory(dir=args.path) as folder:
        path = Path(folder) / "state.db"
        store = SqliteStore(path)
        try:
            store.put_members({"id": f"m{i:06d}", "name": f"Member {i}", "tags": ["reading"]} for i in range(n))
            decision = firing_decision(n)

            started = time.perf_counter()
            store.apply(decision)
            measure(f"apply: {n:,} runs + messages + timers + day counts", n, started)

            started = time.perf_counter()
            sent = 0
            claiming = 0.0
            until = FIRED + timedelta(minutes=1)
            while True:
                mark = time.perf_counter()
                rows = store.claim_due_messages(until, batch)
                claiming += time.perf_counter() - mark
                if not rows:
                    break
                at = FIRED + timedelta(seconds=2)
                store.finish_messages([(r.message.key, "sent", {"sent_at": at, "attempts": 1, "platform_id": f"p{sent + i}"})
                                       for i, r in enumerate(rows)])
                sent += len(rows)
            took = measure(f"dispatch: claim + finish(sent) {sent:,} in batches of {batch}", sent, started)
            print(f"{'  of which claim_due_messages':<58} {claiming:8.2f} s; finish_messages {took - claiming:.2f} s")

            until = FIRED + timedelta(days=2)
            half = n // 2
            started = time.perf_counter()
            consumed = 0
            while consumed < half:
                for t in store.due_timers(until, min(batch, half - consumed)):
                    store.apply(Decision(), consumed_timer=t.id)
                    consumed += 1
            measure(f"timers: due_timers + apply(consumed) x {consumed:,}, empty", consumed, started)

            started = time.perf_counter()
            moved = 0
            while True:
                due = store.due_timers(until, batch)
                if not due:
                    break
                for t in due:
                    run = store.get_run(t.run)
                    assert run is not None
                    run.waiting, run.pc = None, run.pc + 1
                    store.apply(Decision(runs={run.id: run}), consumed_timer=t.id)
                    moved += 1
            measure(f"timers: due_timers + get_run + apply(run, consumed) x {moved:,}", moved, started)
            assert store.next_timer_due() is None
        finally:
            store.close()
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
        print(f"database size (with WAL): {size / 2**20:,.0f} MiB; cpus: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
