"""``cmtyflow plan PATH...``: what an edit to running playbooks does to runs in flight,
before ``run`` picks it up (live edits)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ..runtime import versions
from ..runtime.prepare import adapter_formats, load_programs
from . import EXIT_OK, cli
from .state import format_option, state_option, store_at

SHORT = 12


@click.command("plan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@state_option
@format_option
def plan(paths: tuple[str, ...], state: str | None, fmt: str) -> int:
    """Compare the playbooks on disk with the versions the runner last ran: which
    steps and triggers changed, and, for runs in flight, where they are and which of
    the changes lie ahead of them.

    Runs in flight finish on the version they started on; new runs, and schedules,
    use the new version once `run` is restarted with it.
    """
    result, programs = load_programs(paths)
    store, _ = store_at(state, must_exist=True)
    try:
        plans = versions.plan(store, programs, adapter_formats(result))
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps([asdict(p) for p in plans], ensure_ascii=False, indent=2))
        return EXIT_OK
    for p in plans:
        if p.left_behind:
            click.echo(f"{p.name}: not among the playbooks given; its runs in flight go on to their end, "
                       "each on its version (a runner keeps them going)")
            for group in p.runs:
                click.echo(f"  {group.count} run{'s' if group.count != 1 else ''} of {group.flow} on "
                           f"{group.version[:SHORT]} at {group.at}")
            continue
        assert p.new is not None  # given
        if p.old is None:
            click.echo(f"{p.name}: not run yet; `run` will start it at version {p.new[:SHORT]}")
            continue
        if p.old == p.new and not p.runs:
            click.echo(f"{p.name}: unchanged ({p.new[:SHORT]})")
            continue
        click.echo(f"{p.name}: version {p.old[:SHORT]} -> {p.new[:SHORT]}" if p.old != p.new else f"{p.name}: {p.new[:SHORT]}")
        for change in p.changes:
            click.echo(f"  step {change.flow}/{change.step} {change.change}: {change.detail}")
        for line in p.triggers:
            click.echo(f"  {line}")
        for line in p.other:
            click.echo(f"  {line}")
        if p.old != p.new and not p.changes and not p.triggers and not p.other:
            click.echo("  no step, trigger, setting, channel or template changed (comments or layout did)")
        if not p.runs and not p.unknown_versions:
            click.echo("  no runs in flight on an older version")
        for group in p.runs:
            said = [f"{c.step} {c.change}" for c in group.ahead]
            said += [f"template {t} changed (they send its older text)" for t in group.templates]
            ahead = "; ".join(said) or "no changed step ahead"
            click.echo(
                f"  {group.count} run{'s' if group.count != 1 else ''} of {group.flow} on {group.version[:SHORT]} at "
                f"{group.at}: {ahead}; they finish on {group.version[:SHORT]}"
            )
        if p.unknown_versions:
            click.echo(f"  {p.unknown_versions} runs on a version with no kept copy: they continue on the new version")
    return EXIT_OK


cli.add_command(plan)
