"""Dry run (SPEC 5.5, 6): the real engine and driver on a virtual clock, an in-memory
store and a recording dispatcher.

Rules:
- The span is ``[start, start + days)``: events outside it are ignored (counted),
  messages due after it are counted as pending, not listed.
- The virtual clock jumps from one due instant to the next; at each instant, inputs
  are handled first, then the messages due at that instant are delivered. A message
  to a member who opted out after it was queued is not delivered (SPEC 5.2), unless
  it is urgent.
- Deliveries are handed to ``sink`` one by one in time order, as SPEC 6 jsonl objects.
"""

from __future__ import annotations

import gc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..adapters import registry
from ..clock import VirtualClock
from ..engine.core import Engine
from ..engine.model import Event, QueuedMessage
from ..engine.program import Program
from ..spec.duration import localize
from ..store.base import Store
from ..store.memory import MemoryStore
from . import notes as notes_text
from .collector import collecting_less
from .driver import Driver
from .inputs import RowProblem, read_events, read_roster
from .simulate import Simulation, parse_spec

DELIVERY_BATCH = 5000
# The collector while a dry run runs (Python's default: (700, 10, 10); see
# ``collector``): a youngest generation of a million objects. Nothing a dry run makes
# is cyclic garbage, so the collector has nothing to find meanwhile; what it would
# find (a failing template's traceback) waits at most a million objects.
GC_THRESHOLDS = (1_000_000, 20, 10)
SUMMARY_NOTES = ("run_failed", "input_failed", "empty_message", "unknown_member", "emit_chain_cut", "opt_out_kept",
                 "audience_failed", "trigger_failed")  # the notes ``summary`` reads


def delivery_record(message: QueuedMessage, at: str) -> dict[str, Any]:
    """The SPEC 6 jsonl object; ``at`` is the delivery time as ISO 8601 text."""
    return {
        "kind": "delivery",
        "at": at,
        "playbook": message.playbook,
        "flow": message.flow,
        "step": message.step,
        "channel": message.channel,
        "adapter": message.adapter,
        "member": message.member,
        "to": message.to,
        "text": message.text,
        "variant": message.variant,
    }


@dataclass
class DryRunStats:
    start: datetime
    end: datetime
    days: int
    deliveries: int = 0
    per_day: Counter[str] = field(default_factory=Counter)
    per_step: Counter[str] = field(default_factory=Counter)
    per_channel: Counter[str] = field(default_factory=Counter)
    per_variant: Counter[str] = field(default_factory=Counter)
    per_day_step: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    ignored_events: int = 0
    held_opted_out: int = 0
    held_left: int = 0  # queued, then the member left: cancelled when due
    # Dead-lettered as the run would: the member has not the address their channel's
    # adapter sends to (an email without ``email``), (channel, member) of the first.
    no_address: int = 0
    first_no_address: tuple[str, str, str] | None = None
    inputs: int = 0

    def add(self, record: dict[str, Any]) -> None:
        day = record["at"][:10]
        self.deliveries += 1
        self.per_day[day] += 1
        step = f"{record['playbook']}/{record['step']}"
        self.per_step[step] += 1
        self.per_channel[record["channel"]] += 1
        self.per_day_step[day][step] += 1
        if record["variant"] is not None:
            self.per_variant[f"{step}:{record['variant']}"] += 1


def build_dry_run(
    programs: list[Program],
    *,
    start: datetime,
    days: int,
    roster: str | Path,
    events: str | Path | None,
    simulate: str | None,
    seed: int,
    sink: Callable[[dict[str, Any]], None],
    progress: Callable[[float], None] | None = None,
    repeats: list[RowProblem] | None = None,
) -> tuple[DryRun, list[RowProblem]]:
    """A dry run with its roster, events and synthetic behaviour loaded, as both
    ``cmtyflow dry-run`` and ``cmtyflow test`` run it. Bad input rows are returned,
    not raised; a bad ``simulate`` spec raises ``SimulationSpecError``. Roster rows
    repeating an earlier row's member go to ``repeats`` when given (``read_roster``)."""
    tz_name = programs[0].playbook.timezone
    simulation = Simulation(parse_spec(simulate), seed=seed, default_tz=tz_name) if simulate else None
    sim = DryRun(programs, start=start, days=days, sink=sink, simulation=simulation, progress=progress)
    problems: list[RowProblem] = []
    sim.load_roster(read_roster(roster, problems, repeats))
    if events:
        sim.load_events(read_events(events, problems, ZoneInfo(tz_name)))
    return sim, problems


class DryRun:
    def __init__(
        self,
        programs: list[Program],
        *,
        start: datetime,
        days: int,
        sink: Callable[[dict[str, Any]], None],
        simulation: Simulation | None = None,
        progress: Callable[[float], None] | None = None,
        store: Store | None = None,
    ) -> None:
        self.programs = programs
        self.engine = Engine(programs)
        self.store: Store = store if store is not None else MemoryStore(keep_delivered=False, note_kinds=SUMMARY_NOTES)
        self.driver = Driver(self.engine, self.store)
        self.clock = VirtualClock(start)
        self.start = start
        self.tz = programs[0].tz if programs else None
        # Calendar days in the (first) playbook's timezone (SPEC 2), however --start
        # was written: a week across a DST change ends at the same local time.
        self.end = (
            start + timedelta(days=days) if self.tz is None
            else localize(start.astimezone(self.tz).replace(tzinfo=None) + timedelta(days=days), self.tz)
        )
        self.sink = sink
        self.simulation = simulation
        self.progress = progress
        self.stats = DryRunStats(start, self.end, days)
        self._zones: dict[str, Any] = {}  # playbook -> the zone its delivery times are shown in
        self._steps: dict[tuple[str, str], str] = {}  # (playbook, step) -> "playbook/step"
        self._handles: dict[tuple[str, str], str | None] = {}  # (playbook, channel) -> the address field a member needs
        self._utc_last: tuple[datetime | None, datetime | None] = (None, None)  # see _utc
        self._utc_before: tuple[datetime | None, datetime | None] = (None, None)

    def load_roster(self, members: Iterable[dict[str, Any]]) -> int:
        return self.store.put_members(members)

    def load_events(self, events: Iterable[Event]) -> int:
        # A day of synthetic behaviour is some hundred thousand new objects that all
        # stay queued and hold no cycles: without a pause the cyclic collector walks
        # them again and again while they are being created.
        collecting = gc.isenabled()
        gc.disable()
        try:
            n = 0
            for event in events:
                if self.start <= event.at < self.end:
                    n += self.store.add_event(event)
                else:
                    self.stats.ignored_events += 1
            return n
        finally:
            if collecting:
                gc.enable()

    def run(self) -> DryRunStats:
        with collecting_less(GC_THRESHOLDS):
            return self._run()

    def _run(self) -> DryRunStats:
        driver, store, stats = self.driver, self.store, self.stats
        driver.init_schedules(self.start)
        span = (self.end - self.start).total_seconds()
        generated = self.start  # synthetic events exist for [start, generated)
        # The next message due, kept between instants: past the instant delivered,
        # only handling inputs changes the outbox.
        message_due = store.next_message_due()
        while True:
            instant = driver.next_instant()
            if message_due is not None and (instant is None or self._earlier(message_due, instant)):
                instant = message_due
            if instant is not None and instant < self.start:
                instant = self.start
            if self.simulation is not None and generated < self.end and (instant is None or generated <= instant):
                # Synthetic behaviour comes one day at a time, always ahead of the clock.
                chunk_end = min(generated + timedelta(days=1), self.end)
                self.load_events(self.simulation.events_for(generated, chunk_end, store))
                generated = chunk_end
                continue
            if instant is None or instant >= self.end:
                break
            self.clock.set(instant)
            stats.inputs += driver.process_until(instant)
            message_due = self._deliver(instant)
            if self.progress is not None and span:
                self.progress((instant - self.start).total_seconds() / span)
        if self.progress is not None:
            self.progress(1.0)
        return stats

    def _deliver(self, instant: datetime) -> datetime | None:
        """Deliver what is due at ``instant``; returns when the next message is due."""
        store, stats = self.store, self.stats
        due = store.next_message_due()
        if due is None or self._earlier(instant, due):
            return due
        results: list[tuple[str, str, dict[str, Any]]] = []
        # Messages due at one instant mostly share their time and zone (a schedule's
        # sends): format the time once for them.
        last_at: datetime | None = None
        last_tz: Any = None
        at_text = day = ""
        sent = {"sent_at": instant}
        get_member, sink = store.get_member, self.sink
        zones, steps = self._zones, self._steps
        # stats.add(record) for each record, in place
        per_day, per_step, per_channel = stats.per_day, stats.per_step, stats.per_channel
        per_day_step, per_variant = stats.per_day_step, stats.per_variant
        while True:
            rows = store.claim_due_messages(instant, DELIVERY_BATCH)
            for row in rows:
                message = row.message
                member = get_member(message.member) if message.member else None
                if member is not None and not message.urgent and (member.get("opted_out") or member.get("left")):
                    # As the dispatcher screens a claimed row (``Dispatcher._screen``).
                    if member.get("opted_out"):
                        results.append((message.key, "cancelled", {"last_error": "member opted out"}))
                        stats.held_opted_out += 1
                    else:
                        results.append((message.key, "cancelled", {"last_error": "member left"}))
                        stats.held_left += 1
                    continue
                playbook = message.playbook
                if member is not None:
                    handle = self._handle(playbook, message.channel)
                    if handle is not None and not (isinstance(member.get(handle), str) and member[handle].strip()):
                        # As the adapter does: a permanent failure, dead-lettered.
                        results.append((message.key, "dead", {"last_error": f"member {message.member} has no {handle}"}))
                        stats.no_address += 1
                        if stats.first_no_address is None:
                            stats.first_no_address = (message.channel, str(message.member), handle)
                        continue
                tz = zones.get(playbook)
                if tz is None:
                    tz = zones[playbook] = self._tz_of(message)
                if tz is not last_tz or message.deliver_at != last_at:
                    last_at, last_tz = message.deliver_at, tz
                    at_text = last_at.astimezone(tz).isoformat()
                    day = at_text[:10]
                record = delivery_record(message, at_text)
                step = steps.get((playbook, message.step))
                if step is None:
                    step = steps[(playbook, message.step)] = f"{playbook}/{message.step}"
                stats.deliveries += 1
                per_day[day] += 1
                per_step[step] += 1
                per_channel[message.channel] += 1
                per_day_step[day][step] += 1
                if message.variant is not None:
                    per_variant[f"{step}:{message.variant}"] += 1
                sink(record)
                results.append((message.key, "sent", sent))
            if len(rows) < DELIVERY_BATCH:  # claimed rows stay inflight: none are left
                break
        if results:
            store.finish_messages(results)
        return store.next_message_due()

    def _earlier(self, a: datetime, b: datetime) -> bool:
        """``a < b``. Between datetimes of different zones by their UTC times, each
        converted once: Python's own comparison across zones subtracts the two, which
        costs several times more, and the next message due (often a deferred one, in
        its member's zone) is compared with every instant until it is delivered."""
        if a.tzinfo is b.tzinfo:
            return a < b
        return self._utc(a) < self._utc(b)

    def _utc(self, moment: datetime) -> datetime:
        # The last two datetimes converted, by identity (the references keep them alive).
        if moment is self._utc_last[0]:
            return self._utc_last[1]  # type: ignore[return-value]
        if moment is self._utc_before[0]:
            return self._utc_before[1]  # type: ignore[return-value]
        utc = moment.astimezone(UTC)
        self._utc_before, self._utc_last = self._utc_last, (moment, utc)
        return utc

    def _handle(self, playbook: str, channel: str) -> str | None:
        """The member field the channel's adapter sends to (``needs_handle``), unless the
        channel has one destination (a webhook posts in its channel whoever it names)."""
        key = (playbook, channel)
        if key not in self._handles:
            prog = self.engine.programs.get(playbook)
            adapter = prog.channel_adapters.get(channel) if prog is not None else None
            handle = None
            if adapter is not None and channel not in prog.single_destination:  # type: ignore[union-attr]
                try:
                    handle = registry.get(adapter).capabilities.needs_handle
                except (LookupError, ImportError):
                    handle = None
            self._handles[key] = handle
        return self._handles[key]

    def _tz_of(self, message: QueuedMessage) -> Any:
        prog = self.engine.programs.get(message.playbook)
        return prog.tz if prog is not None else self.tz

    def summary(self) -> dict[str, Any]:
        counters = self.store.counters()
        pending = sum(1 for _ in self.store.outbox(["queued", "failed"]))
        notes = self.store.notes()
        warnings: list[str] = []
        failures = [n for n in notes if n["kind"] == "run_failed"]
        for note in failures[:20]:
            warnings.append(f"run {note['run']} failed at {note['step']}: {note['error']}")
        if len(failures) > 20:
            warnings.append(f"... and {len(failures) - 20} more failed runs")
        set_aside = [n for n in notes if n["kind"] == "input_failed"]
        for note in set_aside[:20]:
            warnings.append(f"set aside: {notes_text.set_aside(note)}")
        if len(set_aside) > 20:
            warnings.append(f"... and {len(set_aside) - 20} more inputs set aside")
        empties = [n for n in notes if n["kind"] == "empty_message"]
        if empties:
            warnings.append(f"{len(empties)} sends rendered empty text and were not queued (first: {empties[0]['playbook']}/{empties[0]['step']})")
        cut = [n for n in notes if n["kind"] == "emit_chain_cut"]
        if cut:
            warnings.append(
                f"{len(cut)} emitted event{' was' if len(cut) == 1 else 's were'} dropped, not handled: a chain of emits went past {cut[0]['reason']} "
                f"(first: {cut[0]['type']}; does a flow emit an event that starts it again?)"
            )
        for kind, what in (("audience_failed", "audience checks"), ("trigger_failed", "trigger filters")):
            failed = [n for n in notes if n["kind"] == kind]
            if failed:
                first = failed[0]
                where = f"trigger '{first['trigger']}', " if kind == "trigger_failed" else ""
                warnings.append(
                    f"{len(failed)} {what} failed and started nothing (first: {first['playbook']}, {where}"
                    f"member {first.get('member')}: {first['error']})"
                )
        unknown = [n for n in notes if n["kind"] == "unknown_member"]
        if unknown:
            warnings.append(f"{len(unknown)} references to members not in the roster (first: {unknown[0]['member']})")
        if self.stats.no_address:
            channel, member, handle = self.stats.first_no_address or ("?", "?", "?")
            n = self.stats.no_address
            warnings.append(
                f"{n} message{'s' if n != 1 else ''} would be dead-lettered, not sent: the member has no address for "
                f"the channel (first: member {member} has no {handle}, channel '{channel}'); add the column to the roster"
            )
        kept = [n for n in notes if n["kind"] == "opt_out_kept"]
        if kept:
            warnings.append(
                f"{len(kept)} event{'s' if len(kept) != 1 else ''} carried opted_out false for a member who had opted out; "
                f"the opt-out was kept (first: {kept[0]['member']}, event {kept[0]['event']}; only member.opted_in undoes one)"
            )
        goals: dict[str, Any] = {}
        for (playbook, goal, step, variant), (exposed, converted) in sorted(self.store.goal_stats().items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "")):
            label = f"{playbook}/{goal}" + (f" after {step}" if step else " per run") + (f" [{variant}]" if variant else "")
            goals[label] = {"reached": converted, "of": exposed}
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "days": self.stats.days,
            "deliveries": self.stats.deliveries,
            "per_day": dict(sorted(self.stats.per_day.items())),
            "per_step": dict(self.stats.per_step.most_common()),
            "per_channel": dict(self.stats.per_channel.most_common()),
            "per_variant": dict(sorted(self.stats.per_variant.items())),
            "deferred": {
                "quiet_hours": counters.get("deferred_quiet_hours", 0),
                "daily_cap": counters.get("deferred_daily_cap", 0),
            },
            "dropped": {k.split(":", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("dropped:")},
            "queued_behind_active": {k.split(":", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("queued:")},
            "runs": {
                "started": counters.get("runs_started", 0),
                "done": counters.get("runs_done", 0),
                "stopped": counters.get("runs_stopped", 0),
                "failed": counters.get("runs_failed", 0),
                "cancelled": counters.get("runs_cancelled", 0),
                "active_at_end": sum(1 for _ in self._active_runs()),
            },
            "skipped": {
                "opted_out": counters.get("skipped_opted_out", 0) + self.stats.held_opted_out,
                "left": counters.get("skipped_left", 0) + self.stats.held_left,
                "outside_audience": counters.get("outside_audience", 0),
                "outside_window": counters.get("outside_window", 0),
                "filtered_by_where": counters.get("filtered", 0),
                "events_outside_span": self.stats.ignored_events,
                "duplicate_events": counters.get("duplicate_events", 0),
            },
            "goals": goals,
            "pending": pending,
            "warnings": warnings,
        }

    def _active_runs(self) -> Iterable[str]:
        return [run.id for run in self.store.runs(status="active")]
