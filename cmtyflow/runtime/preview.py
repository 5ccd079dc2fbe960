"""Render one send step for one member, as a run would at a given moment
(``cmtyflow preview``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..engine.core import Engine
from ..engine.interp import Interpreter, variant_for
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


def send_labels(prog: Program) -> list[str]:
    return [ins.label for instrs in prog.flows.values() for ins in instrs if ins.op == "send"]


def preview(
    programs: list[Program], step: str, member_id: str | None, members: list[dict[str, Any]], now: datetime,
    state: dict[str, Any] | None = None,
) -> Preview:
    found = [
        (prog, flow, ins)
        for prog in programs for flow, instrs in prog.flows.items() for ins in instrs
        if ins.op == "send" and ins.label == step
    ]
    if not found:
        labels = sorted({label for prog in programs for label in send_labels(prog)})
        raise UserError(f"no send step '{step}'; send steps are: {', '.join(labels)}")
    prog, flow, ins = found[0]
    store = MemoryStore()
    store.put_members(members)
    member = store.get_member(member_id) if member_id else None
    if member_id and member is None:
        raise UserError(f"member '{member_id}' is not in the roster")
    engine = Engine(programs)
    decision = Decision()
    txn = Txn(store, decision)
    if state:
        txn.state(prog.name, member_id).update(state)
    interp = Interpreter(engine, txn, now)
    run = Run(
        id="preview", playbook=prog.name, version=prog.version, flow=flow, member=member_id,
        trigger="preview", mode="single", started_at=now,
        timezone=(member or {}).get("timezone") or prog.playbook.timezone,
    )
    ctx = interp.context(prog, run)
    spec = ins.step.send
    channel = spec.channel or prog.default_channel or ""
    plan = prog.sends[id(ins)]
    variant = variant_for(plan, prog.name, ins.label, member_id or run.id)
    text, fmt = interp._render(prog, plan, variant, member, ctx, prog.channel_formats.get(channel, ("plain",)))  # noqa: SLF001
    return Preview(prog.name, ins.label, channel, prog.channel_adapters.get(channel, ""), member_id, variant, fmt, text)
