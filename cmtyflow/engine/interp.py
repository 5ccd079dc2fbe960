"""The step interpreter: advances one run until it waits or ends (SPEC 4).

Rules:
- Steps run in order; a step whose ``if`` is false is skipped (a skipped choose or
  repeat skips its whole body).
- A failing expression or template fails *this run only*: it is marked failed with
  the step and the reason, and the input's other runs go on (SPEC 2).
- So does a step that breaks on a fault of cmtyflow's own (``FAULTS``: a TypeError, a
  KeyError, ...), with ``internal error: <type>: <message>`` as its reason: one run is
  set aside, not the input, so the runner does not stop at the same input on every
  start. What the step queued before it broke stays in the decision. Anything else (a
  store that cannot be read) still ends the decision, which is then not applied; a
  fault outside any run sets the whole input aside (``Engine.handle``).
- Every execution of an instruction counts an occurrence; the occurrence is part of
  the idempotency key of what the step queues, so a loop's second pass sends anew
  while a replay of the same input sends the same keys (SPEC 5.2).
- ``repeat`` is bounded by ``policies.max_loop`` iterations; past it the run fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from ..expr import GLOBALS, RenderError
from ..spec.duration import next_time_of_day
from .context import MemberView, StateView, checkin_date, record_of
from .model import Event, EventWait, QueuedMessage, Run, Timer, message_key
from .policies import delivery_plan
from .program import Instr, Program
from .txn import Txn


class RunFailed(Exception):
    pass


# Errors that only a fault in cmtyflow makes a step raise (a playbook's own errors are
# RenderError or RunFailed). Not here: the stores' errors (sqlite3, psycopg, OSError).
FAULTS = (ArithmeticError, AssertionError, AttributeError, LookupError, RecursionError, TypeError, ValueError)


def zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    if not name:
        return default
    try:
        return _ZONES[name]
    except KeyError:
        try:
            found = ZoneInfo(name)
        except (ValueError, LookupError, OSError):
            found = default
        _ZONES[name] = found
        return found


_ZONES: dict[str, ZoneInfo] = {}


def variant_for(plan: Any, playbook: str, step: str, recipient: str) -> str | None:
    """The variant of a send for one recipient (a member id, or the run id for a
    channel post): stable across runs, so dry-run, preview and run agree."""
    return pick_variant(plan.weights, f"{playbook}/{step}/{recipient}") if plan.weights else None


def pick_variant(weights: list[tuple[str, float]], seed: str) -> str:
    """Stable weighted choice: the same member gets the same variant on every run."""
    digest = hashlib.sha256(seed.encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(w for _, w in weights)
    for name, weight in weights:
        point -= weight
        if point < 0:
            return name
    return weights[-1][0]


class Interpreter:
    """Runs instructions of one program against a ``Txn``; one per input."""

    def __init__(self, engine: Any, txn: Txn, now: datetime, earliest: datetime | None = None) -> None:
        self.engine = engine
        self.txn = txn
        self.now = now  # the input's time: what `now` and `today` read, what waits count from
        # Messages cannot go before this (the time the input is handled; later than
        # ``now`` for an event taken late, after the runner was down).
        self.earliest = earliest if earliest is not None and earliest > now else now
        # zone -> (now there, its date): a firing starts a run per member of a zone.
        self._local: dict[ZoneInfo, tuple[datetime, Any]] = {}

    def local(self, tz: ZoneInfo) -> tuple[datetime, Any]:
        """``now`` on the wall clock of ``tz``, and its date."""
        found = self._local.get(tz)
        if found is None:
            now = self.now.astimezone(tz)
            found = self._local[tz] = (now, now.date())
        return found

    # context ------------------------------------------------------------------------------
    def context(self, prog: Program, run: Run) -> dict[str, Any]:
        tz = _ZONES.get(run.timezone) or zone(run.timezone, prog.tz)  # zone(), its usual case inline
        local = self._local.get(tz)
        now, today = local if local is not None else self.local(tz)
        member_rec = self.txn.member(run.member) if run.member else None
        ctx: dict[str, Any] = {
            **GLOBALS,  # as ``scope()``, in one step: built for every run
            "member": MemberView(member_rec) if member_rec is not None else None,
            "state": StateView(self.txn.state(prog.name, run.member), today),
            "vars": prog.playbook.vars,
            "roles": prog.playbook.roles,
            "event": run.event,
            "now": now,
            "today": today,
            "run": {
                "id": run.id,
                "started_at": run.started_at,
                "trigger": run.trigger,
                "inputs": run.inputs,
                "flow": run.flow,
                "playbook": prog.name,
            },
        }
        if run.wait is not None:
            ctx["wait"] = run.wait
        if run.checkin is not None:
            ctx["checkin"] = run.checkin
        if run.member is None and prog.uses_audience:  # a campaign run
            ctx["audience"] = self.engine.audience_list(self.txn, prog, self.now)
        return ctx

    # the loop -------------------------------------------------------------------------------
    def advance(self, prog: Program, run: Run) -> None:
        instrs = prog.flows[run.flow]
        end = len(instrs)
        budget = prog.max_loop * (end + 1) + 10
        counted = run.flow not in prog.straight_flows
        occurrences = run.occurrences
        pc = run.pc  # kept equal to run.pc: handlers read and move it
        try:
            ctx = self.context(prog, run)
            while pc < end:
                if counted:
                    budget -= 1
                    if budget < 0:
                        raise RunFailed(
                            f"flow '{run.flow}' ran more than {prog.max_loop * (end + 1) + 10} steps without waiting "
                            f"(about policies.max_loop, {prog.max_loop}, times the flow's length; the steps of "
                            "nested repeats count each round)"
                        )
                ins = instrs[pc]
                op = ins.op
                if op == "jump":
                    pc = run.pc = ins.target
                    continue
                cond = ins.cond
                if cond is not None and not cond.evaluate(ctx):
                    pc = run.pc = ins.target if op in ("choose", "loop") else pc + 1
                    if op == "loop":
                        run.loops.pop(pc, None)
                    continue
                occ = occurrences.get(pc, 0) + 1
                occurrences[pc] = occ
                handler, advances = _HANDLERS[op]
                if handler(self, prog, run, ins, ctx, occ):
                    return  # suspended or stopped
                if advances:  # (these handlers leave run.pc alone)
                    pc += 1
                    run.pc = pc
                else:
                    pc = run.pc
        except (RenderError, RunFailed) as exc:
            self.fail(prog, run, instrs[run.pc].label if run.pc < len(instrs) else run.flow, str(exc))
            return
        except FAULTS as exc:
            where = instrs[run.pc].label if run.pc < len(instrs) else run.flow
            self.fail(prog, run, where, f"internal error: {type(exc).__name__}: {exc}")
            return
        self.finish(prog, run, "done")

    def finish(self, prog: Program, run: Run, status: str, reason: str | None = None) -> None:
        run.status = status
        run.waiting = None
        d = self.txn.decision
        counters = d.counters
        counter = _RUN_COUNTERS.get(status) or f"runs_{status}"
        counters[counter] = counters.get(counter, 0) + 1
        if run.id in d.runs or self.txn.store.get_run(run.id) is not None:
            d.runs[run.id] = run
            d.cancel_timers_of.append(run.id)
            d.cancel_waits_of.append(run.id)
        if reason:
            # as d.note(...): a nightly reminder stops for most members
            d.notes.append({
                "kind": "run_" + status, "playbook": prog.name, "run": run.id, "flow": run.flow,
                "member": run.member, "reason": reason,
            })
        if run.flow in self.engine.queued_flows.get(prog.name, ()):
            self.engine.start_queued(self, prog, run)

    def fail(self, prog: Program, run: Run, step: str, message: str) -> None:
        self.txn.decision.note(
            "run_failed", playbook=prog.name, run=run.id, flow=run.flow, step=step, member=run.member, error=message
        )
        run.status = "failed"
        self.finish(prog, run, "failed")

    # step kinds: each returns True when the run must not go on now -------------------------
    def _send(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        plan = prog.sends[id(ins)]
        fixed = plan.fixed
        if fixed is None:  # what the step and its program fix, read once
            spec = ins.step.send
            channel = spec.channel or prog.default_channel
            if channel is None or channel not in prog.channel_adapters:
                raise RunFailed(f"send has no channel '{channel}'")
            fixed = plan.fixed = (
                channel, spec.to, spec.urgent, prog.channel_formats[channel], prog.channel_adapters[channel],
            )
        channel, to, urgent, formats, adapter = fixed
        if to is None:
            to = "member" if run.member else "channel"
        if to == "member" and run.member is not None:
            recipients: Any = ((run.member, "member"),)  # as _recipients()
        else:
            recipients = self._recipients(prog, run, to)
            if len(recipients) > 1 and channel in prog.single_destination:
                # A role or a list of ids through a group robot or a webhook: one post
                # where they all read it, not the same post once per person.
                recipients = ((None, recipients[0][1] if isinstance(to, str) else "channel"),)
        tz = _ZONES.get(run.timezone) or zone(run.timezone, prog.tz)
        txn = self.txn
        d = txn.decision
        now = self.earliest
        label = ins.label
        goals = prog.playbook.goals
        quiet = prog.quiet
        cap = prog.playbook.policies.max_per_member_per_day
        name, run_id, flow = prog.name, run.id, run.flow
        weights = plan.weights
        for rid, to_label in recipients:
            rec = txn.member(rid) if rid is not None else None
            if rid is not None and rec is None:
                d.note("unknown_member", playbook=name, run=run_id, step=label, member=rid)
                continue
            if rec is not None and not urgent and (rec.get("opted_out") or rec.get("left")):
                # One who left is outside every audience: a run started before gets no
                # further word to them out either.
                d.count("skipped_opted_out" if rec.get("opted_out") else "skipped_left")
                continue
            # as variant_for()
            variant = pick_variant(weights, f"{name}/{label}/{rid or run_id}") if weights else None
            text, fmt = self._render(prog, plan, variant, rec, ctx, formats)
            if not text.strip():
                d.note("empty_message", playbook=name, run=run_id, step=label, member=rid)
                continue
            if urgent:
                deliver_at, deferred, day = now, None, None
            elif rec is None:
                deliver_at, deferred, day = delivery_plan(now, quiet, tz, None, None, _no_count)
            else:
                deliver_at, deferred, day = delivery_plan(
                    now, quiet, tz, cap, zone(rec.get("timezone"), prog.tz), partial(txn.day_count, rid),
                )
            if deferred:
                d.count(f"deferred_{deferred}")
            if day is not None and rid is not None:
                txn.add_day_count(rid, day)
            key = message_key(name, run_id, label, occ, rid if rid is not None else "#" + channel)
            d.messages.append(
                QueuedMessage(
                    key, name, run_id, flow, label, occ, channel, adapter, rid, to_label, text, fmt, variant,
                    urgent, now, deliver_at, deferred,
                )
            )
            # Exposed: the member the run is about, not the moderators a step pages
            # about them (a role or a list of ids), whose own posts would count.
            if to_label == "member" and goals:
                for goal in goals:
                    d.exposures.append((name, goal, rid, label, variant, deliver_at))
        return False

    def _recipients(self, prog: Program, run: Run, to: Any) -> list[tuple[str | None, str]]:
        if isinstance(to, list):
            return [(str(x), str(x)) for x in to]
        if to == "member":
            if run.member is None:
                raise RunFailed("to: member in a campaign run, which has no member")
            return [(run.member, "member")]
        if to == "channel":
            return [(None, "channel")]
        if to.startswith("roles."):
            role = to[len("roles."):]
            if role not in prog.playbook.roles:
                raise RunFailed(f"no role '{role}'")
            return [(mid, to) for mid in prog.playbook.roles[role]]
        return [(to, to)]

    def _render(
        self, prog: Program, plan: Any, variant: str | None, rec: dict[str, Any] | None,
        ctx: dict[str, Any], formats: tuple[str, ...],
    ) -> tuple[str, str]:
        inline = plan.inline.get(variant)
        if inline is not None:
            return inline.render(ctx), "plain"
        name = plan.named[variant]
        rec_locale = rec.get("locale") if rec is not None else None
        member = ctx.get("member")
        if member is None:
            member_locale = None
        elif type(member) is MemberView:
            member_locale = record_of(member).get("locale")  # what member.get("locale") reads
        else:
            member_locale = member.get("locale")
        # The choice depends on these alone (the program's files and locale are fixed).
        question = (name, rec_locale, member_locale, formats)
        picked = prog.picked
        if question in picked:
            found = picked[question]
        else:
            found = picked[question] = self._pick(prog, name, rec_locale, member_locale, formats)
        if found is None:
            locales = _locales(prog, rec_locale, member_locale)
            raise RenderError(f"template '{name}' has no file for locales {locales[:-1]} in formats {list(formats)}")
        template, fmt = found
        return template.render(ctx), fmt

    @staticmethod
    def _pick(
        prog: Program, name: str, rec_locale: Any, member_locale: Any, formats: tuple[str, ...],
    ) -> tuple[Any, str] | None:
        tset = prog.templates.get(name)
        if tset is None:
            return None
        return tset.pick(tuple(_locales(prog, rec_locale, member_locale)), formats)

    def _wait(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        tz = zone(run.timezone, prog.tz)
        d = self.txn.decision
        timer_id = f"{run.id}#{run.pc}.{occ}"
        if ins.duration is not None or ins.until is not None:
            due = ins.duration.add_to(self.now, tz) if ins.duration is not None else next_time_of_day(self.now, ins.until, tz)
            d.timers.append(Timer(timer_id, run.id, due, "wait", self.now))
            run.waiting = {"kind": "timer", "timer": timer_id}
        else:
            step = ins.step.wait
            where = step.where
            member = run.member if (where is None and run.member is not None) else None
            d.waits.append(EventWait(run.id, prog.name, step.event, member, where))
            # ``since`` and ``step`` let reports tell how long the event took (acknowledgement).
            run.waiting = {"kind": "event", "event": step.event, "timer": None, "since": self.now.isoformat(), "step": ins.label}
            if ins.timeout is not None:
                d.timers.append(Timer(timer_id, run.id, ins.timeout.add_to(self.now, tz), "timeout", self.now))
                run.waiting["timer"] = timer_id
        # ``wait`` stays the last event wait's result (SPEC 2) until another event wait
        # ends: a timed wait after it does not take it away.
        d.runs[run.id] = run
        return True

    def _set(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        state = self.txn.state(prog.name, run.member)
        for key, value in ins.values.items():
            plain = _plain(value.evaluate(ctx) if hasattr(value, "evaluate") else value)
            if key in _BUILTIN_KINDS:
                _check_builtin(key, plain)
            state[key] = plain
        return False

    def _tag(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        if run.member is None:
            raise RunFailed(f"{ins.op} in a campaign run, which has no member")
        rec = self.txn.member_for_write(run.member)
        tags = list(rec.get("tags") or [])
        names = ins.step.tag if ins.op == "tag" else ins.step.untag
        for name in names:
            if ins.op == "tag" and name not in tags:
                tags.append(name)
            elif ins.op == "untag" and name in tags:
                tags.remove(name)
        rec["tags"] = tags
        ctx["member"] = MemberView(rec)
        return False

    def _award(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        state = self.txn.state(prog.name, run.member)
        spec = ins.step.award
        if spec.points:
            points = state.get("points", 0)
            if not isinstance(points, (int, float)) or isinstance(points, bool):
                raise RunFailed(f"state.points is {points!r}, not a number: a set step wrote it; award adds to it")
            state["points"] = points + spec.points
        if spec.badge:
            badges = state.setdefault("badges", [])
            if not isinstance(badges, list):
                raise RunFailed(f"state.badges is {badges!r}, not a list: a set step wrote it; award adds to it")
            if spec.badge not in badges:
                badges.append(spec.badge)
        return False

    def _checkin(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        # SPEC 4: once per local day; the streak goes on from yesterday or starts at 1.
        state = self.txn.state(prog.name, run.member)
        today = ctx["today"]
        last = checkin_date(state.get("last_checkin"))  # as state.last_checkin reads
        if last == today:
            run.checkin = {"duplicate": True}
        else:
            streak = (state.get("streak", 0) + 1) if last is not None and (today - last).days == 1 else 1
            state["checkins"] = state.get("checkins", 0) + 1
            state["streak"] = streak
            state["best_streak"] = max(state.get("best_streak", 0), streak)
            state["last_checkin"] = today.isoformat()
            run.checkin = {"duplicate": False}
        ctx["checkin"] = run.checkin
        return False

    def _choose(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        for cond, target in ins.branches:
            if cond is None or cond.evaluate(ctx):
                run.pc = target
                return False
        run.pc = ins.target
        return False

    def _loop(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        at = run.pc
        done = run.loops.get(at, 0)
        if ins.times is not None:
            limit = ins.times.evaluate(ctx) if hasattr(ins.times, "evaluate") else ins.times
            whole = isinstance(limit, int) or (isinstance(limit, float) and limit.is_integer())
            if isinstance(limit, bool) or not whole or limit < 0:
                raise RunFailed(f"repeat times is {limit!r}, not a whole number of 0 or more")
            go = done < int(limit)
        else:
            assert ins.while_ is not None
            go = bool(ins.while_.evaluate(ctx))
        if go:
            if done >= prog.max_loop:
                raise RunFailed(f"repeat ran past policies.max_loop ({prog.max_loop}) iterations")
            run.loops[at] = done + 1
            run.pc = at + 1
        else:
            run.loops.pop(at, None)
            run.pc = ins.target
        return False

    def _emit(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        data = {k: _plain(v.evaluate(ctx) if hasattr(v, "evaluate") else v) for k, v in ins.values.items()}
        member = run.member
        if ins.member_expr is not None:
            value = ins.member_expr.evaluate(ctx)
            if isinstance(value, Mapping) and "id" in value:  # ``member: member``: the member's id
                value = value["id"]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int)) or value == ""):
                raise RunFailed(f"emit member must be a member's id, not {value!r}")
            member = None if value is None else str(value)
        self.txn.decision.emitted.append(
            Event(id=f"{run.id}/{ins.label}/{occ}", type=ins.step.emit.event, at=self.now, member=member, data=data)
        )
        return False

    def _stop(self, prog: Program, run: Run, ins: Instr, ctx: dict[str, Any], occ: int) -> bool:
        self.finish(prog, run, "stopped", ins.step.stop)
        return True


def _locales(prog: Program, rec_locale: Any, member_locale: Any) -> list[Any]:
    """The locales a template is looked for in, best first: the recipient's, the run
    member's, the playbook's, then none."""
    locales: list[Any] = []
    if rec_locale:
        locales.append(rec_locale)
    if member_locale and member_locale not in locales:
        locales.append(member_locale)
    locales.extend([prog.playbook.locale, None])
    return locales


# The built-in state keys a set step may write (SPEC 2), and what each must hold: a
# check-in or an award reads them so, and failed later (an internal TypeError) on
# anything else.
_BUILTIN_KINDS = {
    "points": "a number", "checkins": "a whole number of 0 or more", "streak": "a whole number of 0 or more",
    "best_streak": "a whole number of 0 or more", "last_checkin": "a date (YYYY-MM-DD) or none",
    "badges": "a list of texts",
}


def _check_builtin(key: str, value: Any) -> None:
    if key == "points":
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif key == "last_checkin":
        fits = value is None
        if isinstance(value, str):
            try:
                date.fromisoformat(value)
                fits = len(value) == 10
            except ValueError:
                fits = False
    elif key == "badges":
        fits = isinstance(value, list) and all(isinstance(b, str) for b in value)
    else:
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not fits:
        raise RunFailed(f"state.{key} must be {_BUILTIN_KINDS[key]}, not {value!r}")


def _no_count(day: str) -> int:
    return 0


def _plain(value: Any) -> Any:
    """State holds JSON-able values; dates as ISO text, other objects as text. Exactly
    the types a store gives back: a subclass of text (Jinja's ``Markup``, made by
    ``| e``, whose ``+`` escapes the other side) is plain text, as it comes back from
    SQLite, so that a dry run (which keeps the object) and the runner agree. (An
    expression's iterator, ``| reverse``, is a list already: ``expr.Expression``.)"""
    cls = value.__class__
    if value is None or cls is str or cls is int or cls is float or cls is bool:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):  # a dict, or ``member`` / ``state`` as a whole: their data
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if callable(value):  # lipsum, a macro, cycler(...).next: kept, the text of an address
        raise RunFailed(f"a function or object ({type(value).__name__}) is not a value to keep; call it, or keep what it gives")
    return str(value)


_RUN_COUNTERS = {status: f"runs_{status}" for status in ("done", "stopped", "failed", "cancelled")}

# op -> (handler, whether the run moves to the next instruction after it; the others
# set ``run.pc`` themselves)
_HANDLERS: dict[str, tuple[Any, bool]] = {
    "send": (Interpreter._send, True),
    "wait": (Interpreter._wait, False),
    "set": (Interpreter._set, True),
    "tag": (Interpreter._tag, True),
    "untag": (Interpreter._tag, True),
    "award": (Interpreter._award, True),
    "checkin": (Interpreter._checkin, True),
    "choose": (Interpreter._choose, False),
    "loop": (Interpreter._loop, False),
    "emit": (Interpreter._emit, True),
    "stop": (Interpreter._stop, False),
}
