"""Crash soak for the durable runner (SPEC 5.2, 5.3; issue: crash tests).

    python bench/soak.py [--cycles 500] [--members 60] [--seed 1] [--dir DIR]

``cmtyflow run PLAYBOOK --once --now T`` runs in a subprocess, is killed with SIGKILL
and started again, cycle after cycle, against a loopback webhook sink that honours
``Idempotency-Key`` (tests/runtime/loopback_sink.py); then the invariants hold or the
script exits 1. tests/runtime/test_crash.py runs the same harness, shorter.

Rules:
- Time is virtual: cycle i acts at ``T0 + i * STEP``, so the member flow's waits and
  the daily cron come due without real waiting.
- A cycle is killed after a random delay spread over the life of the runners that
  finish (so kills land in start-up, engine transactions and sends), or at a kill
  point (``KILL_POINTS``): before or after the n-th store transaction, store write or
  adapter send, where the child SIGKILLs itself; these are the narrow windows between
  two commits that a timer rarely hits. After a kill that left messages in flight, the
  next runner is often killed again while it settles them (a fault during recovery).
  A kill that comes too late lets the cycle finish.
- Runners are forked from a zygote, a subprocess that imported cmtyflow once: a fresh
  interpreter per cycle would spend ~0.5 s on imports, which touch no state, and most
  timed kills would land in them.
- The child writes a phase marker to its stderr as it enters each part of the runner
  (``PHASES``), so a kill is counted by the phase it hit.
- After the kill cycles, clean passes advance the time until nothing is due; then
  ``check`` holds the store, the sink, the console output, ``cmtyflow outbox`` and
  ``cmtyflow status`` against what the playbook should produce for the roster and the
  join events (computed from the playbook, never from the store).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests" / "runtime") not in sys.path:
    sys.path.append(str(ROOT / "tests" / "runtime"))  # loopback_sink

UTC = ZoneInfo("UTC")
STEP = timedelta(hours=1)
T0 = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)  # three hours before the window opens
WINDOW_START = date(2026, 12, 1)
RUN_SPAN = timedelta(hours=4)  # a member run: 10m + 3 x 1h, and a margin
POINT_SHARE = 0.4  # the share of kills at a kill point (the rest: after a random delay)
RECOVERY_SHARE = 0.5  # after a kill that left messages in flight: the share killed again at start-up
MAX_CLEAN = 200  # clean passes before "never settles" is a violation
HANG = 60.0  # seconds: a runner that takes this long unless killed on purpose has hung

PLAYBOOK = """\
cmtyflow: 1
name: crash
timezone: UTC
window: {start: @START@, days: @DAYS@}
channels:
  hook: {adapter: webhook, url: "@URL@"}
  con: {adapter: console}
policies:
  retry: {attempts: 100, max_delay: 1m}
  catch_up: {grace: 1d}
triggers:
  - {id: joined, event: member.joined, flow: onboard, mode: queued}
  - {id: daily, cron: "0 9 * * *", flow: digest}
flows:
  onboard:
    - {id: hi, send: {channel: hook, text: "hi {{ member.id }} {{ event.data.round }}"}}
    - {id: hi-con, send: {channel: con, text: "hi-con {{ member.id }} {{ event.data.round }}"}}
    - wait: 10m
    - repeat: {times: 3, steps: [{id: tip, send: {channel: hook, text: "tip {{ member.id }} {{ event.data.round }}"}}, {wait: 1h}]}
    - {id: last, send: {channel: hook, text: "last {{ member.id }} {{ event.data.round }}"}}
    - {id: last-con, send: {channel: con, text: "last-con {{ member.id }} {{ event.data.round }}"}}
  digest:
    - {id: daily, send: {channel: hook, text: "daily {{ today }}"}}
"""

# Kill points: name -> (module, class, method, is async, the largest n drawn). ``commit`` is
# any store transaction ("before": inside it, all written but not committed; "after": right
# after COMMIT); the store methods are special cases of it worth drawing on their own.
KILL_POINTS: dict[str, tuple[str, str, str, bool, int]] = {
    "commit": ("cmtyflow.store.sqlite", "SqliteStore", "_write", False, 40),
    "apply": ("cmtyflow.store.sqlite", "SqliteStore", "apply", False, 12),
    "mark_in_doubt": ("cmtyflow.store.sqlite", "SqliteStore", "mark_in_doubt", False, 1),
    "claim": ("cmtyflow.store.sqlite", "SqliteStore", "claim_due_messages_with_members", False, 2),
    "finish": ("cmtyflow.store.sqlite", "SqliteStore", "finish_messages", False, 2),
    "webhook_send": ("cmtyflow.adapters.webhook", "WebhookAdapter", "send", True, 10),
    "console_send": ("cmtyflow.adapters.console", "ConsoleAdapter", "send", True, 4),
}
# Phase markers: (module, class, method, is async, marker written on entry).
PHASES = (
    ("cmtyflow.runtime.runner", "Runner", "start", True, "recover"),
    ("cmtyflow.runtime.driver", "Driver", "process_until", False, "engine"),
    ("cmtyflow.runtime.dispatch", "Dispatcher", "run_due", True, "dispatch"),
    ("cmtyflow.runtime.runner", "Runner", "close", True, "close"),
)


# the scenario ------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """Roster, join events and window for ``cycles`` kill cycles of one STEP each."""

    cycles: int
    members: int
    seed: int

    def __post_init__(self) -> None:
        span = self.cycles * STEP - (datetime.combine(WINDOW_START, datetime.min.time(), UTC) - T0)
        self.days = max(1, -(-span // timedelta(days=1)))  # the window ends about when the kill cycles do
        self.rounds = self.days  # joins per member
        self.window_end = datetime.combine(WINDOW_START + timedelta(days=self.days), datetime.min.time(), UTC)

    def playbook(self, url: str) -> str:
        return PLAYBOOK.replace("@START@", str(WINDOW_START)).replace("@DAYS@", str(self.days)).replace("@URL@", url)

    def roster(self) -> list[dict[str, Any]]:
        return [{"id": f"m{i:03d}", "name": f"Member {i}"} for i in range(self.members)]

    def joins(self) -> list[dict[str, Any]]:
        """Each member joins ``rounds`` times, once in each slice of the window, early
        enough that the runs end inside it; one join in five is followed by another
        while its run is active, which ``mode: queued`` starts when that run ends."""
        rng = random.Random(self.seed)
        start = datetime.combine(WINDOW_START, datetime.min.time(), UTC)
        slice_ = (self.window_end - 2 * RUN_SPAN - start) / self.rounds
        events = []
        for m in self.roster():
            for r in range(1, self.rounds + 1):
                at = start + slice_ * (r - 1) + timedelta(seconds=rng.uniform(0, slice_.total_seconds()))
                again = [("b", at + timedelta(minutes=rng.uniform(1, 60)))] if rng.random() < 0.2 else []
                for suffix, when in [("", at), *again]:
                    events.append({"id": f"join-{m['id']}-r{r}{suffix}", "type": "member.joined", "member": m["id"],
                                   "at": when.isoformat(), "data": {"round": f"{r}{suffix}"}})
        events.sort(key=lambda e: e["at"])
        return events


def flow_sends(steps: list[Any]) -> list[tuple[str, int, str]]:
    """(step id, occurrence, channel) of every message one run of ``steps`` queues."""
    out: list[tuple[str, int, str]] = []
    for step in steps:
        if step.kind == "send":
            out.append((step.id, 1 + sum(s[0] == step.id for s in out), step.send.channel))
        elif step.kind == "repeat" and step.repeat.times is not None:
            for _ in range(step.repeat.times):
                out += [(sid, 1 + sum(s[0] == sid for s in out), ch) for sid, _, ch in flow_sends(step.repeat.steps)]
        elif step.kind != "wait":
            raise ValueError(f"the soak counts the messages of send, wait and repeat {{times: N}} only, not {step.kind}")
    return out


def expected_messages(playbook_path: Path, joins: list[dict[str, Any]]) -> dict[tuple[Any, ...], str]:
    """Every message the playbook should queue for these joins over its window:
    (member or None, round or local date, step, occurrence) -> channel."""
    from croniter import croniter

    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.spec.models import CronTrigger

    _, (prog,) = load_programs([playbook_path])
    pb = prog.playbook
    out: dict[tuple[Any, ...], str] = {}
    for trigger in pb.triggers:
        sends = flow_sends(pb.flows[trigger.flow])
        if trigger.kind == "event":
            for join in joins:
                for step, occ, channel in sends:
                    out[(join["member"], str(join["data"]["round"]), step, occ)] = channel
        elif isinstance(trigger, CronTrigger) and prog.window is not None and prog.window[1] is not None:
            first, last = prog.window
            it = croniter(trigger.cron, datetime.combine(first, datetime.min.time()) - timedelta(seconds=1))
            while (fire := it.get_next(datetime)).date() <= last:
                for step, occ, channel in sends:
                    out[(None, fire.date().isoformat(), step, occ)] = channel
    return out


# launching runners -------------------------------------------------------------------------------


def child(job: dict[str, Any]) -> NoReturn:
    """In the runner's process: stdout/stderr to the job's files, phase markers and the
    kill point installed, then the command line's ``main``."""
    code = 98
    try:
        for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, job["out"], os.O_WRONLY | os.O_APPEND),
                                (2, job["err"], os.O_WRONLY | os.O_APPEND)):
            os.dup2(opened := os.open(name, flags), fd)
            os.close(opened)
        _instrument(job.get("point"))
        from cmtyflow.cli import main

        code = main(job["argv"])
    except BaseException:  # noqa: BLE001 - reported through the exit code
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _instrument(point: list[Any] | None) -> None:
    import importlib

    def mark(text: str) -> None:
        os.write(2, f"@{text}\n".encode())

    def wrap(spec: tuple[Any, ...], enter: Any, first: Any, last: Any) -> None:
        """``enter()`` on each call gives a token; ``first(token)`` runs before the call
        (for a store transaction: inside it, before COMMIT), ``last(token)`` after it."""
        module, cls, attr, is_async = spec[:4]
        owner = getattr(importlib.import_module(module), cls)
        original = getattr(owner, attr)
        patched: Any
        if attr == "_write":
            @contextlib.contextmanager
            def patched(*args: Any, **kw: Any) -> Any:
                token = enter()
                with original(*args, **kw) as db:
                    yield db
                    first(token)
                last(token)
        elif is_async:
            async def patched(*args: Any, **kw: Any) -> Any:
                token = enter()
                first(token)
                result = await original(*args, **kw)
                last(token)
                return result
        else:
            def patched(*args: Any, **kw: Any) -> Any:
                token = enter()
                first(token)
                result = original(*args, **kw)
                last(token)
                return result
        setattr(owner, attr, patched)

    for spec in PHASES:
        wrap(spec, lambda name=spec[4]: mark(name), lambda _: None, lambda _: None)
    if point is not None:
        name, when, n = point
        calls = itertools.count(1)  # the n-th call, counted when it starts (sends overlap)

        def kill(token: int, moment: str) -> None:
            if token == n and moment == when:
                mark(f"point {when} {name}")
                os.kill(os.getpid(), signal.SIGKILL)

        wrap(KILL_POINTS[name], lambda: next(calls), lambda t: kill(t, "before"), lambda t: kill(t, "after"))


def _wait(pid: int, timeout: float | None) -> tuple[int, bool]:
    """Wait for ``pid``; SIGKILL it after ``timeout`` seconds. (exit code, killed by us)."""
    killed = False
    if timeout is not None:
        fd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)  # a child that ended meanwhile is a zombie: harmless
                killed = True
        finally:
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code, killed and code == -signal.SIGKILL


def zygote() -> None:
    """``soak.py --zygote``: import cmtyflow once, then fork one runner per job read
    from stdin; answer each with a JSON line once the runner has ended."""
    import cmtyflow.adapters.console
    import cmtyflow.adapters.webhook
    import cmtyflow.cli  # noqa: F401 - the command line, the runner, the store

    for line in sys.stdin:
        job = json.loads(line)
        started = time.monotonic()
        if (pid := os.fork()) == 0:
            child(job)
        code, killed = _wait(pid, job.get("kill_after"))
        print(json.dumps({"code": code, "killed": killed, "life": time.monotonic() - started}), flush=True)


class Zygote:
    """Runners forked from one ``soak.py --zygote`` process (the default)."""

    def __init__(self) -> None:
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=pipe, stdout=pipe, text=True)
        self.jobs, self.replies = self.proc.stdin, self.proc.stdout

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        self.jobs.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
        self.jobs.flush()  # type: ignore[union-attr]
        if not (reply := self.replies.readline()):  # type: ignore[union-attr]
            raise RuntimeError(f"the zygote died (exit {self.proc.wait()})")
        return json.loads(reply)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.jobs.close()  # type: ignore[union-attr]
        self.proc.wait(10)
        self.replies.close()  # type: ignore[union-attr]


# the soak --------------------------------------------------------------------------------------


@dataclass
class Report:
    cycles: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # by phase or kill point
    finished: int = 0  # kill cycles whose kill came too late
    clean_passes: int = 0
    expected: Counter[str] = field(default_factory=Counter)  # messages by channel
    in_doubt_resent: int = 0  # as the runners logged them at start-up
    in_doubt_held: int = 0
    held_listed: int = 0  # in_doubt at the end (cmtyflow outbox)
    held_printed: int = 0  # of those, how many had in fact been printed before the kill
    sink_requests: int = 0
    duplicates: Counter[str] = field(default_factory=Counter)  # key -> resends the sink deduplicated
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def killed(self) -> int:
        return sum(self.kills.values())

    def summary(self) -> str:
        dups = ", ".join(f"{k[:12]} x{n}" for k, n in sorted(self.duplicates.items())[:6])
        dups += ", ..." if len(self.duplicates) > 6 else ""
        return "\n".join([
            f"cycles: {self.cycles} ({self.killed} killed, {self.finished} finished), "
            f"then {self.clean_passes} clean passes; {self.seconds:.1f} s",
            f"kills by phase: {', '.join(f'{k} {v}' for k, v in sorted(self.kills.items()))}",
            f"messages expected: {', '.join(f'{k} {v}' for k, v in sorted(self.expected.items()))}",
            f"in doubt at start-up: {self.in_doubt_resent} resent with their key, {self.in_doubt_held} held; "
            f"{self.held_listed} held at the end ({self.held_printed} of them had been printed)",
            f"sink: {self.sink_requests} requests, {sum(self.duplicates.values())} resends deduplicated by key"
            + (f" ({dups})" if self.duplicates else ""),
            "invariants: " + ("all hold" if not self.violations else f"{len(self.violations)} violated"),
            *(f"  - {v}" for v in self.violations),
        ])


def soak(folder: Path, *, cycles: int, members: int, seed: int, min_kills: int = 0,
         progress: Callable[[str], None] | None = None) -> Report:
    """The soak in ``folder``. ``min_kills``: go on past ``cycles`` until that many
    runners were killed (time keeps advancing; the clean passes catch up)."""
    from loopback_sink import ThreadedSink

    began, scenario, rng, report = time.monotonic(), Scenario(cycles, members, seed), random.Random(seed), Report()
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    sink, launcher = ThreadedSink(), Zygote()
    try:
        playbook, db = folder / "crash.yaml", folder / "state.db"
        playbook.write_text(scenario.playbook(sink.start()), encoding="utf-8")
        joins = scenario.joins()
        for name, items in (("roster.jsonl", scenario.roster()), ("events.jsonl", joins)):
            (folder / name).write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        cmds = Commands(launcher, folder / "logs", report)
        cmds.command(["members", "import", str(folder / "roster.jsonl"), "--state", str(db)])
        cmds.command(["events", "import", str(folder / "events.jsonl"), "--state", str(db)])
        run = ["run", str(playbook), "--once", "--state", str(db), "--log-format", "json", "--now"]
        life = 0.1  # seconds; then from the runners that finish
        i, inflight = 0, False
        while i < cycles or (report.killed < min_kills and i < 3 * max(cycles, min_kills)):
            point, delay = None, None
            if inflight and rng.random() < RECOVERY_SHARE:  # die again while settling them
                name = rng.choice(("commit", "finish", "mark_in_doubt"))
                point = [name, rng.choice(("before", "after")), rng.randint(1, 4) if name == "commit" else 1]
            elif rng.random() < POINT_SHARE:
                name = rng.choice(sorted(KILL_POINTS))
                point = [name, rng.choice(("before", "after")), rng.randint(1, KILL_POINTS[name][4])]
            else:
                delay = rng.uniform(0, 1.1 * life)
            result = cmds.cycle([*run, (T0 + i * STEP).isoformat()], delay, point)
            if result["code"] == 0:
                life = (life + result["life"]) / 2
            inflight = result["code"] != 0 and _inflight(db)
            i += 1
            if progress is not None and (i % 50 == 0 or i == cycles):
                progress(f"cycle {i}: {report.killed} killed ({dict(report.kills.most_common(4))}, ...), {report.finished} finished")
        report.cycles = i
        now = T0 + i * STEP
        for report.clean_passes in range(1, MAX_CLEAN + 1):  # until nothing is due
            cmds.cycle([*run, now.isoformat()], None, None)
            if now >= scenario.window_end and _settled(db):
                break
            now += STEP
        else:
            report.violations.append(f"not settled after {MAX_CLEAN} clean passes (at {now.isoformat()})")
        check(report, expected_messages(playbook, joins), db, cmds, sink)
    except Hung as exc:
        report.violations.append(str(exc))
    finally:
        launcher.close()
        sink.stop()
    report.seconds = time.monotonic() - began
    return report


@dataclass
class Commands:
    """Commands through the launcher, each with its own stdout/stderr files in ``logs``;
    a cycle's kill is counted by the last phase marker its runner wrote."""

    launcher: Zygote
    logs: Path
    report: Report
    n: int = 0

    def _run(self, argv: list[str], kill_after: float | None, point: list[Any] | None = None) -> tuple[dict[str, Any], str]:
        self.n += 1
        stem = self.logs / f"{self.n:05d}-{argv[0]}"
        job: dict[str, Any] = {"argv": argv, "out": f"{stem}.out", "err": f"{stem}.err", "kill_after": kill_after, "point": point}
        for name in (job["out"], job["err"]):
            Path(name).touch()  # a runner killed right after the fork never opens them
        result = {**job, **self.launcher.run(job)}
        with open(self.logs / "cycles.jsonl", "a", encoding="utf-8") as journal:
            journal.write(json.dumps(result) + "\n")
        return result, Path(job["err"]).read_text(encoding="utf-8")

    def command(self, argv: list[str]) -> str:
        """A command that must succeed; its standard output."""
        result, err = self._run(argv, HANG)
        if result["code"] != 0:
            raise RuntimeError(f"cmtyflow {' '.join(argv)}: exit {result['code']}\n{err}")
        return Path(result["out"]).read_text(encoding="utf-8")

    def cycle(self, argv: list[str], delay: float | None, point: list[Any] | None) -> dict[str, Any]:
        """A runner killed after ``delay`` seconds or at ``point`` (a kill cycle), or left
        to finish (a clean pass). One that outlives ``HANG`` ends the soak."""
        clean = delay is None and point is None
        result, err = self._run(argv, HANG if delay is None else delay, point)
        phase = "load"  # playbook, store and lock: before Runner.start
        for line in err.splitlines():
            if line.startswith("@"):
                phase = line.removeprefix("@point ").removeprefix("@")
            elif line.startswith("{") and (entry := json.loads(line))["event"] == "in_doubt":
                self.report.in_doubt_resent += entry["resent"]
                self.report.in_doubt_held += entry["held"]
        if result["killed"] and delay is None:
            raise Hung(f"{self.n:05d}-run: the runner hung (killed after {HANG:g} s, in phase {phase})")
        if result["code"] == -signal.SIGKILL and not clean:
            self.report.kills[phase] += 1
        elif result["code"] == 0:
            self.report.finished += not clean
        else:
            tail = "\n    ".join(err.strip().splitlines()[-6:])
            self.report.violations.append(f"{self.n:05d}-run: the runner exited with {result['code']}:\n    {tail}")
        return result


class Hung(Exception):
    """A runner outlived ``HANG``: the soak ends there."""


def _inflight(db: Path) -> bool:
    """Did the last runner die with messages in flight? (read-only, plain sqlite3)"""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("SELECT 1 FROM outbox WHERE status = 'inflight' LIMIT 1").fetchone() is not None


def _settled(db: Path) -> bool:
    from cmtyflow.store.sqlite import SqliteStore

    with SqliteStore(db) as store:
        counts = store.outbox_counts()
        return (next(store.runs(status="active"), None) is None and not store.upcoming_timers(1)
                and store.next_event_at() is None and not any(store.schedule_positions().values())
                and counts["queued"] == counts["failed"] == counts["inflight"] == 0)


# the invariants ----------------------------------------------------------------------------------


def check(report: Report, expected: dict[tuple[Any, ...], str], db: Path, cmds: Commands, sink: Any) -> None:
    """The invariants; each violation is added to ``report.violations``."""
    from cmtyflow.store.sqlite import SqliteStore

    v = report.violations
    report.expected = Counter(expected.values())
    with SqliteStore(db) as store:
        rows = {r.message.key: r for r in store.outbox()}
        runs = Counter(run.status for run in store.runs(status=None) if run.member is not None)
        notes = Counter(n["kind"] for n in store.notes())
    requests, delivered, _ = sink.snapshot()
    report.sink_requests = len(requests)

    # Every message the playbook should produce, queued once, on its channel:
    # (member, round or local date, step, occurrence), the round or date read from the text.
    seen: dict[tuple[Any, ...], list[str]] = {}
    for key, r in rows.items():
        m = r.message
        tail = m.text.split()[-1]
        seen.setdefault((m.member, tail, m.step, m.occurrence), []).append(key)
        if m.member is not None and m.text != f"{m.step} {m.member} {tail}":
            v.append(f"message {key[:12]} has the text {m.text!r}")
    for logical, keys in seen.items():
        if len(keys) > 1:
            v.append(f"{logical} was queued {len(keys)} times, under keys {', '.join(k[:12] for k in keys)}")
        elif logical not in expected:
            v.append(f"{logical} was queued but the playbook does not produce it")
        elif rows[keys[0]].message.channel != expected[logical]:
            v.append(f"{logical} went to {rows[keys[0]].message.channel}, not {expected[logical]}")
    v.extend(f"{k} ({expected[k]}) was never queued" for k in sorted(set(expected) - set(seen), key=str)[:20])

    # Webhook: every message sent and delivered by the sink under its key, resends with the
    # same bytes (the sink answers them 200 and delivers nothing twice).
    hook = {k: r for k, r in rows.items() if r.message.channel == "hook"}
    v.extend(f"webhook message {k[:12]} ({r.message.text!r}) is {r.status}, not sent" for k, r in hook.items() if r.status != "sent")
    v.extend(f"webhook message {k[:12]} never reached the sink" for k in sorted(set(hook) - set(delivered))[:20])
    v.extend(f"the sink got key {k[:12]}, no webhook message in the outbox" for k in sorted(set(delivered) - set(hook))[:20])
    for req in requests:
        if req.key in hook and req.body["text"] != hook[req.key].message.text:
            v.append(f"key {req.key[:12]} reached the sink as {req.body['text']!r}, stored as {hook[req.key].message.text!r}")
    report.duplicates = Counter(req.key for req in requests if 200 <= int(req.status) < 300) - Counter(delivered.keys())

    # Console (not idempotent): sent (printed exactly once) or held in doubt (at most once).
    printed: Counter[str] = Counter()
    for out in sorted(cmds.logs.glob("*-run.out")):
        lines = out.read_text(encoding="utf-8").splitlines()
        printed.update(line.split("] ", 1)[1] for line in lines if line.startswith("[con -> "))
    con = {k: r for k, r in rows.items() if r.message.channel == "con"}
    for k, r in con.items():
        n = printed[r.message.text]
        if r.status not in ("sent", "in_doubt") or n > 1 or (r.status == "sent" and n != 1):
            v.append(f"console message {k[:12]} ({r.message.text!r}) is {r.status} and was printed {n} times")
    v.extend(f"printed {t!r}, no console message in the outbox" for t in sorted(set(printed) - {r.message.text for r in con.values()})[:20])
    held = {k for k, r in con.items() if r.status == "in_doubt"}
    report.held_listed = len(held)
    report.held_printed = sum(1 for k in held if printed[con[k].message.text])

    # `cmtyflow outbox` lists exactly the held ones; `cmtyflow status` shows nothing left to do.
    listed = json.loads(cmds.command(["outbox", "--state", str(db), "--format", "json", "--limit", "1000000"]))
    if sorted((r["key"], r["status"]) for r in listed) != sorted((k, "in_doubt") for k in held):
        extra = [f"{r['key'][:12]} {r['status']}" for r in listed if r["key"] not in held][:10]
        missing = [k[:12] for k in held - {r["key"] for r in listed}][:10]
        v.append(f"cmtyflow outbox does not list exactly the in-doubt messages: extra {extra}, missing {missing}")
    status = json.loads(cmds.command(["status", "--state", str(db), "--format", "json"]))
    left = {s: n for s, n in status["outbox"].items() if n and s not in ("sent", "in_doubt")}
    if status["active_runs"] or status["next_timers"] or status["next_event"] is not None or left:
        v.append(f"work left: runs {status['active_runs']}, timers {status['next_timers'][:3]}, "
                 f"next event {status['next_event']}, outbox {left}")

    # No timer lost: every member run ended (and every wait resumed: the messages above);
    # the cron fired once per window day (above), none coalesced or skipped.
    joins = len({(m, r) for (m, r, _, _) in expected if m is not None})
    if runs != Counter(done=joins):
        v.append(f"member runs by status: {dict(runs)}, for {joins} joins")
    v.extend(f"{notes[k]} {k} notes in the audit log" for k in ("skipped_firing", "coalesced_firing", "run_failed") if notes[k])


# the script --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--zygote"]:
        zygote()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500, help="kill cycles (default 500)")
    parser.add_argument("--members", type=int, default=60, help="roster size (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="work folder to keep (default: a temporary one)")
    opts = parser.parse_args(args)

    with contextlib.ExitStack() as stack:
        folder = opts.dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cmtyflow-soak-")))
        report = soak(folder, cycles=opts.cycles, members=opts.members, seed=opts.seed,
                      progress=lambda text: print(text, flush=True))
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
