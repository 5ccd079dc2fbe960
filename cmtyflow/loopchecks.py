"""Loops a playbook can see statically (SPEC 4): a ``repeat`` of more literal times
than ``policies.max_loop`` (every run fails there), and flows that emit the event that
starts them again, directly or through other flows, with no wait between (each run
starts the next until the runner cuts the chain).
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkbase import CheckContext, RawStep, iter_steps, iter_triggers
from .problems import WARNING, Problem
from .spec.models import Policies
from .spec.sourcemap import Loc


def check_loops(ctx: CheckContext) -> list[Problem]:
    return _check_repeat_times(ctx) + _check_emit_cycles(ctx)


DEFAULT_MAX_LOOP = Policies.model_fields["max_loop"].default


def _max_loop(ctx: CheckContext) -> int | None:
    """policies.max_loop (the folder's defaults merged in), None when it is not a valid
    number (the models report that)."""
    value = ctx.mapping("policies").get("max_loop", DEFAULT_MAX_LOOP)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        return None
    return value


def _check_repeat_times(ctx: CheckContext) -> list[Problem]:
    """A repeat of more literal times than policies.max_loop fails every run at that
    iteration (the engine's bound), after sending what the earlier ones send."""
    limit = _max_loop(ctx)
    if limit is None:
        return []
    found = []
    for step in iter_steps(ctx.data):
        body = step.body.get("repeat") if step.kind == "repeat" else None
        times = body.get("times") if isinstance(body, dict) else None
        if isinstance(times, int) and not isinstance(times, bool) and limit < times <= 10_000:
            found.append(ctx.at(
                (*step.loc, "repeat", "times"),
                f"repeat times {times} is more than policies.max_loop ({limit}): every run would fail here; "
                "raise policies.max_loop or lower times",
            ))
    return found


# runtime.driver.MAX_EMIT_DEPTH: how many events emitted one by the other a runner
# handles from one input before it cuts the chain.
EMIT_CHAIN_CUT = 100


@dataclass(frozen=True)
class _Start:
    """An emit step of ``flow`` whose event a trigger maps to ``target``."""

    flow: str
    emit: RawStep
    event: str
    trigger: str
    target: str
    certain: bool  # False: the emit, or the trigger's start, depends on a condition


def _flow_steps(ctx: CheckContext) -> dict[str, list[RawStep]]:
    steps: dict[str, list[RawStep]] = {}
    for step in iter_steps(ctx.data):
        steps.setdefault(str(step.loc[1]), []).append(step)
    return steps


def _unconditional(step: RawStep, steps: list[RawStep]) -> bool:
    """Whether every run reaches ``step``: no choose, if or while on its way (a stop
    before it is not looked for)."""
    if "choose" in step.loc:
        return False
    by_loc = {s.loc: s for s in steps}
    for n in range(3, len(step.loc) + 1):
        around = by_loc.get(step.loc[:n])
        if around is None:
            continue
        if "if" in around.body:
            return False
        if around.kind == "repeat" and around is not step:
            spec = around.body.get("repeat")
            times = spec.get("times") if isinstance(spec, dict) else None
            if not isinstance(times, int) or isinstance(times, bool) or times < 1:
                return False
    return True


def _waits_before(step: RawStep, steps: list[RawStep]) -> bool:
    """Whether a wait may come before ``step`` the first time a run reaches it: a wait
    earlier in the flow (a repeat's later rounds do not matter, its first does)."""
    index = next(i for i, s in enumerate(steps) if s.loc == step.loc)
    return any(s.kind == "wait" for s in steps[:index])


def _emit_starts(ctx: CheckContext) -> list[_Start]:
    """Each emit that starts a flow of this playbook at the same instant, and so may
    chain: the emitting run reaches it without waiting first, and the started run is not
    dropped for a run of its flow still waiting (mode single or queued: SPEC 3)."""
    steps = _flow_steps(ctx)
    triggers = [
        (t, str(t.get("id")))
        for _loc, kind, t in iter_triggers(ctx.data)
        if kind == "event" and isinstance(t.get("event"), str) and isinstance(t.get("flow"), str)
    ]
    starts = []
    for flow, flow_steps in steps.items():
        for step in flow_steps:
            spec = step.body.get("emit") if step.kind == "emit" else None
            event = spec.get("event") if isinstance(spec, dict) else None
            if not isinstance(event, str) or _waits_before(step, flow_steps):
                continue
            for trigger, tid in triggers:
                target = trigger["flow"]
                if trigger["event"] != event or target not in steps:
                    continue
                mode = trigger.get("mode", "single")
                if mode not in ("restart", "parallel") and any(s.kind == "wait" for s in steps[target]):
                    continue
                certain = _unconditional(step, flow_steps) and "where" not in trigger
                starts.append(_Start(flow, step, event, tid, target, certain))
    return starts


def _check_emit_cycles(ctx: CheckContext) -> list[Problem]:
    """A flow that emits an event that starts it again, directly or through other flows:
    each run starts the next at the same instant until the runner cuts the chain (a dry
    run sent 101 messages). A warning, at the emit's event."""
    starts = _emit_starts(ctx)
    by_flow: dict[str, list[_Start]] = {}
    for start in starts:
        by_flow.setdefault(start.flow, []).append(start)
    found = []
    warned: set[Loc] = set()
    for first in starts:
        path = _path_back(first, by_flow)
        if path is None or first.emit.loc in warned:
            continue
        warned.add(first.emit.loc)
        certain = all(s.certain for s in path)
        links = []
        for n, start in enumerate(path):
            again = " again" if n == len(path) - 1 else ""
            via = f"emits '{start.event}', which " if n else ""
            verb = "starts" if start.certain else "can start"
            links.append(f"{via}{verb} flow '{start.target}'{again} (trigger '{start.trigger}')")
        chain = ", whose run ".join(links)
        each = "each run starts the next" if certain else "each run can start the next"
        found.append(ctx.at(
            (*first.emit.loc, "emit", "event"),
            f"flow '{first.flow}' emits '{first.event}', which {chain}: {each}, "
            f"until the chain is cut at {EMIT_CHAIN_CUT}",
            WARNING,
        ))
    return found


def _path_back(first: _Start, by_flow: dict[str, list[_Start]]) -> list[_Start] | None:
    """The shortest chain of starts from ``first`` back to its own flow, or None."""
    queue: list[list[_Start]] = [[first]]
    seen = {first.target}
    while queue:
        path = queue.pop(0)
        last = path[-1]
        if last.target == first.flow:
            return path
        for start in by_flow.get(last.target, []):
            if start.target not in seen or start.target == first.flow:
                seen.add(start.target)
                queue.append([*path, start])
    return None
