"""The Store protocol (SPEC 5.1): everything durable lives behind it.

Rules:
- ``apply`` writes one engine decision, the schedule position it consumed and the
  event it consumed, all in one transaction: a crash leaves either all of it or
  none of it (SPEC 5.2).
- The outbox is keyed by the message's idempotency key: queuing a key that is
  already there changes nothing, so replaying an input never duplicates a message.
- Outbox states: ``queued`` (waiting for deliver_at), ``inflight`` (claimed by a
  dispatcher), ``sent``, ``failed`` (will retry at ``next_attempt``), ``dead``
  (attempts exhausted or permanent error), ``in_doubt`` (was in flight when the
  process died; SPEC 5.2), ``cancelled`` (opted out or superseded). An ``inflight``
  row whose call to the platform began is also in ``sending`` (``mark_sending``), until
  it is finished; a row left inflight without it was never sent.
- ``finish_messages`` with status ``sent`` also records the delivery (``deliveries``)
  in the same transaction; several results are committed together (group commit).
- Ids and keys are text; a campaign's member is None in the API (stores may keep it
  as they like). Datetimes come back aware, as they went in (UTC is fine).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..engine.model import Decision, Event, QueuedMessage, Run, Timer
from ..engine.ports import StateReader

OUTBOX_STATES = ("queued", "inflight", "sent", "failed", "dead", "in_doubt", "cancelled")
# The statuses ``Store.requeue`` (``cmtyflow outbox retry``) takes a message back from.
REQUEUEABLE = ("failed", "dead", "in_doubt", "cancelled")
# The audit kind that keeps a playbook version's snapshot (runtime/versions.py); never pruned.
VERSION_KIND = "playbook_version"


@dataclass(frozen=True, slots=True)
class ScheduleUpdate:
    playbook: str
    trigger: str
    zone: str
    next_due: datetime | None  # None: this trigger will not fire again (an `at` that fired)
    # A ``for_each: audience`` firing at ``next_due`` under way: the members up to this
    # one (its roster ``seq``) are done, each chunk in its own transaction (``Driver``).
    after: int | None = None
    started: datetime | None = None  # when its first chunk was taken (its chunks are planned from then)
    last: datetime | None = None  # when its last chunk was taken (the catch-up grace counts from then)


@dataclass(slots=True)
class OutboxRow:
    message: QueuedMessage
    status: str
    attempts: int = 0
    next_attempt: datetime | None = None
    last_error: str | None = None
    sent_at: datetime | None = None
    platform_id: str | None = None  # the adapter's receipt, once sent


class Store(StateReader, Protocol):
    # roster -------------------------------------------------------------------------------------
    def put_members(self, members: Iterable[dict[str, Any]]) -> int: ...

    def member_timezones(self) -> set[str]: ...

    def member_count(self) -> int: ...

    # the engine's writes ------------------------------------------------------------------------
    def apply(
        self,
        decision: Decision,
        *,
        schedules: Iterable[ScheduleUpdate] = (),
        consumed_event: str | None = None,
        consumed_timer: str | None = None,
    ) -> None: ...

    # inputs -------------------------------------------------------------------------------------
    def add_event(self, event: Event) -> bool:
        """Queue an event; False (and nothing queued) when its id was seen before."""
        ...

    def next_event_at(self) -> datetime | None: ...

    def pending_events(self, until: datetime, limit: int = 1000) -> list[Event]: ...

    def take_event(self, event_id: str) -> Event | None:
        """Take one queued event by id (an event a run just emitted, handled right
        after its input, SPEC 5.6); None when no such event is queued."""
        ...

    def next_timer_due(self) -> datetime | None: ...

    def due_timers(self, until: datetime, limit: int = 1000) -> list[Timer]: ...

    def schedule_positions(self) -> dict[tuple[str, str, str], datetime | None]: ...

    def set_schedules(self, updates: Iterable[ScheduleUpdate]) -> None: ...

    def firing_progress(self) -> dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]]:
        """The firings under way: position key -> (their due time, the last member done,
        when their first chunk was taken, when their last one was)."""
        ...

    # outbox ---------------------------------------------------------------------------------------
    def next_message_due(self) -> datetime | None: ...

    def claim_due_messages(self, until: datetime, limit: int = 1000) -> list[OutboxRow]:
        """Move due queued/failed rows to inflight and return them: urgent ones first
        (a crisis page does not wait behind a large send queued before it), then
        oldest first."""
        ...

    def claim_due_messages_with_members(
        self, until: datetime, limit: int = 1000
    ) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        """``claim_due_messages``, each row with its member's record as ``get_member``
        returns it (None for a campaign's message or a member not in the roster), read
        with the claim: the dispatcher screens opt-outs and addresses from it."""
        ...

    def finish_messages(self, results: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """(key, new status, fields such as attempts, next_attempt, last_error, sent_at)."""
        ...

    def outbox(self, statuses: Iterable[str] | None = None) -> Iterator[OutboxRow]: ...

    # reporting ------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]: ...

    def notes(self) -> list[dict[str, Any]]: ...

    def goal_stats(self) -> dict[tuple[str, str, str, str | None], tuple[int, int]]:
        """(playbook, goal, step, variant) -> (exposed members, converted members)."""
        ...

    # the runner ---------------------------------------------------------------------------------
    def add_events(self, events: Iterable[Event]) -> tuple[int, int]:
        """Queue several events in one transaction: (accepted, duplicates by id)."""
        ...

    def mark_sending(self, key: str, member: str | None, urgent: bool) -> bool:
        """Record, durably, that the call to the platform for the ``inflight`` row ``key``
        begins now (SPEC 5.2: only such a row is in doubt after a crash). False, and
        nothing recorded, when the message is not urgent and ``member`` has opted out or
        left meanwhile: it must not go (the caller cancels it)."""
        ...

    def requeue_unstarted(self) -> int:
        """Rows left ``inflight`` whose sending never began (claimed, then the process
        stopped) go back to ``queued``; returns how many. Called once at start-up, before
        ``mark_in_doubt``."""
        ...

    def mark_in_doubt(self) -> list[OutboxRow]:
        """Rows left ``inflight`` by a process that stopped without finishing them
        become ``in_doubt``; they are returned (SPEC 5.2). Called once at start-up."""
        ...

    def requeue(self, keys: Iterable[str], at: datetime, *, reset_attempts: bool = False) -> int:
        """Put ``in_doubt``, ``dead``, ``failed`` or ``cancelled`` rows back to
        ``queued``, due at ``at`` (their text unchanged); returns how many moved."""
        ...

    def find_messages(self, prefix: str) -> list[OutboxRow]:
        """Outbox rows whose key starts with ``prefix`` (users type short keys)."""
        ...

    def record(self, at: datetime, kind: str, **detail: Any) -> None:
        """Append to the audit log (runner start/stop, retries, dead letters, commands)."""
        ...

    def audit(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first (the last ``limit`` when given), each
        ``{"at", "kind", **detail}``; decision notes are included with their kinds."""
        ...

    def iter_audit(self, kinds: Iterable[str]) -> Iterator[dict[str, Any]]:
        """As ``audit(kinds)``, read a page at a time (``report`` over a million waits)."""
        ...

    def deliveries(self, playbook: str | None = None) -> Iterator[dict[str, Any]]:
        """Sent messages in the order sent: ``{"key", "at", "playbook", "flow", "step",
        "channel", "adapter", "member", "to", "text", "variant", "platform_id"}``."""
        ...

    def runs(self, *, status: str | None = "active", playbook: str | None = None) -> Iterator[Run]:
        """Runs (any status when ``status`` is None), oldest first."""
        ...

    def active_run_counts(self) -> dict[tuple[str, str, str], int]:
        """Active runs counted by (playbook, version, flow), without reading them one by
        one (a runner's start and ``status`` with a million runs waiting)."""
        ...

    def waiting_starts(self) -> list[dict[str, Any]]:
        """Every start waiting behind an active run (``mode: queued``), oldest first
        within each flow."""
        ...

    def outbox_counts(self) -> dict[str, int]: ...

    def urgent_waiting(self) -> int:
        """Urgent messages queued or failed (to be retried): claimed before any other."""
        ...

    def upcoming_timers(self, limit: int = 20) -> list[Timer]: ...

    def timer_count(self) -> int: ...

    def states(self, playbook: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """(member or None for the campaign, state) of every state kept for ``playbook``."""
        ...

    def close(self) -> None: ...
