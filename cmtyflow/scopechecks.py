"""Names that are out of scope where a step reads them (SPEC 2), seen statically.

SPEC 2 puts some names in scope only in some runs or after some steps: ``audience``
in campaign runs, ``wait`` once an event wait has ended, ``checkin`` after a checkin
step; ``member`` is none in a campaign run. A step that reads one where it cannot hold
fails its run every time, so validate reports it, as it does a misspelled name.

Rules:
- A flow's runs are member runs when every trigger that starts it is a schedule or
  ``at`` with ``for_each: audience``, campaign runs when every one is a schedule or
  ``at`` without it. An event trigger (a campaign run for an event without a member)
  or a manual one (``launch`` with or without ``--member``) can start either, and then
  neither ``audience`` nor ``member`` is reported.
- ``wait`` is reported in a step when no event wait comes before it in its flow, and
  ``checkin`` when no checkin step does. "Before" is read generously, so that nothing
  is reported that could hold: any step earlier in the file counts (a branch not
  taken included), and so does any step of a ``repeat`` the step is in (a later
  round sees it).
- A source that tests the name (``wait is defined``) is not reported; nor is one that
  reads ``member`` alone as well as its keys (``member.name if member``).
- Problems in a template file point into the file and name the step that uses it.
- The audience's ``where`` is read for a member before any run of theirs exists: it
  sees ``member``, ``vars``, ``roles``, ``now`` and ``today`` only (``state`` there
  failed every check at run time, and the member was left out). A goal's ``where``
  sees ``member``, ``event`` and ``vars``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .checkbase import CheckContext, RawStep, iter_triggers, problem, raw_steps, step_kind
from .expr import SCOPE_NAMES
from .exprcheck import names_out_of_scope
from .problems import Problem
from .spec.sourcemap import Loc
from .textchecks import problems_in_file, send_template_refs, send_texts, step_expressions

MEMBER_RUNS = "member"
CAMPAIGN_RUNS = "campaign"


@dataclass(frozen=True)
class _Place:
    step: RawStep
    flow: str
    reached: frozenset[str]  # of "wait", "checkin": set by a step before this one


def _sets(step: dict[str, Any]) -> set[str]:
    """What running ``step`` (with anything inside it) may put in scope."""
    kind = step_kind(step)
    body = step.get(kind) if kind else None
    out: set[str] = set()
    if kind == "wait" and isinstance(body, dict) and "event" in body:
        out.add("wait")
    elif kind == "checkin":
        out.add("checkin")
    elif kind == "choose" and isinstance(body, list):
        for branch in body:
            if isinstance(branch, dict):
                for key in ("steps", "else"):
                    out |= _sets_all(branch.get(key))
    elif kind == "repeat" and isinstance(body, dict):
        out |= _sets_all(body.get("steps"))
    return out


def _sets_all(steps: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, dict):
                out |= _sets(step)
    return out


def _places(steps: Any, loc: Loc, flow: str, reached: set[str]) -> Iterator[_Place]:
    """Every step of ``steps`` in file order, with what may be set before it; ``reached``
    grows as the walk goes."""
    for raw in raw_steps(steps, loc):
        here, kind, step = raw.loc, raw.kind, raw.body
        body = step.get(kind) if kind else None
        if kind == "repeat" and isinstance(body, dict):
            reached |= _sets_all(body.get("steps"))  # a later round sees what an earlier set
            yield _Place(raw, flow, frozenset(reached))
            yield from _places(body.get("steps"), (*here, "repeat", "steps"), flow, reached)
            continue
        yield _Place(raw, flow, frozenset(reached))
        if kind == "choose" and isinstance(body, list):
            for b, branch in enumerate(body):
                if isinstance(branch, dict):
                    for key in ("steps", "else"):
                        yield from _places(branch.get(key), (*here, "choose", b, key), flow, reached)
        reached |= _sets(step)


def flow_runs(ctx: CheckContext) -> dict[str, tuple[str, str]]:
    """Flow -> (MEMBER_RUNS or CAMPAIGN_RUNS, the id of a trigger that says so), for the
    flows whose triggers all start one kind of run."""
    kinds: dict[str, set[str | None]] = {}
    named: dict[str, str] = {}
    for _loc, kind, trigger in iter_triggers(ctx.data):
        flow = trigger.get("flow")
        if not isinstance(flow, str):
            continue
        if kind in ("cron", "at"):
            runs: str | None = MEMBER_RUNS if trigger.get("for_each") == "audience" else CAMPAIGN_RUNS
        else:
            runs = None
        kinds.setdefault(flow, set()).add(runs)
        named.setdefault(flow, str(trigger.get("id", "?")))
    out: dict[str, tuple[str, str]] = {}
    for flow, found in kinds.items():
        (only,) = found if len(found) == 1 else (None,)
        if only is not None:
            out[flow] = (only, named[flow])
    return out


def _why(place: _Place, runs: tuple[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    undefined: dict[str, str] = {}
    none: dict[str, str] = {}
    flow = place.flow
    if "wait" not in place.reached:
        undefined["wait"] = (
            f"'wait' is undefined here: no event wait of flow '{flow}' comes before this step "
            "(wait is the result of the last 'wait: {event: ...}'); test it with 'wait is defined' "
            "or move the step after the wait"
        )
    if "checkin" not in place.reached:
        undefined["checkin"] = (
            f"'checkin' is undefined here: no checkin step of flow '{flow}' comes before this step"
        )
    if runs is not None and runs[0] == MEMBER_RUNS:
        undefined["audience"] = (
            f"'audience' is undefined here: it is set in campaign runs only, and flow '{flow}' runs "
            f"for one member at a time (trigger '{runs[1]}' has for_each: audience); "
            "read this member through 'member' and 'state'"
        )
    if runs is not None and runs[0] == CAMPAIGN_RUNS:
        none["member"] = (
            f"'member' is none here: flow '{flow}' runs as a campaign, for no member "
            f"(trigger '{runs[1]}' has no for_each: audience); add 'for_each: audience' "
            "to run it once per member, or read members through 'audience'"
        )
    return undefined, none


AUDIENCE_NAMES = ("member", "vars", "roles", "now", "today")
GOAL_NAMES = ("member", "event", "vars")


def _outside(names: tuple[str, ...], where: str) -> dict[str, str]:
    sees = ", ".join(names[:-1]) + " and " + names[-1]
    return {
        name: f"'{name}' is undefined in {where}: it sees {sees} only"
        for name in SCOPE_NAMES if name not in names
    }


def _where_problems(ctx: CheckContext) -> list[Problem]:
    """The audience's and the goals' ``where``: names they never see."""
    found: list[Problem] = []
    sources: list[tuple[tuple[str, ...], Any, dict[str, str]]] = []
    audience = ctx.data.get("audience")
    if isinstance(audience, dict):
        why = _outside(AUDIENCE_NAMES, "the audience's where (it is read for a member before any run of theirs)")
        sources.append((("audience", "where"), audience.get("where"), why))
    for name, goal in ctx.mapping("goals").items():
        if isinstance(goal, dict):
            sources.append((("goals", name, "where"), goal.get("where"), _outside(GOAL_NAMES, f"the where of goal '{name}'")))
    for loc, source, why in sources:
        if isinstance(source, str):
            for p in names_out_of_scope(source, False, why, {}):
                found.append(problem(ctx.smap.text_mark(loc, p.lineno, source), p.message))
    return found


def check_scope(ctx: CheckContext) -> list[Problem]:
    found = _where_problems(ctx)
    flows = ctx.data.get("flows")
    if not isinstance(flows, dict):
        return found
    runs = flow_runs(ctx)
    in_files: set[tuple[str, int, str]] = set()
    for flow, steps in flows.items():
        for place in _places(steps, ("flows", flow), str(flow), set()):
            undefined, none = _why(place, runs.get(str(flow)))
            if not undefined and not none:
                continue
            step = place.step
            for loc, source in step_expressions(step):
                if isinstance(source, str):
                    for p in names_out_of_scope(source, False, undefined, none):
                        found.append(problem(ctx.smap.text_mark(loc, p.lineno, source), p.message))
            send = step.body.get("send") if step.kind == "send" else None
            if not isinstance(send, dict):
                continue
            here = (*step.loc, "send")
            for loc, source in send_texts(here, send):
                if isinstance(source, str):
                    for p in names_out_of_scope(source, True, undefined, none):
                        found.append(problem(ctx.smap.text_mark(loc, p.lineno, source), p.message))
            user = f"step '{step.body['id']}'" if isinstance(step.body.get("id"), str) else f"a step of flow '{flow}'"
            for _loc, name in send_template_refs(here, send):
                for source_file in ctx.templates.get(name, []):
                    uses = names_out_of_scope(source_file.source, True, undefined, none)
                    suffix = f" (used by {user} in playbook {ctx.path.name})"
                    for filed in problems_in_file(str(source_file.path), source_file.source, uses, suffix):
                        key = (filed.path, filed.line, filed.message)
                        if key not in in_files:
                            in_files.add(key)
                            found.append(filed)
    return found
