"""The engine: (programs, store, now, one input) -> Decision.

Rules (SPEC 3, 5):
- An event first updates the roster when it carries member data, then resolves goal
  conversions, then resumes the runs waiting for it, then fires the event triggers of
  every loaded playbook, in load order and trigger order.
- A member run is started only for a member inside the playbook's audience; an event
  from a member outside it starts nothing and is counted (``outside_audience``).
- Triggers fire only inside the playbook window (local dates, in the firing's
  timezone: a member-local schedule reads the member's calendar).
- ``mode`` decides what a firing does while a run of the same flow for the same member
  (or the same campaign) is active: single drops and counts it, restart cancels the
  active run, queued starts it when the active one ends, parallel starts it anyway.
- A due timer resumes its run after the wait; a stale timer (its run moved on or
  ended) does nothing.
- An input whose handling breaks on a fault of cmtyflow's own outside any one run
  (``interp.FAULTS``; a run's own faults fail that run) is set aside: its decision is
  only an ``input_failed`` note (and, for a due timer, its run failed), so that the
  caller takes it and goes on. A store's errors still propagate.
- A run's id names its playbook, trigger and input (``onboarding/joined:<event id>``,
  ``checkin/nightly@<firing time>:<member>``): the same input handled again starts
  nothing (a replay), and playbooks whose triggers share an id still each start their
  runs (their ids differed only in the playbook, which the run id left out, so the
  second playbook's runs were taken for replays and never started).
- The engine never performs I/O and never reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..expr import RenderError, scope
from ..spec.models import EventTrigger
from .context import MemberView, StateView
from .interp import FAULTS, Interpreter, zone
from .model import Decision, Event, Firing, Launch, Run, TimerDue
from .ports import StateReader
from .program import Program
from .schedule import in_window, in_window_day
from .txn import Txn

# An event type: dotted parts, none empty, no spaces (a trailing space made a trigger
# that never fired). ``validate`` holds playbooks to it, the intake events.
EVENT_TYPE = re.compile(r"[^\s.]+(\.[^\s.]+)*")


def event_type_fault(name: str) -> str | None:
    """Why ``name`` is not an ``EVENT_TYPE`` ("a space", "an empty part between dots"),
    or None when it is one."""
    if EVENT_TYPE.fullmatch(name):
        return None
    return "a space" if any(c.isspace() for c in name) else "an empty part between dots"


# Event types of cmtyflow's own (a launch travels as ``cmtyflow.launch``): refused from
# outside (the intake, imports) and in playbooks (an emit would pose as a launch).
RESERVED_PREFIX = "cmtyflow."

STANDARD_EVENTS = frozenset(
    {
        "member.joined", "member.left", "message.posted", "reaction.added", "report.filed",
        "poll.answered", "member.opted_out", "member.opted_in",
    }
)


class Engine:
    def __init__(self, programs: Iterable[Program], older: Iterable[Program] = ()) -> None:
        """``programs``: the current version of each playbook (they start runs);
        ``older``: earlier versions that runs started on and finish on."""
        self.programs: dict[str, Program] = {p.name: p for p in programs}
        self._versions: dict[tuple[str, str], Program] = {(p.name, p.version): p for p in older}
        # Flows that have a ``mode: queued`` trigger in any version loaded: a run that
        # ends lets a start waiting behind it go, whichever version either is on.
        self.queued_flows: dict[str, frozenset[str]] = {}
        for p in [*self.programs.values(), *self._versions.values()]:
            self.queued_flows[p.name] = self.queued_flows.get(p.name, frozenset()) | p.queued_flows
        self._event_triggers: dict[str, list[tuple[Program, Any]]] = {}
        # playbook -> member id -> (the member record read, in the audience)
        self._audience_cache: dict[str, dict[str, tuple[dict[str, Any], bool]]] = {}
        self._remember_audience = False  # see ``handle``
        self._with_goals = [p for p in self.programs.values() if p.playbook.goals]
        for prog in self.programs.values():
            for trigger in prog.playbook.triggers:
                if isinstance(trigger, EventTrigger):
                    self._event_triggers.setdefault(trigger.event, []).append((prog, trigger))

    def program_for(self, run: Run) -> Program | None:
        """The version ``run`` started on when it is known, else the current one."""
        prog = self.programs.get(run.playbook)
        if prog is not None and prog.version == run.version:
            return prog
        return self._versions.get((run.playbook, run.version), prog)

    # entry point ------------------------------------------------------------------------------
    def handle(self, store: StateReader, now: datetime, item: Any, *, earliest: datetime | None = None) -> Decision:
        """``now`` is the input's time; ``earliest``, when later, is when it is being
        handled: its messages are planned from then (quiet hours, daily cap)."""
        if not isinstance(item, (Event, TimerDue, Firing, Launch)):
            raise TypeError(f"not an engine input: {item!r}")
        decision = Decision()
        txn = Txn(store, decision)
        interp = Interpreter(self, txn, now, earliest)
        # Audience checks are remembered only for a store that hands out the same record
        # object until it changes (``stable_records``: the dry run's); another reads each
        # anew, never hits the cache, and would only fill it.
        self._remember_audience = getattr(store, "stable_records", False)
        try:
            if isinstance(item, Event):
                self._event(interp, item)
            elif isinstance(item, TimerDue):
                self._timer(interp, item)
            elif isinstance(item, Firing):
                self._firing(interp, item)
            else:
                self._launch(interp, item)
        except FAULTS as exc:
            return self._set_aside(store, now, item, exc)
        return decision

    def _set_aside(self, store: StateReader, now: datetime, item: Any, exc: Exception) -> Decision:
        """The decision for an input whose handling broke on a fault of cmtyflow's own
        outside any one run (a run's own faults fail that run, in the interpreter):
        nothing of what it did so far, but a note and a count, so that the input is
        taken (an event or a launch consumed, a firing's schedule moved on) and the
        runner does not stop at it on every start. A timer's run, when it can still be
        read and waits for that timer, fails with the same reason: it would otherwise
        wait for good."""
        reason = f"internal error: {type(exc).__name__}: {exc}"
        decision = Decision()
        detail: dict[str, Any]
        if isinstance(item, Event):
            detail = {"input": "event", "event": item.id, "type": item.type, "member": item.member}
        elif isinstance(item, TimerDue):
            detail = {"input": "timer", "timer": item.timer.id, "run": item.timer.run}
            try:
                run = store.get_run(item.timer.run)
            except FAULTS:
                run = None
            if run is not None and run.status == "active" and run.waiting and run.waiting.get("timer") == item.timer.id:
                decision = self._fail_waiting(store, now, run, reason)
        elif isinstance(item, Firing):
            detail = {"input": "firing", "playbook": item.playbook, "trigger": item.trigger, "due": item.at.isoformat()}
        else:
            detail = {"input": "launch", "playbook": item.playbook, "trigger": item.trigger, "launch": item.id}
        decision.note("input_failed", at=now, **detail, reason=reason)
        decision.count("inputs_failed")
        return decision

    def _fail_waiting(self, store: StateReader, now: datetime, run: Run, reason: str) -> Decision:
        """The decision failing ``run``, whose wait was set aside; as after any run's
        end, the oldest start queued behind it (SPEC 3 ``mode: queued``) goes. If that
        breaks too, the run fails alone and the start waits for the next run's end."""

        def failed() -> tuple[Decision, Run]:
            d = Decision()
            step = (run.waiting or {}).get("step") or run.flow
            d.note("run_failed", playbook=run.playbook, run=run.id, flow=run.flow, step=step, member=run.member, error=reason)
            # A copy: a store may hand out its own object (as Txn.run copies too).
            ended = d.runs[run.id] = replace(run, status="failed", waiting=None)
            d.cancel_timers_of.append(run.id)
            d.cancel_waits_of.append(run.id)
            d.count("runs_failed")
            return d, ended

        decision, ended = failed()
        try:
            prog = self.program_for(ended)
            if prog is not None and ended.flow in self.queued_flows.get(prog.name, ()):
                self.start_queued(Interpreter(self, Txn(store, decision), now, None), prog, ended)
        except FAULTS:
            decision, _ = failed()
        return decision

    # audience ----------------------------------------------------------------------------------
    def in_audience(self, prog: Program, member: dict[str, Any], now: datetime) -> bool:
        if member.get("left"):
            return False
        if prog.audience is None:
            return True
        if prog.audience_static and self._remember_audience:
            # An audience that reads only member data, vars and roles is a function of
            # the member record: remember it until the record changes.
            known = self._audience_cache.get(prog.name)
            if known is None:
                known = self._audience_cache[prog.name] = {}
            cached = known.get(member["id"])
            if cached is not None and cached[0] is member:
                return cached[1]
            result = self._audience_eval(prog, member, now)
            known[member["id"]] = (member, result)
            return result
        return self._audience_eval(prog, member, now)

    def _audience_eval(self, prog: Program, member: dict[str, Any], now: datetime) -> bool:
        assert prog.audience is not None
        tz = zone(member.get("timezone"), prog.tz)
        local = now.astimezone(tz)
        ctx = scope({
            "member": MemberView(member), "vars": prog.playbook.vars, "roles": prog.playbook.roles,
            "now": local, "today": local.date(),
        })
        return bool(prog.audience.evaluate(ctx))

    def audience_list(self, txn: Txn, prog: Program, now: datetime) -> list[MemberView]:
        """The audience as a campaign's templates read it (a leaderboard): each member
        with their state as of their own local date, as their own messages read it
        (SPEC 2: a streak reads 0 once a whole local day passed without a check-in)."""
        out = []
        days: dict[ZoneInfo, date] = {}  # a member's timezone -> today there
        for member in txn.store.iter_members():
            member = txn.decision.members.get(member["id"], member)
            try:
                if not self.in_audience(prog, member, now):
                    continue
            except RenderError:
                continue
            tz = zone(member.get("timezone"), prog.tz)
            today = days.get(tz)
            if today is None:
                today = days[tz] = now.astimezone(tz).date()
            out.append(MemberView(member, StateView(txn.state_read(prog.name, member["id"]), today)))
        return out

    # inputs --------------------------------------------------------------------------------------
    def _timer(self, interp: Interpreter, item: TimerDue) -> None:
        timer = item.timer
        run = interp.txn.run(timer.run)
        if run is None or run.status != "active" or not run.waiting or run.waiting.get("timer") != timer.id:
            interp.txn.decision.count("stale_timers")
            return
        prog = self.program_for(run)
        if prog is None or run.flow not in prog.flows:
            interp.txn.decision.note("run_orphaned", run=run.id, playbook=run.playbook)
            return
        late = (interp.earliest - timer.due).total_seconds()  # handled as of its due time, this much later
        if late >= 1:
            interp.txn.decision.note("late_wait", run=run.id, playbook=run.playbook, late_seconds=late)
        if timer.kind == "timeout":
            run.wait = {"event": None, "timed_out": True}
            interp.txn.decision.cancel_waits_of.append(run.id)
            interp.txn.decision.note(
                "wait_timed_out", playbook=run.playbook, flow=run.flow, step=run.waiting.get("step"), member=run.member,
                run=run.id,
            )
        run.waiting = None
        run.pc += 1
        interp.txn.decision.runs[run.id] = run
        interp.advance(prog, run)

    def _firing(self, interp: Interpreter, item: Firing) -> None:
        prog = self.programs[item.playbook]
        trigger = prog.trigger(item.trigger)
        fire_tz = zone(item.timezone, prog.tz) if item.timezone else zone(getattr(trigger, "timezone", None), prog.tz)
        if not in_window(item.at, prog.window, fire_tz):
            interp.txn.decision.count("outside_window")
            return
        if item.late_by and not item.after:  # said once, at the first chunk
            interp.txn.decision.note("late_firing", playbook=prog.name, trigger=trigger.id, late_seconds=item.late_by)
        run_base = f"{prog.name}/{trigger.id}@{item.at.isoformat()}"
        if trigger.for_each == "audience":
            store = interp.txn.store
            if item.timezone:
                members = store.members_from(item.after, timezone=item.timezone, default_timezone=prog.playbook.timezone)
            else:
                members = store.members_from(item.after)
            changed = interp.txn.decision.members
            last = item.after
            for done, (seq, member) in enumerate(members):
                if item.limit and done == item.limit:
                    # More to come: this chunk ends with the member before (``firing_after``).
                    interp.txn.decision.firing_after = last
                    return
                member = changed.get(member["id"], member)
                self._member_start(interp, prog, trigger, member, f"{run_base}:{member['id']}", None, {})
                last = seq
        else:
            self._campaign_start(interp, prog, trigger, run_base, None, {})

    def _event(self, interp: Interpreter, event: Event) -> None:
        txn = interp.txn
        # A member.left trigger starts a run for the member who just left (to tell the
        # moderators, to note why): the audience is checked as they were. Its non-urgent
        # sends to them do not go (they left), as any run's.
        leaving = False
        if event.type == "member.left" and event.member is not None:
            before = txn.member(event.member)
            leaving = before is not None and not before.get("left")
        if event.member is not None and (event.member_update or event.type in ROSTER_EVENTS):
            self._roster_update(txn, event)
        if event.member is not None and self._with_goals:
            self._goals(interp, event)
        self._resume_waits(interp, event)
        for prog, trigger in self._event_triggers.get(event.type, ()):
            tz = prog.tz
            member = txn.member(event.member) if event.member is not None else None
            if member is not None:
                tz = zone(member.get("timezone"), prog.tz)
                if leaving:
                    member = {k: v for k, v in member.items() if k != "left"}
            if event.at is interp.now:  # the usual case: the local date is the run's
                inside = in_window_day(interp.local(tz)[1], prog.window)
            else:
                inside = in_window(event.at, prog.window, tz)
            if not inside:
                txn.decision.count("outside_window")
                continue
            run_id = f"{prog.name}/{trigger.id}:{event.id}"
            if event.member is None:
                self._campaign_start(interp, prog, trigger, run_id, event, {})
            elif member is None:
                txn.decision.note("unknown_member", playbook=prog.name, trigger=trigger.id, member=event.member)
            else:
                self._member_start(interp, prog, trigger, member, run_id, event, {})

    def _launch(self, interp: Interpreter, item: Launch) -> None:
        prog = self.programs[item.playbook]
        trigger = prog.trigger(item.trigger)
        inputs = {name: spec.default for name, spec in trigger.manual.inputs.items()}
        inputs.update(item.inputs)
        run_id = f"{prog.name}/{trigger.id}:launch:{item.id}"
        member = interp.txn.member(item.member) if item.member is not None else None
        # A manual trigger fires only inside the window too (SPEC 1), by the date the
        # launch was made (it may be handled later).
        tz = zone(member.get("timezone"), prog.tz) if member is not None else prog.tz
        if not in_window(item.at, prog.window, tz):
            interp.txn.decision.count("outside_window")
            interp.txn.decision.note(
                "launch_outside_window", playbook=prog.name, trigger=trigger.id, launch=item.id, member=item.member
            )
            return
        if item.member is None:
            self._campaign_start(interp, prog, trigger, run_id, None, inputs)
            return
        if member is None:
            interp.txn.decision.note("unknown_member", playbook=prog.name, trigger=trigger.id, member=item.member)
            return
        self._member_start(interp, prog, trigger, member, f"{run_id}:{item.member}", None, inputs)

    # starting runs -------------------------------------------------------------------------------
    def _member_start(
        self, interp: Interpreter, prog: Program, trigger: Any, member: dict[str, Any], run_id: str,
        event: Event | None, inputs: dict[str, Any],
    ) -> None:
        d = interp.txn.decision
        try:
            if not self.in_audience(prog, member, interp.now):
                d.count("outside_audience")
                return
        except RenderError as exc:
            d.note("audience_failed", playbook=prog.name, member=member.get("id"), error=str(exc))
            return
        # Positional: a keyword call costs more than the rest of the Run (one per run).
        run = Run(
            run_id, prog.name, prog.version, trigger.flow, member["id"], trigger.id, trigger.mode, interp.now,
            member.get("timezone") or prog.playbook.timezone, 0, {}, {},
            event.as_context() if event is not None else None, inputs,
        )
        self._start(interp, prog, trigger, run)

    def _campaign_start(
        self, interp: Interpreter, prog: Program, trigger: Any, run_id: str, event: Event | None,
        inputs: dict[str, Any],
    ) -> None:
        run = Run(
            run_id, prog.name, prog.version, trigger.flow, None, trigger.id, trigger.mode, interp.now,
            prog.playbook.timezone, 0, {}, {}, event.as_context() if event is not None else None, inputs,
        )
        self._start(interp, prog, trigger, run)

    def _start(self, interp: Interpreter, prog: Program, trigger: Any, run: Run) -> None:
        txn = interp.txn
        d = txn.decision
        if txn.store.get_run(run.id) is not None or run.id in d.runs:
            d.count("duplicate_starts")  # the same input handled twice: SPEC 5.2 replay
            return
        where = prog.trigger_where.get(trigger.id)
        if where is not None:
            ctx = interp.context(prog, run)
            try:
                if not where.evaluate(ctx):
                    d.count("filtered")
                    return
            except RenderError as exc:
                d.note("trigger_failed", playbook=prog.name, trigger=trigger.id, member=run.member, error=str(exc))
                return
        active = txn.active_runs(prog.name, run.flow, run.member)
        if active:
            if trigger.mode == "single":
                d.count(f"dropped:{trigger.id}")
                return
            if trigger.mode == "queued":
                d.queued_starts.append(_start_record(run))
                d.count(f"queued:{trigger.id}")
                return
            if trigger.mode == "restart":
                for rid in active:
                    old = txn.run(rid)
                    if old is not None:
                        interp.finish(prog, old, "cancelled", f"restarted by {trigger.id}")
        counters = d.counters
        counters["runs_started"] = counters.get("runs_started", 0) + 1
        if prog.playbook.goals and run.member is not None:
            for goal in prog.playbook.goals:
                d.exposures.append((prog.name, goal, run.member, "", None, interp.now))
        interp.advance(prog, run)

    def start_queued(self, interp: Interpreter, prog: Program, ended: Run) -> None:
        """SPEC 3 ``mode: queued``: when a run ends, the oldest start waiting behind it runs."""
        if ended.flow not in self.queued_flows.get(prog.name, ()):
            return
        d = interp.txn.decision
        stored = interp.txn.store.queued_starts(prog.name, ended.flow, ended.member)
        if not stored and not d.queued_starts:
            return
        waiting = [r for r in stored if r["id"] not in d.dequeued]
        waiting += [
            r for r in d.queued_starts
            if (r["playbook"], r["flow"], r["member"]) == (prog.name, ended.flow, ended.member) and r["id"] not in d.dequeued
        ]
        if not waiting:
            return
        if interp.txn.active_runs(prog.name, ended.flow, ended.member):
            return  # another run of the flow (a parallel or restart start) is still on: it waits for that one
        record = waiting[0]
        d.dequeued.append(record["id"])
        run = _run_from_record(record, interp.now)
        interp.txn.decision.counters["runs_started"] = interp.txn.decision.counters.get("runs_started", 0) + 1
        # On the version it was queued under (an edit may have come since the run
        # it waited behind started), from its first step on; when that version is not
        # to be had (no copy of it kept), on the current one, and recorded so.
        run_prog = self.program_for(run) or prog
        if run_prog.version != run.version:
            run.version = run_prog.version
        interp.advance(run_prog, run)

    # waits and goals ------------------------------------------------------------------------------
    def _resume_waits(self, interp: Interpreter, event: Event) -> None:
        txn = interp.txn
        for wait in list(txn.store.event_waits(event.type, event.member)):
            run = txn.run(wait.run)
            if run is None or run.status != "active" or not run.waiting or run.waiting.get("kind") != "event":
                continue
            prog = self.program_for(run)
            if prog is None:
                continue
            since = run.waiting.get("since")
            began = datetime.fromisoformat(since) if since else None
            if began is not None and event.at < began:
                # It happened before the wait began (it arrived late): it answers no
                # question asked after it, as a goal does not count it either.
                continue
            if wait.where is not None:
                from ..expr import compile_expression

                ctx = interp.context(prog, run)
                ctx["event"] = event.as_context()
                try:
                    if not compile_expression(wait.where).evaluate(ctx):
                        continue
                except RenderError as exc:
                    interp.fail(prog, run, run.flow, str(exc))
                    continue
            elif wait.member is not None and wait.member != event.member:
                continue
            txn.decision.cancel_waits_of.append(run.id)
            txn.decision.cancel_timers_of.append(run.id)
            txn.decision.note(
                "wait_resolved", playbook=run.playbook, flow=run.flow, step=run.waiting.get("step"), member=run.member,
                run=run.id, by=event.member,
                seconds=(event.at - began).total_seconds() if began is not None else None,
            )
            run.wait = {"event": event.as_context(), "timed_out": False}
            run.waiting = None
            run.pc += 1
            txn.decision.runs[run.id] = run
            interp.advance(prog, run)

    def _goals(self, interp: Interpreter, event: Event) -> None:
        assert event.member is not None
        for prog in self._with_goals:
            goals = prog.playbook.goals
            wanted = {g for g, spec in goals.items() if spec.event == event.type}
            if not wanted:
                continue
            record = interp.txn.member(event.member)
            # Days and weeks are calendar days in the member run's timezone (SPEC 2).
            tz = zone(record.get("timezone") if record else None, prog.tz)
            for goal, step, variant, at in interp.txn.store.exposures(prog.name, event.member):
                if goal not in wanted or at > event.at:
                    continue
                within = prog.goal_within[goal]
                if event.at > within.add_to(at, tz):
                    continue
                where = prog.goal_where.get(goal)
                if where is not None:
                    member = record or {"id": event.member}
                    try:
                        if not where.evaluate({"member": MemberView(member), "event": event.as_context(), "vars": prog.playbook.vars}):
                            continue
                    except RenderError:
                        continue
                interp.txn.decision.conversions.append((prog.name, goal, event.member, step, variant))

    def _roster_update(self, txn: Txn, event: Event) -> None:
        if event.member is None:
            return
        if event.member_update:
            rec = txn.member_for_write(event.member)
            update = {k: v for k, v in event.member_update.items() if k != "id"}
            if rec.get("opted_out") and not update.get("opted_out", True) and event.type != "member.opted_in":
                # SPEC 5.2: a recorded opt-out is undone by a member.opted_in event only,
                # not by member data an event carries (a platform's stale profile).
                del update["opted_out"]
                txn.decision.note("opt_out_kept", member=event.member, event=event.id, type=event.type)
            rec.update(update)
        if event.type == "member.joined":
            rec = txn.member_for_write(event.member)
            if rec.get("left"):
                # False, not removed: the stores merge a member's fields, so a key taken
                # away never reached the stored record (a member who came back stayed gone).
                rec["left"] = False
            rec.setdefault("joined_at", event.at.isoformat())
        elif event.type == "member.left":
            txn.member_for_write(event.member)["left"] = True
        elif event.type == "member.opted_out":
            txn.member_for_write(event.member)["opted_out"] = True
        elif event.type == "member.opted_in":
            txn.member_for_write(event.member)["opted_out"] = False


# The event types _roster_update acts on (besides any event carrying member data).
ROSTER_EVENTS = frozenset({"member.joined", "member.left", "member.opted_out", "member.opted_in"})


def _start_record(run: Run) -> dict[str, Any]:
    return {
        "id": run.id, "playbook": run.playbook, "version": run.version, "flow": run.flow,
        "member": run.member, "trigger": run.trigger, "mode": run.mode, "timezone": run.timezone,
        "event": run.event, "inputs": run.inputs,
    }


def _run_from_record(record: dict[str, Any], now: datetime) -> Run:
    return Run(
        id=record["id"], playbook=record["playbook"], version=record["version"], flow=record["flow"],
        member=record["member"], trigger=record["trigger"], mode=record["mode"], started_at=now,
        timezone=record["timezone"], event=record.get("event"), inputs=record.get("inputs") or {},
    )
