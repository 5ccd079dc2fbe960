"""The driver feeds due inputs to the engine and applies its decisions to the store.
Dry-run and run share it; they differ only in clock, store and adapters (SPEC 5.5).

Rules:
- Inputs are taken in time order; inputs due at the same instant in a fixed order
  (SPEC 5.6): due waits, then schedule firings (in playbook and trigger order), then
  events (in arrival order). Events a run emits are handled right after the input
  that emitted them, at the same instant. A chain of them is cut (the event taken,
  not handled, and noted ``emit_chain_cut``) past ``MAX_EMIT_DEPTH`` events emitted
  one by the other, or past ``MAX_EMITTED`` events from one input: a flow that emits
  the event that starts it again would otherwise never let the input end.
- Each input's decision is applied together with what it consumed (the timer, the
  event, the schedule position), so a crash either replays the input or has fully
  applied it. On a store that can (SQLite), the inputs of a call are committed a
  group at a time (``GROUP_WRITES``, ``GROUP_SECONDS``): a crash replays the group
  not yet committed; a fault part way keeps the inputs handled before it. What a
  group queued is sent only once it is committed (the dispatcher reads the store).
- Catch-up (SPEC 5.3): when a schedule's due firings lie in the past, the latest is
  fired late if it is within ``catch_up.grace`` and the others are coalesced into it;
  firings older than the grace are skipped. Both are reported. A firing taken late is
  handled as of its due time (``now``, ``today``), as a wait is; what it sends is
  planned from now.
- A schedule's position (its next due time) is kept per (playbook, trigger, zone) under
  the key ``schedule_key``: the zone, and a digest of what decides the firings (the
  cron or ``at``, the trigger's and the playbook's timezone, the window). An edit to
  any of them gives the schedule a new position, from the moment it is loaded, instead
  of the one the old definition computed (a moved ``at`` fired at its old time, a new
  window after an ended one fired nothing, a changed timezone fired in both zones).
  Only the positions of the loaded playbooks' current schedules are taken; the others
  stay in the state, untouched, for a runner that loads them (a position the runner
  could not fire kept its loop turning for good). A position kept under the zone alone
  (written before keys had a digest) is taken over once.
- A manual launch (``cmtyflow launch``) travels as a queued event of type
  ``LAUNCH_EVENT`` so that it is taken by the runner in arrival order, durably and
  once (its id is the launch id); it never reaches event triggers.
- ``observe``, when set, sees every decision after it has been applied (the runner
  logs from it); it must not change anything.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..engine.core import Engine
from ..engine.model import Decision, Event, Firing, Launch, TimerDue
from ..engine.program import Program
from ..engine.schedule import _zone, after_window, next_cron
from ..spec.duration import parse_duration
from ..store.base import ScheduleUpdate, Store

MAX_BATCH = 1000
PASS_INPUTS = 2_000  # inputs a runner's pass (or a worker's tick) takes before it sends and lets go
PASS_SLICE = 250  # inputs a runner takes before it lets its event loop go (the intake answers)
# Members of a firing over the audience handled per transaction: a firing over a million
# members was one input, one transaction and one Decision (3.65 GB, 2 minutes in which
# the runner heard no signal and the intake no request). Each chunk commits with the
# firing's place (``ScheduleUpdate.after``), so a stop or a crash goes on from there.
FIRING_CHUNK = 1000
LAUNCH_EVENT = "cmtyflow.launch"
NOTED_FIRINGS = 10  # missed firings noted one by one; the rest in one note with their count
MAX_EMIT_DEPTH = 100  # events emitted one by the other, from one input
MAX_EMITTED = 10_000  # events emitted from one input, in all
# A store that can (``SqliteStore.grouped``) commits the inputs' transactions a group at
# a time: up to this many writes or this long. A commit per input was 60% of the time
# of an event that starts a run (WAL frames and checkpoints for pages the next input
# writes again).
GROUP_WRITES = 250
GROUP_SECONDS = 0.2


def schedule_key(prog: Program, trigger: Any, zone: str) -> str:
    """The zone part of a schedule's position key: the zone and a digest of what decides
    its firings, so that an edit to any of them starts a new position (rules above)."""
    window = prog.playbook.window
    what = [trigger.kind, getattr(trigger, "cron", None), getattr(trigger, "at", None),
            getattr(trigger, "timezone", None), prog.playbook.timezone,
            None if window is None else window.model_dump(mode="json")]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{zone}#{digest}"


def launch_event(launch: Launch) -> Event:
    """A launch as a queued event (see the rules above)."""
    data = {"playbook": launch.playbook, "trigger": launch.trigger, "inputs": dict(launch.inputs)}
    return Event(launch.id, LAUNCH_EVENT, launch.at, launch.member, data)


@dataclass(frozen=True, slots=True)
class ScheduleKey:
    playbook: str
    trigger: str
    zone: str


class Driver:
    # Several workers (runtime.worker): due waits are jobs of their own, handled in
    # parallel, and this driver takes only schedule firings and events.
    handles_timers = True

    def __init__(self, engine: Engine, store: Store) -> None:
        self.engine = engine
        self.store = store
        self.observe: Callable[[Decision], None] | None = None
        self._positions: dict[tuple[str, str, str], datetime | None] | None = None
        self._soonest: datetime | None = None  # the earliest schedule position, when known
        self._soonest_known = False
        self._zone_count = -1
        self._order = [
            (prog, t) for prog in engine.programs.values() for t in prog.playbook.triggers if t.kind in ("cron", "at")
        ]
        # The schedules this driver fires, in trigger order: (program, trigger, zone,
        # position key); set by ``init_schedules``.
        self._live: list[tuple[Program, Any, str, tuple[str, str, str]]] = []
        # Firings over the audience under way: key -> (due, last member done, when its
        # first chunk was taken); read once.
        self._progress: dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]] | None = None
        # The last firing handled stopped after a chunk: the caller lets go (a signal, the
        # intake, a dispatch pass) before the next one (``process_until`` with a limit).
        self.firing_under_way = False
        # Firings under way whose schedule this version does not have, already said (a
        # worker passes the same set to each tick's driver: said once per process).
        self.abandoned_noted: set[tuple[str, str, str]] = set()

    @property
    def programs(self) -> dict[str, Program]:
        return self.engine.programs

    # schedules -----------------------------------------------------------------------------------------
    def _zones(self, prog: Program, trigger: Any, member_zones: set[str]) -> list[str]:
        if getattr(trigger, "timezone", None) == "member":
            return sorted(member_zones | {prog.playbook.timezone})
        return [trigger.timezone or prog.playbook.timezone]

    def _first_due(self, prog: Program, trigger: Any, zone: str, after: datetime) -> datetime | None:
        if trigger.kind == "at":
            at = prog.at_times[trigger.id]
            if zone != (trigger.timezone or prog.playbook.timezone):
                # `at` with timezone: member reads the wall time in each member zone.
                from ..engine.program import parse_at

                at = parse_at(trigger.at, _zone(zone))
            return at
        # A firing at the very instant the schedule starts is its first (SPEC 6: a dry
        # run covers [start, start + days), and a window's first midnight is in it).
        return next_cron(trigger.cron, after - timedelta(microseconds=1), zone)

    def positions(self) -> dict[tuple[str, str, str], datetime | None]:
        if self._positions is None:
            self._positions = self.store.schedule_positions()
            self._soonest_known = False
        return self._positions

    def _set_positions(self, updates: list[ScheduleUpdate]) -> None:
        positions = self.positions()
        for u in updates:
            positions[(u.playbook, u.trigger, u.zone)] = u.next_due
        self._soonest_known = False

    def _soonest_position(self) -> datetime | None:
        # Asked once or more per instant; the positions change only when a schedule fires.
        if not self._soonest_known:
            positions = self.positions()
            due = [d for *_, key in self._live if (d := positions.get(key)) is not None]
            self._soonest = min(due) if due else None
            self._soonest_known = True
        return self._soonest

    def init_schedules(self, now: datetime, *, write: bool = True) -> None:
        """Give every schedule (and every new member timezone) a first due time. With
        ``write`` False, only learn which schedules this driver fires and where they
        are (a worker looks whether anything is due before it takes the engine lock;
        the writes wait for the lock)."""
        zones = self.store.member_timezones()
        if len(zones) == self._zone_count:
            return
        if write:
            self._zone_count = len(zones)
        positions = self.positions()
        updates = []
        live = []
        for prog, trigger in self._order:
            for zone in self._zones(prog, trigger, zones):
                key = (prog.name, trigger.id, schedule_key(prog, trigger, zone))
                live.append((prog, trigger, zone, key))
                if key in positions:
                    continue
                legacy = (prog.name, trigger.id, zone)
                due = positions[legacy] if legacy in positions else self._first_due(prog, trigger, zone, now)
                updates.append(ScheduleUpdate(*key, due))
        self._live = live
        self._soonest_known = False
        if not write:
            return
        # A firing under way whose schedule this version does not have (its cron, `at`,
        # timezone or window edited, or the trigger gone): the rest of its audience is
        # not reached by it. Said once; its place is kept, so that the edit undone goes
        # on with it (within the grace; past it, the rest is skipped and reported).
        live_keys = {key for *_, key in live}
        abandoned = Decision()
        for key, (due, after, *_) in self.progress().items():
            if key not in live_keys and key[0] in self.engine.programs and key not in self.abandoned_noted:
                self.abandoned_noted.add(key)
                abandoned.note("firing_abandoned", playbook=key[0], trigger=key[1], due=due.isoformat(), after=after,
                               reason="its schedule was edited while it was under way; the members after that place "
                                      "are not reached unless the edit is undone")
        if abandoned.notes:
            self._apply(abandoned, now)
        if updates:
            self.store.set_schedules(updates)
            self._set_positions(updates)

    def _next_after(self, prog: Program, trigger: Any, zone: str, fired: datetime) -> datetime | None:
        if trigger.kind == "at":
            return None
        nxt = next_cron(trigger.cron, fired, zone)
        # The window's days are the firing's local dates (the schedule's zone), as
        # the engine reads them: a member-local firing reads the member's calendar.
        if after_window(nxt, prog.window, _zone(zone)):
            return None
        return nxt

    # the loop --------------------------------------------------------------------------------------------
    def next_instant(self) -> datetime | None:
        best = self.store.next_timer_due() if self.handles_timers else None
        for candidate in (self.store.next_event_at(), self._soonest_position()):
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        return best

    def process_until(self, now: datetime, limit: int | None = None) -> int:
        """Handle every input due at or before ``now``; returns how many. With ``limit``,
        stop once at least that many are handled (the inputs due at an instant are taken
        a step at a time: up to ``MAX_BATCH`` waits, the firings, up to ``MAX_BATCH``
        events, each with the events it emitted); the next call goes on where this one
        stopped, in the same order."""
        grouped = getattr(self.store, "grouped", None)
        with grouped(GROUP_WRITES, GROUP_SECONDS) if grouped is not None else nullcontext():
            handled = 0
            self.firing_under_way = False
            self.init_schedules(now)
            while limit is None or handled < limit:
                instant = self.next_instant()
                if instant is None or instant > now or not self._may_take(instant):
                    return handled
                handled += self._process_instant(instant, now)
                if self.firing_under_way and limit is not None:
                    return handled
            return handled

    def _may_take(self, instant: datetime) -> bool:
        """Whether the inputs due at ``instant`` may be taken now (see ``handles_timers``)."""
        return True

    def _process_instant(self, instant: datetime, now: datetime) -> int:
        handled = 0
        self.firing_under_way = False
        # 1. due waits
        for timer in self.store.due_timers(instant, MAX_BATCH) if self.handles_timers else ():
            if timer.due > instant:
                continue
            # A wait ends at its due time, even when taken late (the runner was down): the
            # run goes on from then, as an event is handled as of its own time, so that an
            # event that came after it (and before ``now``) still answers the next wait;
            # what it sends is planned from now.
            decision = self.engine.handle(self.store, min(timer.due, now), TimerDue(timer), earliest=now)
            self._apply(decision, now, consumed_timer=timer.id)
            handled += 1 + self._emitted(decision.emitted, now)
        # 2. schedule firings, in trigger order
        soonest = self._soonest_position()
        if soonest is not None and soonest <= instant:
            positions = self.positions()
            for prog, trigger, zone, key in self._live:
                due = positions.get(key)
                if due is not None and due <= instant:
                    handled += self._fire(prog, trigger, zone, key, due, now)
                    if self.firing_under_way:
                        return handled  # its next chunk before anything after it (SPEC 5.6)
        # 3. events, in arrival order
        for event in self.store.pending_events(instant, MAX_BATCH):
            decision = self._handle_event(event, now)
            self._apply(decision, now, consumed_event=event.id)
            handled += 1 + self._emitted(decision.emitted, now)
        return handled

    def _handle_event(self, event: Event, now: datetime) -> Decision:
        if event.type != LAUNCH_EVENT:
            # An event happened at its own time: a check-in taken late still counts for
            # the day it was made, a wait after it counts from it; what it sends is
            # planned from now.
            return self.engine.handle(self.store, min(event.at, now), event, earliest=now)
        data = event.data
        prog = self.programs.get(str(data.get("playbook")))
        trigger_id = str(data.get("trigger"))
        if prog is None or not any(t.id == trigger_id and t.kind == "manual" for t in prog.playbook.triggers):
            decision = Decision()
            decision.note("launch_refused", playbook=data.get("playbook"), trigger=trigger_id, launch=event.id,
                          reason="no such manual trigger among the playbooks this runner has loaded")
            decision.count("launches_refused")
            return decision
        raw_inputs = data.get("inputs")
        inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
        return self.engine.handle(self.store, now, Launch(prog.name, trigger_id, event.id, event.at, event.member, inputs))

    def _apply(self, decision: Decision, now: datetime, **consumed: Any) -> None:
        """Commit ``decision`` (with what it consumed) and show it. A note the engine made
        without a time of its own (a run failed, a launch refused) is dated when it was
        handled, so that `status` and `outbox` can say when."""
        for note in decision.notes:
            note.setdefault("at", now)
        self.store.apply(decision, **consumed)
        self._observe(decision)

    def _move(self, decision: Decision, now: datetime, update: ScheduleUpdate) -> None:
        """Commit what a firing (or its skipping) decided with its schedule's new position."""
        self._apply(decision, now, schedules=[update])
        self._set_positions([update])

    def _observe(self, decision: Decision) -> None:
        if self.observe is not None:
            self.observe(decision)

    def _fire(self, prog: Program, trigger: Any, zone: str, key: tuple[str, str, str], due: datetime, now: datetime) -> int:
        self.firing_under_way = False
        grace = parse_duration(prog.playbook.policies.catch_up.grace).approx_seconds()
        progress = self.progress().get(key)
        if progress is not None and progress[0] == due:
            if (now - progress[3]).total_seconds() <= grace:
                # Under way: it goes on from the member after the last one done (its
                # lateness and missed firings were said with its first chunk), unless it
                # was left longer than the grace since its last chunk (a stop, a crash).
                return self._fire_chunk(prog, trigger, zone, key, due, now, progress[1], 0.0, [], progress[2])
            # Stopped part way and taken up again past the grace (SPEC 5.3): the rest of
            # its audience is skipped and reported, as a firing that late would be.
            update = ScheduleUpdate(*key, self._next_after(prog, trigger, zone, due))
            skipped = Decision()
            skipped.note("skipped_firing", playbook=prog.name, trigger=trigger.id, zone=zone, due=due.isoformat(),
                         late_seconds=(now - due).total_seconds(), after=progress[1],
                         reason="stopped part way; the members after that place were not reached")
            skipped.count("skipped_firings")
            del self.progress()[key]
            self._move(skipped, now, update)
            return 1
        missed: list[datetime] = []
        latest = due
        nxt = self._next_after(prog, trigger, zone, due)
        while nxt is not None and nxt <= now:
            missed.append(latest)
            latest = nxt
            nxt = self._next_after(prog, trigger, zone, latest)
        late = (now - latest).total_seconds()
        if late > grace:
            update = ScheduleUpdate(*key, nxt)
            skipped = Decision()
            _note_firings(skipped, "skipped_firing", [*missed, latest], now, playbook=prog.name, trigger=trigger.id, zone=zone)
            skipped.count("skipped_firings", len(missed) + 1)
            self._move(skipped, now, update)
            return 1
        return self._fire_chunk(prog, trigger, zone, key, latest, now, 0, late, missed)

    def _fire_chunk(
        self, prog: Program, trigger: Any, zone: str, key: tuple[str, str, str], latest: datetime, now: datetime,
        after: int, late: float, missed: list[datetime], started: datetime | None = None,
    ) -> int:
        """The firing at ``latest`` (over the audience: its next chunk, after the member
        at ``after``); its position moves on once its last chunk is done."""
        member_zone = zone if getattr(trigger, "timezone", None) == "member" else None
        limit = FIRING_CHUNK if trigger.for_each == "audience" else 0
        # Every chunk's messages are planned from when its first one was taken (kept with
        # its place): the members of one firing meet the same quiet hours and day, as in
        # the dry run, however long the firing takes, and whichever process goes on.
        earliest = started if started is not None else now
        # As of its due time, as a wait taken late is (a reminder caught up after
        # midnight read the next day as its today); what it sends goes from then.
        decision = self.engine.handle(
            self.store, min(latest, earliest),
            Firing(prog.name, trigger.id, latest, member_zone, late if late >= 1 else 0.0, after, limit),
            earliest=earliest,
        )
        _note_firings(decision, "coalesced_firing", missed, None, playbook=prog.name, trigger=trigger.id, zone=zone)
        if missed:
            decision.count("coalesced_firings", len(missed))
        progress = self.progress()
        if decision.firing_after is not None:
            update = ScheduleUpdate(*key, latest, decision.firing_after, earliest, now)
            progress[key] = (latest, decision.firing_after, earliest, now)
            self.firing_under_way = True
        else:
            update = ScheduleUpdate(*key, self._next_after(prog, trigger, zone, latest))
            progress.pop(key, None)
        self._move(decision, now, update)
        return (0 if self.firing_under_way else 1) + self._emitted(decision.emitted, now)

    def progress(self) -> dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]]:
        if self._progress is None:
            self._progress = self.store.firing_progress()
        return self._progress

    def _emitted(self, events: Iterable[Event], now: datetime) -> int:
        # Emitted events were queued by ``apply``; handle them now, at the same instant,
        # and only them: other inputs due now keep their SPEC 5.6 order.
        if not events:
            return 0
        handled = 0
        pending = deque((event.id, 1) for event in events)  # (id, how deep in the chain)
        while pending:
            event_id, depth = pending.popleft()
            event = self.store.take_event(event_id)
            if event is None:  # not queued: its id was seen before
                continue
            if depth > MAX_EMIT_DEPTH or handled >= MAX_EMITTED:
                decision = Decision()
                why = f"{MAX_EMIT_DEPTH} events deep" if depth > MAX_EMIT_DEPTH else f"{MAX_EMITTED} events from one input"
                decision.note("emit_chain_cut", type=event.type, member=event.member, event=event.id[-120:], reason=why)
                decision.count("emitted_events_cut")
            else:
                decision = self._handle_event(event, now)
                pending.extend((e.id, depth + 1) for e in decision.emitted)
            self._apply(decision, now, consumed_event=event.id)
            handled += 1
        return handled


def _note_firings(decision: Decision, kind: str, firings: list[datetime], now: datetime | None, **where: Any) -> None:
    """Note missed ``firings``: the first ``NOTED_FIRINGS`` one by one (with how late,
    given ``now``), the rest in one note with their count (a minutely cron down for a
    month missed 43,000: a note, and a log line, each)."""
    for at in firings[:NOTED_FIRINGS]:
        late = {"late_seconds": (now - at).total_seconds()} if now is not None else {}
        decision.note(kind, **where, due=at.isoformat(), **late)
    if len(firings) > NOTED_FIRINGS:
        decision.note(kind, **where, more=len(firings) - NOTED_FIRINGS, last_due=firings[-1].isoformat())
