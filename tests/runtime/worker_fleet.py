"""A fleet of ``cmtyflow worker`` processes on a throwaway PostgreSQL state, for the
worker tests and bench/scale.py: a playbook whose member runs wait, then post to a
loopback webhook; ``seed`` leaves N waits due (one firing for the whole roster, applied
in one transaction, its waits due a while ago); ``Fleet`` starts and kills workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PLAYBOOK = """\
cmtyflow: 1
name: fleet
timezone: UTC
channels:
  hook: {adapter: webhook, url: "@URL@"}
policies:
  retry: {attempts: 100, max_delay: 5s}
triggers:
  - {id: nightly, cron: "0 3 1 1 *", flow: nudge, for_each: audience}
flows:
  nudge:
    - wait: 1m
    - {id: hi, send: {channel: hook, text: "hi {{ member.id }}"}}
"""


def write_playbook(folder: Path, sink_url: str) -> Path:
    path = folder / "fleet.yaml"
    path.write_text(PLAYBOOK.replace("@URL@", sink_url), encoding="utf-8")
    return path


def seed(url: str, playbook: Path, members: int, *, ago: timedelta = timedelta(minutes=10)) -> datetime:
    """``members`` members, each with a run waiting on a timer due ``ago - 1m`` ago;
    returns the firing's time."""
    from cmtyflow.engine.core import Engine
    from cmtyflow.engine.model import Firing
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.store.postgres import PostgresStore

    _, programs = load_programs([playbook])
    store = PostgresStore(url, exclusive=False)
    try:
        store.put_members({"id": f"m{i:06d}", "timezone": "UTC"} for i in range(members))
        at = datetime.now(UTC).replace(microsecond=0) - ago
        decision = Engine(programs).handle(store, at, Firing("fleet", "nightly", at))
        store.apply(decision)
    finally:
        store.close()
    return at


def expected_texts(members: int) -> set[str]:
    return {f"hi m{i:06d}" for i in range(members)}


class Fleet:
    def __init__(self, playbook: Path, url: str, folder: Path, *, jobs: int = 4) -> None:
        self.playbook = playbook
        self.url = url
        self.folder = folder
        self.jobs = jobs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for _ in range(n):
            i = len(self.procs)
            log = open(self.folder / f"worker{i}.log", "wb")  # noqa: SIM115 - the process writes it
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "cmtyflow", "worker", str(self.playbook), "--state", self.url,
                 "--jobs", str(self.jobs), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            ))
            log.close()

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(10)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                codes.append(None)
        return codes

    def log_lines(self, i: int) -> list[str]:
        return (self.folder / f"worker{i}.log").read_text(errors="replace").splitlines()

    def logged(self, event: str) -> int:
        """How many times any worker logged ``event`` (``--log-format json`` lines)."""
        mark = f'"event": "{event}"'
        return sum(mark in line for i in range(len(self.procs)) for line in self.log_lines(i))

    def logs(self) -> str:
        """What the workers logged besides each message sent (for failure messages)."""
        return "\n".join(
            f"--- worker{i}\n" + "\n".join(x for x in self.log_lines(i) if '"event": "sent"' not in x)[-4000:]
            for i in range(len(self.procs))
        )


def wait_for(
    check: Callable[[], Any], timeout: float, what: str | Callable[[], str], fleet: Fleet | None = None, poll: float = 0.2
) -> Any:
    """``what`` may be a function, to say at the time out what is still missing."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {said}" + (f"\n{fleet.logs()}" if fleet else ""))
        time.sleep(poll)


def outbox_counts(url: str) -> dict[str, int]:
    from cmtyflow.store.postgres import PostgresStore

    store = PostgresStore(url, exclusive=False)
    try:
        return store.outbox_counts()
    finally:
        store.close()


def invariants(url: str) -> dict[str, int]:
    from cmtyflow.store.pg_shared import SharedWork
    from cmtyflow.store.postgres import PostgresStore

    store = PostgresStore(url, exclusive=False)
    try:
        return SharedWork(store).invariants()
    finally:
        store.close()


def stuck(url: str) -> dict[str, int]:
    """The invariants that do not hold, with their counts; for failure messages."""
    return {name: n for name, n in invariants(url).items() if n}


def timers_left(url: str) -> int:
    from cmtyflow.store.postgres import PostgresStore

    store = PostgresStore(url, exclusive=False)
    try:
        return int(store.conn.execute("SELECT count(*) FROM timers").fetchone()[0])
    finally:
        store.close()
