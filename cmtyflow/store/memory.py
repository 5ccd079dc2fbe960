"""In-memory Store for dry runs and tests: the same protocol as SQLite, in dicts.

Rules: as ``store.base``. Nothing here outlives the process; ``apply`` is atomic by
being a single-threaded sequence of dict updates with no failure points between.
Unlike SqliteStore, finished runs are dropped (``get_run`` and ``runs`` see active runs
only, ``runs(status=None)`` included), inputs are removed when read
(``pending_events``, ``take_event``), and with ``keep_delivered=False`` sent and
cancelled rows leave the outbox and no deliveries are kept.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..engine.model import Decision, Event, EventWait, Run, Timer
from .base import OUTBOX_STATES, REQUEUEABLE, OutboxRow, ScheduleUpdate
from .memory_events import EventQueue


class MemoryStore:
    def __init__(self, *, keep_delivered: bool = True, note_kinds: Collection[str] | None = None) -> None:
        # Dry runs of large rosters keep only what is still pending, and only the notes
        # their summary reads (``note_kinds``; None keeps every note).
        self.keep_delivered = keep_delivered
        self.note_kinds = frozenset(note_kinds) if note_kinds is not None else None
        self._members: dict[str, dict[str, Any]] = {}
        self._progress: dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]] = {}  # see firing_progress
        self._placed: dict[tuple[str | None, str | None], list[tuple[int, str]]] = {}  # see members_from
        self._zones: set[str] = set()
        self._states: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._runs: dict[str, Run] = {}
        self._active: dict[tuple[str, str, str | None], list[str]] = defaultdict(list)
        self._timers: dict[str, Timer] = {}
        # Heaps are keyed by POSIX timestamp: comparing aware datetimes of different
        # zones calls utcoffset() on both, several times per push and pop.
        self._timer_heap: list[tuple[float, str, datetime]] = []
        self._timers_by_run: dict[str, set[str]] = defaultdict(set)
        self._waits: dict[tuple[str, str | None], dict[str, EventWait]] = defaultdict(dict)
        self._waits_of_run: dict[str, list[EventWait]] = defaultdict(list)
        self._day_counts: dict[str, dict[str, int]] = {}  # local date -> member -> count
        self._events_seen: set[str] = set()
        self._events = EventQueue()
        self._schedules: dict[tuple[str, str, str], datetime | None] = {}
        self._outbox: dict[str, OutboxRow] = {}
        self._outbox_heap: list[tuple[float, int, str, datetime]] = []
        self._urgent_heap: list[tuple[float, int, str, datetime]] = []  # urgent rows: claimed first
        self._outbox_seq = 0
        self._queued: dict[tuple[str, str, str | None], list[dict[str, Any]]] = defaultdict(list)
        self._exposures: dict[tuple[str, str], list[tuple[str, str, str | None, datetime]]] = defaultdict(list)
        self._exposed: dict[tuple[str, str, str, str | None], set[str]] = defaultdict(set)
        self._converted: dict[tuple[str, str, str, str | None], set[str]] = defaultdict(set)
        self._counters: dict[str, int] = defaultdict(int)
        self._notes: list[dict[str, Any]] = []
        # the runner's bookkeeping (cheap: dry runs never touch it)
        self._records: list[tuple[int, dict[str, Any]]] = []  # (notes before it, entry)
        self._deliveries: list[dict[str, Any]] = []  # only with keep_delivered
        # Keys whose due time was moved by ``requeue``: their latest heap entry's seq;
        # their older entries are stale. Empty in dry runs, so checked only when not.
        self._moved: dict[str, int] = {}
        self._sending: set[str] = set()  # inflight rows whose call to the platform began
        # The last datetime turned into a timestamp, and its timestamp: timestamp() of an
        # aware datetime costs about a microsecond, and one instant's datetime object is
        # asked for again and again (the events due, the messages its inputs queue, the
        # messages claimed). Compared by identity; the reference keeps it alive.
        self._stamped: tuple[datetime | None, float] = (None, 0.0)

    # StateReader ---------------------------------------------------------------------------------
    def get_member(self, member_id: str) -> dict[str, Any] | None:
        return self._members.get(member_id)

    # The same record object until the member changes: the engine may remember what it
    # worked out from one (``Engine.in_audience``).
    stable_records = True

    def members_from(
        self, after: int, timezone: str | None = None, default_timezone: str | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        # A member's place is its position in the roster, from 1 (members are never
        # removed); the list of a zone is kept until the roster changes, and a chunk goes
        # on from its place by bisection (a firing over the audience asks once a chunk).
        key = (timezone, default_timezone)
        placed = self._placed.get(key)
        if placed is None:
            placed = self._placed[key] = [
                (seq, member["id"]) for seq, member in enumerate(self._members.values(), 1)
                if timezone is None or (member.get("timezone") or default_timezone) == timezone
            ]
        members = self._members
        start = bisect.bisect_right(placed, after, key=lambda item: item[0])
        for seq, member_id in itertools.islice(placed, start, None):
            yield seq, members[member_id]  # the record as it is now

    def iter_members(self, timezone: str | None = None, default_timezone: str | None = None) -> Iterator[dict[str, Any]]:
        for _, member in self.members_from(0, timezone, default_timezone):
            yield member

    def get_state(self, playbook: str, member: str | None) -> dict[str, Any]:
        return self._states.get((playbook, member), _EMPTY)

    def get_run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]:
        return self._active.get((playbook, flow, member), [])

    def event_waits(self, event_type: str, member: str | None) -> Iterable[EventWait]:
        if not self._waits:
            return []
        found = list(self._waits.get((event_type, None), {}).values())
        if member is not None:
            found.extend(self._waits.get((event_type, member), {}).values())
        return found

    def day_count(self, member: str, day: str) -> int:
        counts = self._day_counts.get(day)
        return counts.get(member, 0) if counts is not None else 0

    def exposures(self, playbook: str, member: str) -> Iterable[tuple[str, str, str | None, datetime]]:
        return self._exposures.get((playbook, member), ())

    def queued_starts(self, playbook: str, flow: str, member: str | None) -> list[dict[str, Any]]:
        return self._queued.get((playbook, flow, member), [])

    def active_run_counts(self) -> dict[tuple[str, str, str], int]:
        return dict(Counter((r.playbook, r.version, r.flow) for r in self._runs.values() if r.status == "active"))

    def waiting_starts(self) -> list[dict[str, Any]]:
        return [r for records in self._queued.values() for r in records]

    # roster ----------------------------------------------------------------------------------------
    def put_members(self, members: Iterable[dict[str, Any]]) -> int:
        n = 0
        for member in members:
            current = self._members.get(member["id"])
            if current is None or member.get("timezone", current.get("timezone")) != current.get("timezone"):
                self._placed.clear()  # a place or a zone changes (not a tag: a firing's chunks change those)
            self._members[member["id"]] = {**current, **member} if current else dict(member)
            if member.get("timezone"):
                self._zones.add(member["timezone"])
            n += 1
        return n

    def member_timezones(self) -> set[str]:
        return set(self._zones)

    def member_count(self) -> int:
        return len(self._members)

    # the engine's writes -----------------------------------------------------------------------------
    def apply(
        self,
        decision: Decision,
        *,
        schedules: Iterable[ScheduleUpdate] = (),
        consumed_event: str | None = None,
        consumed_timer: str | None = None,
    ) -> None:
        # One call per input: most decisions fill a few of their fields, so each part
        # is looked at only when there is something in it.
        if consumed_timer is not None:
            self._drop_timer(consumed_timer)
        if decision.cancel_timers_of:
            for rid in decision.cancel_timers_of:
                for tid in list(self._timers_by_run.get(rid, ())):
                    self._drop_timer(tid)
        if decision.cancel_waits_of:
            for rid in decision.cancel_waits_of:
                for wait in self._waits_of_run.pop(rid, []):
                    self._waits[(wait.event_type, wait.member)].pop(rid, None)
        if decision.members:
            self.put_members(decision.members.values())
        if decision.states:
            self._states.update(decision.states)
        if decision.runs:
            for run in decision.runs.values():
                self._put_run(run)
        if decision.timers:
            for timer in decision.timers:
                self._timers[timer.id] = timer
                self._timers_by_run[timer.run].add(timer.id)
                heapq.heappush(self._timer_heap, (timer.due.timestamp(), timer.id, timer.due))
        if decision.waits:
            for wait in decision.waits:
                self._waits[(wait.event_type, wait.member)][wait.run] = wait
                self._waits_of_run[wait.run].append(wait)
        if decision.day_counts:
            all_counts = self._day_counts
            for (member, day), n in decision.day_counts.items():
                counts = all_counts.get(day)
                if counts is None:
                    counts = all_counts[day] = {}
                counts[member] = counts.get(member, 0) + n
        if decision.messages:
            outbox, heap, push = self._outbox, self._outbox_heap, heapq.heappush
            seq = self._outbox_seq
            for message in decision.messages:
                key = message.key
                if key in outbox:
                    self._counters["duplicate_messages"] += 1
                    continue
                outbox[key] = OutboxRow(message, "queued")
                seq += 1
                due = message.deliver_at
                stamped = self._stamped
                item = (stamped[1] if stamped[0] is due else self._stamp(due), seq, key, due)
                push(self._urgent_heap if message.urgent else heap, item)
            self._outbox_seq = seq
        if decision.queued_starts:
            for record in decision.queued_starts:
                self._queued[(record["playbook"], record["flow"], record["member"])].append(record)
        if decision.dequeued:
            for rid in decision.dequeued:
                for records in self._queued.values():
                    records[:] = [r for r in records if r["id"] != rid]
        if decision.exposures:
            for playbook, goal, member, step, variant, at in decision.exposures:
                group = (playbook, goal, step, variant)
                if member not in self._exposed[group]:
                    self._exposed[group].add(member)
                    self._exposures[(playbook, member)].append((goal, step, variant, at))
        if decision.conversions:
            for playbook, goal, member, step, variant in decision.conversions:
                self._converted[(playbook, goal, step, variant)].add(member)
                self._exposures[(playbook, member)] = [
                    e for e in self._exposures.get((playbook, member), [])
                    if not (e[0] == goal and e[1] == step and e[2] == variant)
                ]
        if decision.emitted:
            for event in decision.emitted:
                self.add_event(event)
        counters = self._counters
        for name, n in decision.counters.items():
            counters[name] += n
        if decision.notes:
            if self.note_kinds is None:
                self._notes.extend(decision.notes)
            else:
                self._notes.extend(n for n in decision.notes if n["kind"] in self.note_kinds)
        if schedules:
            self.set_schedules(schedules)
        if consumed_event is not None:
            counters["events_processed"] += 1

    def _put_run(self, run: Run) -> None:
        key = (run.playbook, run.flow, run.member)
        active = self._active[key]
        if run.status == "active":
            self._runs[run.id] = run
            if run.id not in active:
                active.append(run.id)
        else:
            self._runs.pop(run.id, None)
            if run.id in active:
                active.remove(run.id)
            if not active:
                self._active.pop(key, None)

    def _drop_timer(self, timer_id: str) -> None:
        timer = self._timers.pop(timer_id, None)
        if timer is not None:
            ids = self._timers_by_run.get(timer.run)
            if ids is not None:
                ids.discard(timer_id)
                if not ids:
                    self._timers_by_run.pop(timer.run, None)

    # inputs ------------------------------------------------------------------------------------------
    def add_event(self, event: Event) -> bool:
        if event.id in self._events_seen:
            self._counters["duplicate_events"] += 1
            return False
        self._events_seen.add(event.id)
        self._events.add(event)
        return True

    def next_event_at(self) -> datetime | None:
        events = self._events
        head = events._head if events._head_known else events.head()  # noqa: SLF001
        return head[2].at if head is not None else None

    def _stamp(self, moment: datetime) -> float:
        """``moment.timestamp()``, remembered for the last datetime object asked."""
        stamped = self._stamped
        if stamped[0] is moment:
            return stamped[1]
        ts = moment.timestamp()
        self._stamped = (moment, ts)
        return ts

    def pending_events(self, until: datetime, limit: int = 1000) -> list[Event]:
        events = self._events
        head = events._head if events._head_known else events.head()  # noqa: SLF001
        if head is not None and head[2].at is until:  # the usual case: until is the next event's time
            last = head[0]
            self._stamped = (until, last)
        else:
            last = self._stamp(until)
        return events.take_due(last, limit)

    def take_event(self, event_id: str) -> Event | None:
        """The queued event ``event_id``, out of the queue; None when it is not queued."""
        return self._events.take(event_id)

    def _clean_timer_heap(self) -> None:
        while self._timer_heap and self._timer_heap[0][1] not in self._timers:
            heapq.heappop(self._timer_heap)

    def next_timer_due(self) -> datetime | None:
        heap = self._timer_heap
        if not heap:
            return None
        self._clean_timer_heap()
        return heap[0][2] if heap else None

    def due_timers(self, until: datetime, limit: int = 1000) -> list[Timer]:
        out: list[Timer] = []
        if not self._timer_heap:
            return out
        self._clean_timer_heap()
        if not self._timer_heap:
            return out
        popped = []
        last = self._stamp(until)
        while self._timer_heap and self._timer_heap[0][0] <= last and len(out) < limit:
            item = heapq.heappop(self._timer_heap)
            popped.append(item)
            if item[1] in self._timers:
                out.append(self._timers[item[1]])
        for item in popped:  # they stay pending until applied (consumed_timer)
            heapq.heappush(self._timer_heap, item)
        out.sort(key=lambda t: (t.due, t.id))
        return out

    def schedule_positions(self) -> dict[tuple[str, str, str], datetime | None]:
        return dict(self._schedules)

    def set_schedules(self, updates: Iterable[ScheduleUpdate]) -> None:
        for u in updates:
            key = (u.playbook, u.trigger, u.zone)
            self._schedules[key] = u.next_due
            if u.after is not None and u.next_due is not None:
                first = u.started or u.next_due
                self._progress[key] = (u.next_due, u.after, first, u.last or first)
            else:
                self._progress.pop(key, None)

    def firing_progress(self) -> dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]]:
        return dict(self._progress)

    # outbox -------------------------------------------------------------------------------------------
    def next_message_due(self) -> datetime | None:
        tops = [item for item in (self._top(self._urgent_heap), self._top(self._outbox_heap)) if item is not None]
        return min(tops)[3] if tops else None

    def _top(self, heap: list[tuple[float, int, str, datetime]]) -> tuple[float, int, str, datetime] | None:
        """The heap's first entry still queued or failed (stale entries dropped)."""
        while heap:
            _, seq, key, _ = heap[0]
            row = self._outbox.get(key)
            if row is not None and row.status in ("queued", "failed") and (not self._moved or self._moved.get(key, seq) == seq):
                return heap[0]
            heapq.heappop(heap)
        return None

    def claim_due_messages(self, until: datetime, limit: int = 1000) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        last = self._stamp(until)
        moved = self._moved
        outbox, pop = self._outbox, heapq.heappop
        for heap in (self._urgent_heap, self._outbox_heap):  # urgent rows first
            while heap and heap[0][0] <= last and len(out) < limit:
                _, seq, key, _ = pop(heap)
                row = outbox.get(key)
                if row is None or row.status not in ("queued", "failed"):
                    continue
                if moved and moved.get(key, seq) != seq:
                    continue
                row.status = "inflight"
                out.append(row)
        return out

    def claim_due_messages_with_members(self, until: datetime, limit: int = 1000) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        members = self._members
        return [
            (row, members.get(row.message.member) if row.message.member is not None else None)
            for row in self.claim_due_messages(until, limit)
        ]

    def finish_messages(self, results: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        outbox, keep, sent = self._outbox, self.keep_delivered, 0
        try:
            for key, status, fields in results:
                row = outbox[key]
                row.status = status
                if self._sending:
                    self._sending.discard(key)
                for name, value in fields.items():
                    setattr(row, name, value)
                if status == "sent":
                    sent += 1
                    if keep:
                        self._deliveries.append(_delivery(row))
                    else:
                        del outbox[key]
                elif status == "failed" or status == "queued":  # due again: at next_attempt, else as queued
                    self._push(key, row.next_attempt or row.message.deliver_at)
                elif status == "cancelled" and not keep:
                    del outbox[key]
        finally:
            if sent:
                self._counters["messages_sent"] += sent

    def _push(self, key: str, due: datetime) -> None:
        self._outbox_seq += 1
        heap = self._urgent_heap if self._outbox[key].message.urgent else self._outbox_heap
        heapq.heappush(heap, (due.timestamp(), self._outbox_seq, key, due))
        if key in self._moved:
            self._moved[key] = self._outbox_seq

    def outbox(self, statuses: Iterable[str] | None = None) -> Iterator[OutboxRow]:
        wanted = set(statuses) if statuses is not None else None
        for row in self._outbox.values():
            if wanted is None or row.status in wanted:
                yield replace(row)

    # reporting ------------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def notes(self) -> list[dict[str, Any]]:
        return list(self._notes)

    def goal_stats(self) -> dict[tuple[str, str, str, str | None], tuple[int, int]]:
        return {
            group: (len(members), len(self._converted.get(group, ())))
            for group, members in self._exposed.items()
        }

    # the runner -------------------------------------------------------------------------------------------
    def add_events(self, events: Iterable[Event]) -> tuple[int, int]:
        accepted = duplicates = 0
        for event in events:
            if self.add_event(event):
                accepted += 1
            else:
                duplicates += 1
        return accepted, duplicates

    def mark_sending(self, key: str, member: str | None, urgent: bool) -> bool:
        record = self._members.get(member) or {} if member is not None else {}
        if not urgent and (record.get("opted_out") or record.get("left")):
            return False
        self._sending.add(key)
        return True

    def requeue_unstarted(self) -> int:
        unstarted = [k for k, row in self._outbox.items() if row.status == "inflight" and k not in self._sending]
        self.finish_messages([(k, "queued", {}) for k in unstarted])
        return len(unstarted)

    def mark_in_doubt(self) -> list[OutboxRow]:
        found = []
        for row in self._outbox.values():
            if row.status == "inflight":
                row.status = "in_doubt"
                row.attempts += 1  # the call had begun: an attempt
                found.append(replace(row))
        self._sending.clear()
        return found

    def requeue(self, keys: Iterable[str], at: datetime, *, reset_attempts: bool = False) -> int:
        moved = 0
        for key in dict.fromkeys(keys):
            row = self._outbox.get(key)
            if row is None or row.status not in REQUEUEABLE:
                continue
            row.status = "queued"
            row.next_attempt = at
            if reset_attempts:
                row.attempts = 0
            self._moved[key] = -1  # its older heap entries are stale from now on
            self._push(key, at)
            moved += 1
        return moved

    def find_messages(self, prefix: str) -> list[OutboxRow]:
        return [replace(row) for key, row in self._outbox.items() if key.startswith(prefix)]

    def record(self, at: datetime, kind: str, **detail: Any) -> None:
        self._records.append((len(self._notes), {"at": at, "kind": kind, **detail}))

    def iter_audit(self, kinds: Iterable[str]) -> Iterator[dict[str, Any]]:
        yield from self.audit(kinds)

    def audit(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        records, taken = self._records, 0
        for i, note in enumerate(self._notes):
            while taken < len(records) and records[taken][0] <= i:
                entries.append(dict(records[taken][1]))
                taken += 1
            entries.append({"at": note.get("at"), **note})
        entries.extend(dict(entry) for _, entry in records[taken:])
        if kinds is not None:
            wanted = set(kinds)
            entries = [e for e in entries if e["kind"] in wanted]
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        return entries

    def deliveries(self, playbook: str | None = None) -> Iterator[dict[str, Any]]:
        for record in list(self._deliveries):
            if playbook is None or record["playbook"] == playbook:
                yield dict(record)

    def runs(self, *, status: str | None = "active", playbook: str | None = None) -> Iterator[Run]:
        # Finished runs are not kept here: any status but "active" finds nothing new.
        if status not in (None, "active"):
            return
        for run in list(self._runs.values()):
            if playbook is None or run.playbook == playbook:
                yield run

    def outbox_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        counts.update(Counter(row.status for row in self._outbox.values()))
        return counts

    def urgent_waiting(self) -> int:
        return sum(1 for row in self._outbox.values() if row.message.urgent and row.status in ("queued", "failed"))

    def timer_count(self) -> int:
        return len(self._timers)

    def upcoming_timers(self, limit: int = 20) -> list[Timer]:
        return heapq.nsmallest(limit, self._timers.values(), key=lambda t: (t.due.timestamp(), t.id))

    def states(self, playbook: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
        for (pb, member), state in list(self._states.items()):
            if pb == playbook:
                yield member, state

    def close(self) -> None:
        pass


def _delivery(row: OutboxRow) -> dict[str, Any]:
    m = row.message
    return {
        "key": m.key, "at": row.sent_at or m.deliver_at, "playbook": m.playbook, "flow": m.flow,
        "step": m.step, "channel": m.channel, "adapter": m.adapter, "member": m.member, "to": m.to,
        "text": m.text, "variant": m.variant, "platform_id": row.platform_id,
    }


_EMPTY: dict[str, Any] = {}
