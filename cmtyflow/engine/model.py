"""The engine's records: inputs it takes, runs it keeps, and the decision it returns.

Rules:
- Everything here is plain data that a store can persist as JSON; no behaviour that
  touches the outside world.
- Ids are derived from the input that caused them (trigger, event id, firing time,
  member), never from a counter or the wall clock, so that replaying an input after a
  crash produces the same runs and the same idempotency keys (SPEC 5.2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# --- inputs (SPEC 5.6: due waits, then schedule firings in trigger order, then events) ---


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    at: datetime
    member: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    member_update: dict[str, Any] | None = None  # SPEC 3: `member` given as an object

    def as_context(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "at": self.at, "member": self.member, "data": self.data}


@dataclass(frozen=True, slots=True)
class Firing:
    """A schedule (cron) or ``at`` trigger firing. ``timezone`` is set for member-local
    schedules (``timezone: member``): the firing reaches the members in that zone."""

    playbook: str
    trigger: str
    at: datetime
    timezone: str | None = None
    late_by: float = 0.0  # seconds, when fired late by catch-up (SPEC 5.3)
    # ``for_each: audience``: the members after this place in the roster (``seq``), at
    # most ``limit`` of them (0: all); the rest is another input (``Decision.firing_after``).
    after: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True)
class Launch:
    playbook: str
    trigger: str
    id: str
    at: datetime
    member: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimerDue:
    timer: Timer


# --- durable records ---------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    id: str
    playbook: str
    version: str
    flow: str
    member: str | None
    trigger: str
    mode: str
    started_at: datetime
    timezone: str
    pc: int = 0
    occurrences: dict[int, int] = field(default_factory=dict)  # instruction -> times run
    loops: dict[int, int] = field(default_factory=dict)  # loop instruction -> iteration
    event: dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    wait: dict[str, Any] | None = None  # SPEC 2 `wait`: {event, timed_out}
    checkin: dict[str, Any] | None = None
    waiting: dict[str, Any] | None = None  # the current suspension: {kind, timer, event, where}
    status: str = "active"  # active | done | stopped | failed | cancelled

    @property
    def campaign(self) -> bool:
        return self.member is None


@dataclass(frozen=True, slots=True)
class Timer:
    id: str
    run: str
    due: datetime
    kind: str  # "wait" (duration or until) | "timeout" (event wait)
    set_at: datetime


@dataclass(frozen=True, slots=True)
class EventWait:
    run: str
    playbook: str
    event_type: str
    member: str | None  # only this member's events match; None with ``where`` or in campaigns
    where: str | None


@dataclass(slots=True)
class QueuedMessage:
    """A message in the outbox with its rendered text (SPEC 5.2)."""

    key: str
    playbook: str
    run: str
    flow: str
    step: str
    occurrence: int
    channel: str
    adapter: str
    member: str | None  # the receiving member; None for a channel's own destination
    to: str  # the send's `to` as resolved: member, channel, roles.NAME or a member id
    text: str
    format: str
    variant: str | None
    urgent: bool
    queued_at: datetime
    deliver_at: datetime
    deferred: str | None = None  # "quiet_hours" | "daily_cap" when moved


def message_key(playbook: str, run: str, step: str, occurrence: int, recipient: str) -> str:
    raw = f"{playbook}\x1f{run}\x1f{step}\x1f{occurrence}\x1f{recipient}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(slots=True, init=False)
class Decision:
    """What one input changes. The caller applies all of it in one transaction."""

    runs: dict[str, Run] = field(default_factory=dict)  # runs to upsert (any status)
    timers: list[Timer] = field(default_factory=list)
    cancel_timers_of: list[str] = field(default_factory=list)  # run ids
    waits: list[EventWait] = field(default_factory=list)
    cancel_waits_of: list[str] = field(default_factory=list)  # run ids
    states: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[QueuedMessage] = field(default_factory=list)
    day_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (member, date) -> +n
    emitted: list[Event] = field(default_factory=list)
    queued_starts: list[dict[str, Any]] = field(default_factory=list)  # mode: queued
    dequeued: list[str] = field(default_factory=list)  # queued starts taken (by run id)
    exposures: list[tuple[str, str, str, str, str | None, datetime]] = field(default_factory=list)
    conversions: list[tuple[str, str, str, str, str | None]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)  # failures, lateness, skips
    # A firing over the audience cut short at ``Firing.limit`` members: the place of the
    # last one done, where the next chunk goes on from (None: the firing is complete).
    firing_after: int | None = None

    def __init__(
        self,
        runs: dict[str, Run] | None = None,
        timers: list[Timer] | None = None,
        cancel_timers_of: list[str] | None = None,
        waits: list[EventWait] | None = None,
        cancel_waits_of: list[str] | None = None,
        states: dict[tuple[str, str | None], dict[str, Any]] | None = None,
        members: dict[str, dict[str, Any]] | None = None,
        messages: list[QueuedMessage] | None = None,
        day_counts: dict[tuple[str, str], int] | None = None,
        emitted: list[Event] | None = None,
        queued_starts: list[dict[str, Any]] | None = None,
        dequeued: list[str] | None = None,
        exposures: list[tuple[str, str, str, str, str | None, datetime]] | None = None,
        conversions: list[tuple[str, str, str, str, str | None]] | None = None,
        counters: dict[str, int] | None = None,
        notes: list[dict[str, Any]] | None = None,
        firing_after: int | None = None,
    ) -> None:
        # The generated __init__ with the fields' default factories, as literals: one
        # Decision is made per input, and this takes half the time.
        self.runs = {} if runs is None else runs
        self.timers = [] if timers is None else timers
        self.cancel_timers_of = [] if cancel_timers_of is None else cancel_timers_of
        self.waits = [] if waits is None else waits
        self.cancel_waits_of = [] if cancel_waits_of is None else cancel_waits_of
        self.states = {} if states is None else states
        self.members = {} if members is None else members
        self.messages = [] if messages is None else messages
        self.day_counts = {} if day_counts is None else day_counts
        self.emitted = [] if emitted is None else emitted
        self.queued_starts = [] if queued_starts is None else queued_starts
        self.dequeued = [] if dequeued is None else dequeued
        self.exposures = [] if exposures is None else exposures
        self.conversions = [] if conversions is None else conversions
        self.counters = {} if counters is None else counters
        self.notes = [] if notes is None else notes
        self.firing_after = firing_after

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def note(self, kind: str, **detail: Any) -> None:
        self.notes.append({"kind": kind, **detail})

    def empty(self) -> bool:
        return not (
            self.runs or self.timers or self.cancel_timers_of or self.waits or self.states
            or self.members or self.messages or self.emitted or self.queued_starts or self.dequeued
            or self.exposures or self.conversions or self.counters or self.notes
        )
