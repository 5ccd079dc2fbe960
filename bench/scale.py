"""bench/scale: several ``cmtyflow worker`` processes on one PostgreSQL state.

    python bench/scale.py [--waits 5000] [--workers 1,2,4] [--pending 1000000]

1. Throughput: ``--waits`` member runs whose waits are all due (one firing for the
   whole roster, seeded in one transaction), then N worker processes started on the
   state; each wait resumes its run, which posts to a loopback webhook sink in its
   own process. Reported per N: seconds from the workers' start to the last message
   sent, and waits+messages per second (each wait is one engine input and one send).
2. The promote query with ``--pending`` future timers in the table: EXPLAIN ANALYZE
   (it must use the due-time index, ``timers_due``), and fetch latency: the query
   that picks due waits, timed with nothing due and with 1,000 due among them, and
   a whole promotion (pick, defer 10 jobs, mark) rolled back.

Needs initdb/pg_ctl (a throwaway cluster is made in /tmp, as for the tests) and the
test helpers in tests/ (the sink, the cluster, the fleet).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "runtime")]

import pg_server  # noqa: E402
import worker_fleet as wf  # noqa: E402


def _sink_process(conn: multiprocessing.connection.Connection) -> None:
    from loopback_sink import ThreadedSink

    sink = ThreadedSink()
    conn.send(sink.start())
    while True:
        if conn.recv() == "stop":
            break
        _, delivered, duplicates = sink.snapshot()
        conn.send((len(delivered), duplicates))
    sink.stop()


class SinkProcess:
    def __init__(self) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=_sink_process, args=(child,), daemon=True)
        self.proc.start()
        self.url: str = self.conn.recv()

    def delivered(self) -> tuple[int, int]:
        self.conn.send("count")
        return self.conn.recv()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.conn.send("stop")
        self.proc.join(10)


def throughput(cluster: pg_server.Cluster, waits: int, workers: int, folder: Path) -> dict[str, float]:
    url = pg_server.with_schema(cluster.url, f"scale_{workers}_{int(time.time())}")
    sink = SinkProcess()
    try:
        playbook = wf.write_playbook(folder, sink.url)
        wf.seed(url, playbook, waits)
        fleet = wf.Fleet(playbook, url, folder, jobs=4)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        fleet.start(workers)
        try:
            wf.wait_for(lambda: wf.outbox_counts(url)["sent"] == waits, 1800, "every message sent", fleet, poll=0.1)
            took = time.perf_counter() - started
        finally:
            fleet.stop()
        delivered, duplicates = sink.delivered()
        assert delivered == waits, (delivered, waits)
        sent = sorted(t - started_at.timestamp() for t in sent_times(url))
    finally:
        sink.stop()
    return {
        "seconds": took, "per_second": waits / took, "duplicates": duplicates,
        "median_sent": statistics.median(sent), "p90_sent": sent[int(len(sent) * 0.9)],
    }


def sent_times(url: str) -> list[float]:
    """When each message was sent (its ``sent_at``), as POSIX seconds."""
    from cmtyflow.store.codec import dt_parse
    from cmtyflow.store.postgres import PostgresStore

    store = PostgresStore(url, exclusive=False)
    try:
        found = store.conn.execute("SELECT sent_at FROM outbox WHERE status = 'sent'").fetchall()
    finally:
        store.close()
    return [dt_parse(text).timestamp() for (text,) in found]


def promote_plan(cluster: pg_server.Cluster, pending: int) -> None:
    import psycopg

    from cmtyflow.store.pg_shared import PROMOTE_TIMERS, SharedWork
    from cmtyflow.store.postgres import PostgresStore

    url = pg_server.with_schema(cluster.url, f"pending_{int(time.time())}")
    store = PostgresStore(url, exclusive=False)
    try:
        from cmtyflow.store.pg_shared import ensure_queue_schema

        ensure_queue_schema(store)
        conn = store.conn
        t = time.perf_counter()
        with conn.transaction():
            conn.execute(
                "INSERT INTO timers (id, run, due_ts, due, kind, set_at) "
                "SELECT 't' || g, 'r' || g, now() + interval '1 day' + (g %% 2592000) * interval '1 second', "
                "'x', 'wait', 'x' FROM generate_series(1, %s) AS g",
                (pending,),
            )
        conn.execute("ANALYZE timers")
        print(f"inserted {pending:,} future timers in {time.perf_counter() - t:.1f} s")
        now = datetime.now(UTC)
        q = PROMOTE_TIMERS.replace("%(until)s", "{until}").replace("%(limit)s", "{limit}")
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + q.format(until=psycopg.sql.quote(now), limit=10_000)
        ).fetchall()
        print("EXPLAIN ANALYZE of the promote query, nothing due:")
        for (line,) in plan:
            print("   ", line)
        text = "\n".join(line for (line,) in plan)
        print(f"uses the due-time index: {'yes' if 'timers_due' in text else 'NO'}")

        def timed(fn: object, n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()  # type: ignore[operator]
                out.append((time.perf_counter() - t0) * 1000)
            return out

        def pick() -> None:
            with conn.transaction():
                conn.execute(PROMOTE_TIMERS, {"until": datetime.now(UTC), "limit": 10_000}).fetchall()

        idle = timed(pick, 200)
        with conn.transaction():
            conn.execute(
                "INSERT INTO timers (id, run, due_ts, due, kind, set_at) SELECT 'd' || g, 'rd' || g, "
                "now() - interval '1 minute', 'x', 'wait', 'x' FROM generate_series(1, 1000) AS g"
            )
        busy = timed(pick, 50)
        shared = SharedWork(store)

        def promotion() -> None:
            class Undo(Exception):
                pass

            try:
                with conn.transaction():
                    shared.promote_timers(datetime.now(UTC), lambda c, batches, urgent: list(range(1, len(batches) + 1)),
                                          batch=100)
                    raise Undo
            except Undo:
                pass

        whole = timed(promotion, 50)
        for name, xs in (("pick, nothing due", idle), ("pick, 1,000 due", busy), ("promotion of 1,000 (rolled back)", whole)):
            xs.sort()
            print(f"fetch latency, {name}: median {statistics.median(xs):.2f} ms, p95 {xs[int(len(xs) * 0.95)]:.2f} ms")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waits", type=int, default=5000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--pending", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"bench/scale: {args.waits:,} due waits, workers {args.workers}, {args.pending:,} pending timers")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    with pg_server.cluster(max_connections=300) as cluster, tempfile.TemporaryDirectory() as tmp:
        first = None
        for n in [int(x) for x in args.workers.split(",") if x]:
            folder = Path(tmp) / f"w{n}"
            folder.mkdir()
            r = throughput(cluster, args.waits, n, folder)
            first = first or r["per_second"]
            print(f"{n} worker{'s' if n > 1 else ''}: {r['seconds']:.1f} s, {r['per_second']:.0f} waits+messages/s "
                  f"({r['per_second'] / first:.2f}x one worker), messages sent {r['median_sent']:.1f} s after the "
                  f"start (median; 90% by {r['p90_sent']:.1f} s), resends deduplicated at the sink {r['duplicates']:.0f}")
        if args.pending:
            promote_plan(cluster, args.pending)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
