"""Render one send step for one member, as a run would at a given moment
(``cmtyflow preview``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..engine.core import Engine
from ..engine.interp import Interpreter, variant_for, zone
from ..engine.model import Decision, Run
from ..engine.program import Program
from ..engine.txn import Txn
from ..errors import UserError
from ..store.memory import MemoryStore


@dataclass(frozen=True)
class Preview:
    playbook: str
    step: str
    channel: str
    adapter: str
    member: str | None
    variant: str | None
    format: str
    text: str
    to: str | None = None  # the step's `to` when it is not the member: a role, ids, the channel


def send_labels(prog: Program) -> list[str]:
    return [ins.label for instrs in prog.flows.values() for ins in instrs if ins.op == "send"]


def find_step(programs: list[Program], step: str) -> tuple[Program, str, Any]:
    """The playbook, flow and instruction of send step ``step`` (the first with that label)."""
    for prog in programs:
        for flow, instrs in prog.flows.items():
            for ins in instrs:
                if ins.op == "send" and ins.label == step:
                    return prog, flow, ins
    labels = sorted({label for prog in programs for label in send_labels(prog)})
    raise UserError(f"no send step '{step}'; send steps are: {', '.join(labels)}")


def campaign_only(prog: Program, flow: str) -> str | None:
    """The trigger that shows ``flow`` runs for no member when every trigger that
    starts it is a schedule without ``for_each`` (a leaderboard, a weekly post): its
    templates read ``audience``, not ``member``. None when some run of it may be a
    member's (``for_each: audience``, an event or a launch naming a member)."""
    starts = [t for t in prog.playbook.triggers if t.flow == flow]
    if starts and all(t.kind in ("cron", "at") and getattr(t, "for_each", None) is None for t in starts):
        return starts[0].id
    return None


def preview(
    programs: list[Program], step: str, member_id: str | None, members: list[dict[str, Any]], now: datetime,
    state: dict[str, Any] | None = None, variant: str | None = None,
) -> Preview:
    """The message of send step ``step`` for ``member_id``; with ``variant``, that variant
    of an A/B test (else the one the member falls into)."""
    prog, flow, ins = find_step(programs, step)
    store = MemoryStore()
    store.put_members(members)
    member = store.get_member(member_id) if member_id else None
    if member_id and member is None:
        raise UserError(f"member '{member_id}' is not in the roster")
    engine = Engine(programs)
    decision = Decision()
    txn = Txn(store, decision)
    interp = Interpreter(engine, txn, now)
    run = Run(
        id="preview", playbook=prog.name, version=prog.version, flow=flow, member=member_id,
        trigger="preview", mode="single", started_at=now,
        timezone=(member or {}).get("timezone") or prog.playbook.timezone,
    )
    if state:
        if state.get("streak") and "last_checkin" not in state:
            # A streak given alone is the member's current one (SPEC 2 reads a streak as 0
            # once a day has passed without a check-in): the last check-in was today.
            state = {**state, "last_checkin": interp.local(zone(run.timezone, prog.tz))[1].isoformat()}
        txn.state(prog.name, member_id).update(state)
    ctx = interp.context(prog, run)
    spec = ins.step.send
    channel = spec.channel or prog.default_channel or ""
    plan = prog.sends[id(ins)]
    names = [name for name, _ in plan.weights]
    if variant is not None and variant not in names:
        raise UserError(f"step {ins.label} has no variant '{variant}'"
                        + (f"; its variants are {', '.join(names)}" if names else "; it has no variants"))
    variant = variant or variant_for(plan, prog.name, ins.label, member_id or run.id)
    text, fmt = interp._render(prog, plan, variant, member, ctx, prog.channel_formats.get(channel, ("plain",)))  # noqa: SLF001
    to = spec.to if isinstance(spec.to, str) else ", ".join(str(x) for x in spec.to) if spec.to else None
    return Preview(prog.name, ins.label, channel, prog.channel_adapters.get(channel, ""), member_id, variant, fmt, text,
                   None if to == "member" else to)
