"""A loaded playbook compiled for execution: expressions and templates compiled once,
durations parsed once, and each flow flattened into a list of instructions with jumps.

Rules:
- A run's position is one integer (``Run.pc``) into its flow's instruction list, so a
  suspended run persists as plain data.
- ``choose`` becomes a CHOOSE instruction holding (condition, target) pairs plus a
  JUMP at the end of each branch; ``repeat`` becomes LOOP (test and count, exit
  target) with a JUMP back at the end of its body (SPEC 4).
- Step labels: the step's ``id``, else its position (``flow[3]``, nested as
  ``flow[3].choose[0][1]``) (SPEC 6).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from ..expr import Expression, Template, compile_expression, compile_template
from ..spec import models as m
from ..spec.duration import Duration, parse_duration, parse_time_of_day


@dataclass(slots=True)
class Instr:
    op: str  # a step kind, or "choose" / "loop" / "jump"
    label: str  # step label for keys and reports
    step: Any = None  # the step model, for step kinds
    cond: Expression | None = None  # the step's `if`
    branches: list[tuple[Expression | None, int]] = field(default_factory=list)
    target: int = -1  # jump target / loop exit
    times: int | Expression | None = None
    while_: Expression | None = None
    duration: Duration | None = None
    timeout: Duration | None = None
    until: Any = None
    where: Expression | None = None
    values: dict[str, Any] = field(default_factory=dict)  # set / emit data: Expression or literal
    member_expr: Expression | None = None


@dataclass(slots=True)
class SendPlan:
    """A send's bodies by variant (None for a single body): each a template per
    (locale, format) or one inline template."""

    inline: dict[str | None, Template] = field(default_factory=dict)
    named: dict[str | None, str] = field(default_factory=dict)  # variant -> template name
    weights: list[tuple[str, float]] = field(default_factory=list)
    # The interpreter's (channel, to, urgent, formats, adapter) for the step, once read.
    fixed: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)


@lru_cache(maxsize=1024)
def locale_key(locale: str | None) -> str | None:
    """As ``templates._locale_key``: ``zh_CN``, ``zh-cn`` and ``zh-CN`` are one locale."""
    return locale.replace("_", "-").lower() if locale else None


@dataclass(slots=True)
class TemplateSet:
    """Every file of one template name: (locale key or None, format) -> compiled
    template. Locales match as ``templates.pick`` (and so ``validate``) matches them:
    case-insensitively, ``_`` as ``-`` (``zh_cn`` finds ``NAME.zh-CN.txt.j2``)."""

    files: dict[tuple[str | None, str], Template] = field(default_factory=dict)
    # pick() answers by (locales, formats): a send asks the same question for every
    # member of a locale; the files are fixed once compiled.
    picked: dict[tuple[tuple[str | None, ...], tuple[str, ...]], tuple[Template, str] | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def pick(self, locales: tuple[str | None, ...], formats: tuple[str, ...]) -> tuple[Template, str] | None:
        question = (locales, formats)
        if question not in self.picked:
            self.picked[question] = self._pick(locales, formats)
        return self.picked[question]

    def _pick(self, locales: tuple[str | None, ...], formats: tuple[str, ...]) -> tuple[Template, str] | None:
        for locale in locales:
            key = locale_key(locale)
            for fmt in formats:
                found = self.files.get((key, fmt))
                if found is not None:
                    return found, fmt
        return None


@dataclass(slots=True)
class Program:
    name: str
    version: str
    playbook: m.Playbook
    tz: ZoneInfo
    flows: dict[str, list[Instr]]
    sends: dict[int, SendPlan]  # id(Instr) -> plan
    templates: dict[str, TemplateSet]
    audience: Expression | None
    trigger_where: dict[str, Expression]
    channel_adapters: dict[str, str]
    channel_formats: dict[str, tuple[str, ...]]
    goal_where: dict[str, Expression]
    goal_within: dict[str, Duration]
    quiet: tuple[Any, Any] | None
    max_loop: int
    window: tuple[date, date | None] | None  # (first local date, last local date or None)
    at_times: dict[str, datetime] = field(default_factory=dict)
    default_channel: str | None = None
    # Channels with one destination (a group robot, a webhook): a send to a role or a
    # list of ids through one is one post, not the same post once per person.
    single_destination: frozenset[str] = frozenset()
    uses_audience: bool = False
    audience_static: bool = False  # the audience reads only member, vars and roles
    queued_flows: frozenset[str] = frozenset()
    # Flows without a repeat: their runs only ever jump forward, so they cannot pass
    # the interpreter's step budget and it is not counted for them.
    straight_flows: frozenset[str] = frozenset()
    # The interpreter's template choices: (name, recipient's locale, run member's
    # locale, formats) -> (template, format) or None. The files and the playbook's
    # locale are fixed once compiled.
    picked: dict[tuple[Any, ...], tuple[Template, str] | None] = field(default_factory=dict, compare=False, repr=False)

    def trigger(self, trigger_id: str) -> Any:
        for t in self.playbook.triggers:
            if t.id == trigger_id:
                return t
        raise KeyError(trigger_id)


def _expr(src: str | None) -> Expression | None:
    return compile_expression(src) if src is not None else None


def _value(v: Any) -> Any:
    return compile_expression(v) if isinstance(v, str) else v


class _Flattener:
    def __init__(self, flow: str, program_sends: dict[int, SendPlan], single_channel: str | None) -> None:
        self.flow = flow
        self.out: list[Instr] = []
        self.sends = program_sends
        self.single_channel = single_channel

    def emit(self, instr: Instr) -> int:
        self.out.append(instr)
        return len(self.out) - 1

    def steps(self, steps: list[Any], prefix: str) -> None:
        for index, step in enumerate(steps):
            label = step.id or f"{prefix}[{index}]"
            self.step(step, label, f"{prefix}[{index}]")

    def step(self, step: Any, label: str, position: str) -> None:
        kind = step.kind
        cond = _expr(step.if_)
        if kind == "choose":
            at = self.emit(Instr("choose", label, step, cond))
            ends: list[int] = []
            branches: list[tuple[Expression | None, int]] = []
            for b, branch in enumerate(step.choose):
                start = len(self.out)
                branches.append((_expr(branch.if_) if branch.else_ is None else None, start))
                self.steps(branch.body(), f"{position}.choose[{b}]")
                ends.append(self.emit(Instr("jump", label)))
            end = len(self.out)
            for j in ends:
                self.out[j].target = end
            self.out[at].branches = branches
            self.out[at].target = end
            return
        if kind == "repeat":
            spec = step.repeat
            times: int | Expression | None = spec.times
            if isinstance(times, str):
                times = compile_expression(times)
            at = self.emit(Instr("loop", label, step, cond, times=times, while_=_expr(spec.while_)))
            self.steps(spec.steps, f"{position}.repeat")
            back = self.emit(Instr("jump", label))
            self.out[back].target = at
            self.out[at].target = len(self.out)
            return
        instr = Instr(kind, label, step, cond)
        if kind == "wait":
            w = step.wait
            if w.for_ is not None:
                instr.duration = parse_duration(w.for_)
            elif w.until is not None:
                instr.until = parse_time_of_day(w.until)
            else:
                instr.where = _expr(w.where)
                instr.timeout = parse_duration(w.timeout) if w.timeout else None
        elif kind == "set":
            instr.values = {k: _value(v) for k, v in step.set.items()}
        elif kind == "emit":
            instr.values = {k: _value(v) for k, v in step.emit.data.items()}
            instr.member_expr = _expr(step.emit.member)
        elif kind == "send":
            plan = SendPlan()
            spec = step.send
            if spec.variants:
                for name, variant in spec.variants.items():
                    plan.weights.append((name, variant.weight))
                    if variant.text is not None:
                        plan.inline[name] = compile_template(variant.text, f"{label}.variants.{name}")
                    else:
                        plan.named[name] = variant.template or ""
            elif spec.text is not None:
                plan.inline[None] = compile_template(spec.text, label)
            else:
                plan.named[None] = spec.template or ""
            self.sends[id(instr)] = plan
        self.emit(instr)


def compile_program(
    loaded: Any,
    channel_formats: Mapping[str, tuple[str, ...]],
    single_destination: Iterable[str] = (),
) -> Program:
    """``loaded`` is a ``loader.LoadedPlaybook``; ``channel_formats`` maps each adapter
    name to the formats it takes, best first (from the adapter registry);
    ``single_destination`` names its channels that have one destination
    (``adapters.destinations``)."""
    pb: m.Playbook = loaded.playbook
    sends: dict[int, SendPlan] = {}
    single = next(iter(pb.channels)) if len(pb.channels) == 1 else None
    flows: dict[str, list[Instr]] = {}
    for name, steps in pb.flows.items():
        f = _Flattener(name, sends, single)
        f.steps(steps, name)
        flows[name] = f.out
    templates: dict[str, TemplateSet] = {}
    for name, sources in loaded.templates.items():
        ts = TemplateSet()
        for src in sources:
            ts.files.setdefault((locale_key(src.locale), src.format), compile_template(src.source, str(src.path)))
        templates[name] = ts
    tz = ZoneInfo(pb.timezone)
    quiet = None
    if pb.policies.quiet_hours is not None:
        quiet = (parse_time_of_day(pb.policies.quiet_hours.start), parse_time_of_day(pb.policies.quiet_hours.end))
    window = None
    if pb.window is not None:
        window = (pb.window.start, pb.window.last_day())
    at_times: dict[str, datetime] = {}
    for t in pb.triggers:
        if isinstance(t, m.AtTrigger):
            at_times[t.id] = parse_at(t.at, ZoneInfo(t.timezone) if t.timezone and t.timezone != "member" else tz)
    return Program(
        name=pb.name,
        version=loaded.version,
        playbook=pb,
        tz=tz,
        flows=flows,
        sends=sends,
        templates=templates,
        audience=_expr(pb.audience.where) if pb.audience else None,
        trigger_where={t.id: e for t in pb.triggers if (e := _expr(t.where)) is not None},
        channel_adapters={name: ch.adapter for name, ch in pb.channels.items()},
        channel_formats={name: tuple(channel_formats.get(ch.adapter, ("plain",))) for name, ch in pb.channels.items()},
        goal_where={g: e for g, goal in pb.goals.items() if (e := _expr(goal.where)) is not None},
        goal_within={g: parse_duration(goal.within) for g, goal in pb.goals.items()},
        quiet=quiet,
        max_loop=pb.policies.max_loop,
        window=window,
        at_times=at_times,
        default_channel=single,
        single_destination=frozenset(single_destination),
        audience_static=pb.audience is not None and _static_names(pb.audience.where),
        queued_flows=frozenset(t.flow for t in pb.triggers if t.mode == "queued"),
        straight_flows=frozenset(name for name, instrs in flows.items() if all(i.op != "loop" for i in instrs)),
        uses_audience=_uses_audience(loaded),
    )


def _static_names(source: str) -> bool:
    from jinja2 import meta

    from ..expr import ENV

    names = meta.find_undeclared_variables(ENV.parse("{{ (" + source + ") }}"))
    return names <= {"member", "vars", "roles"}


_AUDIENCE_NAME = re.compile(r"\baudience\b(?!\s*:)")


def _uses_audience(loaded: Any) -> bool:
    """Campaign runs build ``audience`` (every member with its state) only when some
    expression or template of the playbook reads it."""
    if _AUDIENCE_NAME.search(loaded.text):
        return True
    return any(_AUDIENCE_NAME.search(src.source) for files in loaded.templates.values() for src in files)


def parse_at(text: str, tz: ZoneInfo) -> datetime:
    """SPEC 2: ISO 8601; without an offset, in the playbook (or trigger) timezone."""
    from ..spec.duration import localize

    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else localize(value, tz)
