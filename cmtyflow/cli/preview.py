"""``cmtyflow preview PLAYBOOK STEP --member ID``: render one message."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..clock import SystemClock
from ..errors import UserError
from ..expr import RenderError
from ..runtime.inputs import RowProblem, json_value, read_roster
from ..runtime.prepare import load_programs, parse_start
from ..runtime.preview import campaign_only, find_step, preview
from . import EXIT_OK, cli


@click.command("preview")
@click.argument("playbook", type=click.Path(exists=True))
@click.argument("step")
@click.option("--member", "member_id", help="the member the message is for (omit for a channel post)")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False), help="members, CSV or JSON lines")
@click.option("--at", "at", help="render as of this ISO 8601 time (default: now)")
@click.option("--member-state", "--state", "state_json",
              help='the member\'s playbook state to render with, JSON, e.g. \'{"streak": 7, "points": 30}\' (a '
                   'streak without last_checkin is read as current: the last check-in today). Not a state file: '
                   'preview reads no store')
@click.option("--variant", help="the variant of an A/B test to render (default: the one the member falls into)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def preview_cmd(
    playbook: str, step: str, member_id: str | None, roster: str | None, at: str | None,
    state_json: str | None, variant: str | None, fmt: str,
) -> int:
    """Render the message of send step STEP (its id, or flow[N]) for one member."""
    _, programs = load_programs([playbook])
    now = parse_start(at, programs, SystemClock().now(), option="--at") if at else SystemClock().now()
    problems: list[RowProblem] = []
    members = list(read_roster(roster, problems)) if roster else []
    if member_id and not roster:
        members = [{"id": member_id}]
        click.echo(f"note: no --roster, so {member_id} has an id and nothing else: member.name and the other "
                   "fields read as empty", err=True)
    if member_id:
        prog, flow, _ = find_step(programs, step)
        trigger = campaign_only(prog, flow)
        if trigger is not None:
            click.echo(f"note: flow {flow} runs for no member (trigger {trigger} has no for_each), so --member "
                       f"{member_id} is not used: the step is rendered as its runs post it", err=True)
            member_id = None  # rendered as its runs are, for no member
    state = None
    if state_json:
        try:
            state = json_value(state_json)
        except ValueError as exc:
            hint = ""
            if state_json.endswith(".db") or "/" in state_json or state_json.startswith("postgres"):
                hint = " (it reads like a state file: preview reads no store; give the member's state as JSON)"
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise UserError(f"--member-state is not JSON: {reason}{hint}") from None
        if not isinstance(state, dict):
            raise UserError("--member-state must be a JSON object")
    try:
        result = preview(programs, step, member_id, members, now, state, variant)
    except RenderError as exc:
        raise UserError(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(asdict(result), ensure_ascii=False))
    else:
        variant = f" variant {result.variant}" if result.variant else ""
        # Who the step sends to: a role, ids or the channel when it says so (the header
        # named the member the preview was rendered for).
        to = (f"#{result.channel}" if result.to == "channel" else result.to) or result.member or f"#{result.channel}"
        click.echo(f"{result.playbook}/{result.step}{variant} -> {to} via {result.channel} ({result.adapter}, {result.format})")
        click.echo(result.text)
    return EXIT_OK


cli.add_command(preview_cmd)
