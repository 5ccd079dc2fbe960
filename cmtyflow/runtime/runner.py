"""The runner (SPEC 5): the engine and driver on a real store, a clock and adapters.

Rules:
- One loop: handle every input due now (each committed with its state changes and
  queued messages in one transaction, by the driver), then send what is due (the
  dispatcher), then sleep until the next due instant, a wake-up (an event posted to
  the intake) or ``poll`` seconds, whichever comes first. The poll picks up events
  and launches that other processes (``cmtyflow emit``, ``cmtyflow launch``) wrote to
  the store.
- ``tick()`` is one pass of that loop on whatever clock the runner was given: tests
  and the equivalence check drive it with a virtual clock; ``--once`` is one tick.
- Start-up: rows a previous process left in flight are settled first (in doubt,
  SPEC 5.2); the loaded versions are written to the audit log.
- Stop (SIGINT/SIGTERM): no new rows are claimed, sends in flight get ``drain``
  seconds, unstarted rows go back to the queue. Nothing that was committed is lost.
- One runner per SQLite state: a lock file beside the database refuses a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..engine.core import Engine
from ..engine.model import Decision
from ..engine.program import Program
from ..errors import UserError
from ..loader import LoadedPlaybook, LoadResult
from ..problems import plural
from ..store.base import Store
from . import driver as driver_module
from . import versions
from .channels import ChannelSet
from .dispatch import Dispatcher, DispatchStats, Log, no_log
from .driver import PASS_INPUTS, PASS_SLICE, Driver
from .logs import LOGGED_NOTES
from .prepare import adapter_formats

SEND_PASS_SECONDS = 5.0  # how long a pass starts sends before the runner looks at its inputs again



# How far this start's clock may be behind the last start's or stop's before it is said
# (clocks of two machines sharing a PostgreSQL state differ by a little).
CLOCK_SLACK = timedelta(minutes=1)


class Runner:
    def __init__(
        self,
        programs: list[Program],
        store: Store,
        channels: ChannelSet,
        clock: Clock,
        *,
        concurrency: int = 16,
        poll: float = 1.0,
        drain: float = 10.0,
        rng: random.Random | None = None,
        log: Log | None = None,
        older: Sequence[Program] = (),
        loaded: Sequence[LoadedPlaybook] = (),
    ) -> None:
        """``older``: earlier versions that active runs finish on; ``loaded``: the
        loaded playbooks, whose versions are kept in the store at start."""
        self.programs = programs
        self.loaded = loaded
        self.store = store
        self.channels = channels
        self.clock = clock
        self.engine = Engine(programs, older)
        self.driver = Driver(self.engine, store)
        self.log: Log = log or no_log
        self.decisions = DecisionLog(self.log)
        self.driver.observe = self.decisions
        self.dispatcher = Dispatcher(
            store, channels, clock.now,
            policies={p.name: p.playbook.policies for p in programs},
            concurrency=concurrency, rng=rng, log=self.log,
        )
        self.poll = poll
        self.drain = drain
        self.inputs = 0
        self.behind = False  # the last pass stopped at PASS_INPUTS with inputs still due
        self.sending_behind = False  # the last pass's sends stopped at SEND_PASS_SECONDS
        self._caught_up = 0  # inputs handled by the passes of the backlog so far
        self.totals = DispatchStats()
        self._stop = False
        self._wake: asyncio.Event | None = None

    # life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.channels.open()
        now = self.clock.now()
        self._check_clock(now)
        self.driver.init_schedules(now)
        resent, held = self.dispatcher.recover_in_doubt()
        if resent or held:
            self.log("in_doubt", resent=resent, held=held)
        self.store.record(now, "runner_started", pid=os.getpid(), versions={p.name: p.version for p in self.programs})
        for name, first in versions.record(self.store, self.loaded, now):
            version = next(p.version for p in self.programs if p.name == name)[:12]
            detail = "first run" if first else "a new version; runs in flight finish on the one they started on"
            self.log("version", playbook=name, version=version, detail=detail)

    def _check_clock(self, now: datetime) -> None:
        """Say so when this start's time is earlier than the last start's or stop's: the
        schedules and waits already went past it (a rehearsal with ``--now`` ahead, run
        on the live state, moved a daily firing a week on, and the real runs after it
        sent nothing, without a word)."""
        last = self.store.audit(["runner_started", "runner_stopped"], limit=1)
        before = last[-1].get("at") if last else None
        if isinstance(before, datetime) and now < before - CLOCK_SLACK:
            self.log("clock_behind", now=now.isoformat(), last_run=before.isoformat(),
                     hint="schedules and waits went on as of the later time; a rehearsal with --now belongs on a "
                          "state of its own (--state)")

    async def close(self) -> None:
        try:
            await self.channels.close()
        finally:
            self.store.record(self.clock.now(), "runner_stopped", inputs=self.inputs, sent=self.totals.sent,
                              failed=self.totals.failed, dead=self.totals.dead, cancelled=self.totals.cancelled)

    def stop(self) -> None:
        self._stop = True
        self.dispatcher.stop()
        if self._wake is not None:
            self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop

    def wake(self) -> None:
        """Something new is in the store (an event posted to the intake)."""
        if self._wake is not None:
            self._wake.set()

    # the loop ------------------------------------------------------------------------------------
    async def tick(self) -> datetime | None:
        """Handle the inputs due now, at most about ``PASS_INPUTS`` of them, then send
        the messages due now for at most ``SEND_PASS_SECONDS``; returns when the next
        thing is due (None: nothing is scheduled; now or earlier: inputs or messages
        are still due). A backlog of inputs (a runner that was stopped for days, a
        large import) is taken a pass at a time, so that messages go out while it is
        worked through, a stop is heard within a pass, and progress is logged; a long
        send (a large audience on a rate-limited platform) is too, so that an input
        that comes meanwhile (a crisis) is handled within a pass, not after it."""
        now = self.clock.now()
        check_file = getattr(self.store, "check_file", None)
        if check_file is not None:
            check_file()  # an SQLite state deleted or replaced meanwhile stops the runner
        if not self._stop:
            handled = await self._take_inputs(now)
            self.decisions.flush()  # a firing's chunks so far: one line a pass
            self.inputs += handled
            self.behind = handled >= PASS_INPUTS or self.driver.firing_under_way
            if handled >= PASS_INPUTS:
                self._caught_up += handled
                self.log("catching_up", handled=self._caught_up, until=now.isoformat())
            elif not self.behind:
                self._caught_up = 0
            stats = await self.dispatcher.run_due(now, drain=self.drain, budget=SEND_PASS_SECONDS)
            self._add(stats)
            self.sending_behind = stats.paused > 0
        return self.next_due()

    async def _take_inputs(self, now: datetime) -> int:
        """The inputs due at ``now``, up to about ``PASS_INPUTS``, ``PASS_SLICE`` at a time
        with the event loop let go between slices: the intake answers, and a signal is
        heard, while a backlog is worked through (a pass of thousands held the loop for
        seconds, and each POST to the intake waited for it)."""
        handled = chunks = 0
        while handled < PASS_INPUTS and not self._stop:
            taken = self.driver.process_until(now, limit=min(PASS_SLICE, PASS_INPUTS - handled))
            handled += taken
            if self.driver.firing_under_way:
                # A chunk of a firing over the audience (``FIRING_CHUNK`` members): the
                # loop is let go after each, and a pass sends after a slice of them.
                chunks += 1
                await asyncio.sleep(0)
                if chunks * driver_module.FIRING_CHUNK >= PASS_INPUTS:
                    break
                continue
            if taken < PASS_SLICE:
                break  # nothing more is due
            await asyncio.sleep(0)
        return handled

    def next_due(self) -> datetime | None:
        best = self.driver.next_instant()
        message = self.store.next_message_due()
        if message is not None and (best is None or message < best):
            best = message
        return best

    async def run_forever(self) -> None:
        self._wake = asyncio.Event()
        try:
            while not self._stop:
                nxt = await self.tick()
                if self._stop:
                    break
                timeout = self.poll
                if nxt is not None:
                    timeout = max(0.0, min(timeout, (nxt - self.clock.now()).total_seconds()))
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
        finally:
            self._wake = None

    async def run_once(self) -> None:
        """``--once``: what is due now, including every message that can go now."""
        await self.tick()
        while (self.behind or self.sending_behind) and not self._stop:
            await self.tick()

    # logging -------------------------------------------------------------------------------------
    def _add(self, stats: DispatchStats) -> None:
        add_stats(self.totals, stats)

    def summary(self, verb: str) -> str:
        """The line ``run`` ends with."""
        return summary(verb, self.inputs, self.decisions.runs_started, self.totals, self.driver.firing_under_way,
                       self.decisions.runs_failed)


def add_stats(total: DispatchStats, stats: DispatchStats) -> None:
    """Add one dispatch pass's ``stats`` to a process's ``total``."""
    total.sent += stats.sent
    total.failed += stats.failed
    total.dead += stats.dead
    total.cancelled += stats.cancelled
    total.requeued += stats.requeued
    total.abandoned += stats.abandoned
    total.held += stats.held
    total.put_off += stats.put_off


LOG_FIRING_EVERY = 10_000  # runs a firing under way starts between its log lines


class DecisionLog:
    """The log lines decisions are worth: runs started and the notes in LOGGED_NOTES.

    The chunks of a firing over the audience (1,000 members each) add their runs up:
    one line when the firing completes, and one every ``LOG_FIRING_EVERY`` runs while
    it is under way (``flush``, after each pass), not one a chunk (a thousand lines for a million members). Each
    ``runs_started`` line counts the runs started since the one before it. Called from
    one thread at a time."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.pending = 0  # runs started by a firing's chunks, not logged yet
        self.runs_started = 0  # all of them, since this was made
        self.runs_failed = 0  # runs that failed (each logged as run_failed), since this was made

    def __call__(self, decision: Decision) -> None:
        started = decision.counters.get("runs_started", 0)
        self.runs_started += started
        self.runs_failed += decision.counters.get("runs_failed", 0)
        if decision.firing_after is not None:  # a chunk, and more of the firing to come
            self.pending += started
        else:
            started += self.pending
            self.pending = 0
            if started:
                self.log("runs_started", count=started)
        for note in decision.notes:
            if note["kind"] in LOGGED_NOTES:
                self.log(note["kind"], **note_fields(note))

    def flush(self) -> None:
        """The runs a firing still under way has started since the last line, once they
        are ``LOG_FIRING_EVERY`` or more (a pass takes a few chunks)."""
        if self.pending >= LOG_FIRING_EVERY:
            self.log("runs_started", count=self.pending, firing="under way")
            self.pending = 0


def summary(verb: str, inputs: int, started: int, t: DispatchStats, firing_under_way: bool, failed: int = 0) -> str:
    """A runner's or worker's last line: what it handled, started, saw fail and sent."""
    runs_failed = f", {failed} run{'s' if failed != 1 else ''} failed (cmtyflow status says why)" if failed else ""
    line = (f"{verb}: {inputs} inputs handled, {started} runs started{runs_failed}, {t.sent} sent, {t.failed} to retry, "
            f"{t.dead} dead-lettered, {t.cancelled} cancelled" + (f", {t.held} held in doubt (cmtyflow outbox)" if t.held else "")
            + (f", messages put off {plural(t.put_off, 'time')} for a channel's rate limit" if t.put_off else ""))
    if firing_under_way:
        line += "; a firing over the audience stopped part way: the next run goes on with it (cmtyflow status)"
    return line


def note_fields(note: dict[str, Any]) -> dict[str, Any]:
    """A note's fields as a log line's: without its kind (the line's event) and time (the
    line has its own), and an event's id as ``event_id`` (``event`` names the line)."""
    return {("event_id" if k == "event" else k): v for k, v in note.items() if k != "kind" and k != "at"}


def build_runner(
    result: LoadResult, programs: list[Program], store: Store, channels: ChannelSet, clock: Clock,
    *, log: Log | None = None, **options: Any,
) -> Runner:
    """A runner for freshly loaded playbooks on ``store``: the older versions that its
    runs in flight started on are rebuilt for them (live edits)."""
    log = log or (lambda event, **fields: None)
    older, missing = versions.older_programs(store, programs, adapter_formats(result))
    for (playbook, version), n in sorted(missing.items()):
        log("version_unknown", playbook=playbook, version=version[:12], runs=n,
            detail="no copy of that version is kept; these runs continue on the current version")
    for problem in channels.add_older(older):
        log("channel_unavailable", detail=problem)
    return Runner(programs, store, channels, clock, log=log, older=older, loaded=result.playbooks, **options)


# the lock --------------------------------------------------------------------------------------


class StateLock:
    """An exclusive lock held for the runner's life (POSIX flock; released by the OS if
    the process dies), on ``<state>.lock`` (which names the holder's pid) and on the
    state file itself, when there is one. The state's real path names the first: a
    second runner given the file through a symbolic link is refused too. The second
    holds however the lock file is treated: with it deleted under a runner (a "stale"
    lock cleared), a second runner started, its start-up put the first one's messages
    not yet sent back in the queue, and both sent them. SQLite's own locks are of
    another kind (fcntl) and do not meet these."""

    def __init__(self, state_path: str | Path) -> None:
        self.state = os.path.realpath(state_path)
        self.path = Path(f"{self.state}.lock")
        self._fh: Any = None
        self._db: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the runner's life
        db = _open_quietly(self.state)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if db is not None:
                fcntl.flock(db, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            if db is not None:
                os.close(db)
            raise UserError(
                f"another runner is using {self.state}" + (f" (pid {holder})" if holder else "")
                + "; stop it first, or give this one its own --state"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError as exc:  # a full disk: the error said "No space left on device", naming no file
            fh.close()
            if db is not None:
                os.close(db)
            raise UserError(f"{self.path}: cannot write the runner's lock file: {exc.strerror or exc}") from None
        self._fh, self._db = fh, db

    @staticmethod
    def held(state_path: str | Path) -> bool:
        """Whether a runner holds the state at ``state_path`` now (its lock file or the
        state file is locked); read without creating anything."""
        import fcntl

        real = os.path.realpath(state_path)
        for path in (f"{real}.lock", real):
            fd = _open_quietly(path)
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            finally:
                os.close(fd)  # closing it lets go of a lock taken here
        return False

    def release(self) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._db is not None:
            os.close(self._db)  # its flock goes with it
            self._db = None


def _open_quietly(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None
