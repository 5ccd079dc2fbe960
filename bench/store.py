"""Benchmark: the durable store under a daily firing for a large audience (issue: durable store).

    python bench/store.py [--members 100000] [--batch 1000] [--path DIR]
    python bench/store.py --postgres postgresql://user@host/db [--members 100000]

Three phases on a fresh database file (WAL, synchronous=NORMAL), or with ``--postgres``
on a fresh schema of that database (``bench_<pid>``, dropped at the end), as the
runner drives them:

- apply: one ``Decision`` as a schedule firing for the whole audience makes it: a new
  run per member (with its event context and occurrence counts), a message per member
  and a timer per member (the follow-up wait), plus the members' daily counts, in one
  transaction.
- dispatch: ``claim_due_messages`` in batches, each finished ``sent`` (with sent_at,
  attempts, platform_id, so a delivery row each) by ``finish_messages``.
- timers: ``due_timers`` in batches, each timer consumed by its own ``apply`` (one
  transaction per input, as the driver does), once with an empty decision and once
  with the run moved on (a run upsert per timer).

Figures are wall times and rates; the database file size (SQLite) or the schema's
size on disk (PostgreSQL) at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmtyflow.engine.model import Decision, QueuedMessage, Run, Timer, message_key  # noqa: E402
from cmtyflow.store.base import Store  # noqa: E402
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


@contextmanager
def sqlite_store(folder: str | None) -> Iterator[Store]:
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version} (RETURNING: {RETURNING}), {platform.machine()}")
    with tempfile.TemporaryDirectory(dir=folder) as where:
        store = SqliteStore(Path(where) / "state.db")
        try:
            yield store
        finally:
            store.close()
            size = sum(p.stat().st_size for p in Path(where).iterdir())
            print(f"database size (with WAL): {size / 2**20:,.0f} MiB; cpus: {os.cpu_count()}")


@contextmanager
def postgres_store(url: str) -> Iterator[Store]:
    import psycopg

    from cmtyflow.store.pg_connect import split_schema
    from cmtyflow.store.postgres import PostgresStore

    schema = f"bench_{os.getpid()}"
    store = PostgresStore(url, schema=schema)
    server = store.conn.execute("SHOW server_version").fetchone()[0]
    settings = dict(store.conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers')"
    ).fetchall())
    print(f"python {platform.python_version()}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), "
          f"PostgreSQL {server} {settings}, {platform.machine()}")
    try:
        yield store
    finally:
        size = store.conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (schema,)
        ).fetchone()[0]
        store.close()
        with psycopg.connect(split_schema(url)[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        print(f"schema size (tables and indexes): {size / 2**20:,.0f} MiB; cpus: {os.cpu_count()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--path", help="folder for the database (default: a temporary one)")
    parser.add_argument("--postgres", metavar="URL", help="run on a PostgreSQL database instead of an SQLite file")
    args = parser.parse_args()
    n, batch = args.members, args.batch
    opened = postgres_store(args.postgres) if args.postgres else sqlite_store(args.path)
    with opened as store:
        started = time.perf_counter()
        store.put_members({"id": f"m{i:06d}", "name": f"Member {i}", "tags": ["reading"]} for i in range(n))
        measure(f"put_members: {n:,} (one transaction)", n, started)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
