"""``cmtyflow dry-run`` (SPEC 6): simulate playbooks over days of virtual time and print
the timeline of deliveries, a summary, and optionally an HTML report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..clock import SystemClock
from ..errors import UserError
from ..runtime.dryrun import build_dry_run
from ..runtime.inputs import RowProblem
from ..runtime.prepare import default_days, load_programs, parse_start
from ..runtime.simulate import SimulationSpecError
from . import EXIT_ERROR, EXIT_OK, cli
from .state import note_repeats
from .timeline import TextTimeline, print_summary


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), transient=True)
    task = bar.add_task("dry-run", total=1.0)
    return bar, lambda fraction: bar.update(task, completed=fraction)


@click.command("dry-run")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--roster", type=click.Path(exists=True, dir_okay=False), required=True, help="members, CSV or JSON lines")
@click.option("--events", "events_file", type=click.Path(exists=True, dir_okay=False), help="events, JSON lines")
@click.option("--start", help="ISO 8601 start (default: the playbook window's first day, else today 00:00)")
@click.option("--days", type=click.IntRange(1, 3660), help="how many days to simulate (default: the window, a day more with `timezone: member`; else 7)")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True)
@click.option("--report", type=click.Path(dir_okay=False), help="also write a self-contained HTML report here")
@click.option("--simulate", help="synthetic behaviour, daily probabilities: checkin=0.7,post=0.2")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for --simulate")
def dry_run(
    paths: tuple[str, ...], roster: str, events_file: str | None, start: str | None, days: int | None,
    fmt: str, report: str | None, simulate: str | None, seed: int,
) -> int:
    """Rehearse playbooks against a roster: what `run` would send, to the second.

    The same engine as `run`, on a virtual clock with an in-memory store; nothing is
    sent. The span is [start, start + days); messages due after it are counted as
    pending. Exits 1 when runs failed or inputs were set aside (each said in the
    warnings): what it shows then leaves their messages out.
    """
    if report and not Path(report).resolve().parent.is_dir():  # before the dry run, not after it
        raise UserError(f"--report {report}: the folder {Path(report).parent} does not exist")
    _, programs = load_programs(paths)
    begin = parse_start(start, programs, SystemClock().now())
    span = days or default_days(programs, begin)
    collected: list[dict[str, Any]] = []
    zones = {p.playbook.timezone for p in programs}
    shared = None if len(zones) == 1 else begin.tzinfo  # several: all in the first playbook's, as --start is
    timeline = TextTimeline(sys.stdout, shared) if fmt == "text" else None

    names: dict[str, str | None] = {}
    repeats: list[RowProblem] = []

    def name_of(member: str) -> str | None:
        """The member's name as the roster has it, for the report's transcript."""
        if member not in names:
            record = sim.store.get_member(member)
            name = record.get("name") if record else None
            names[member] = name if isinstance(name, str) and name.strip() else None
        return names[member]

    def sink(record: dict[str, Any]) -> None:
        if timeline is not None:
            timeline.add(record)
        else:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        if report:
            member = record.get("member")
            name = name_of(member) if isinstance(member, str) else None
            collected.append({**record, "member_name": name} if name else record)

    bar, progress = _progress(sys.stderr.isatty() and fmt == "text")
    try:
        sim, problems = build_dry_run(
            programs, start=begin, days=span, roster=roster, events=events_file, simulate=simulate,
            seed=seed, sink=sink, progress=progress, repeats=repeats,
        )
    except SimulationSpecError as exc:
        raise UserError(f"--simulate: {exc}") from None
    for problem in problems:
        click.echo(f"{problem}: row skipped", err=True)
    note_repeats(repeats)
    if bar is not None:
        with bar:
            sim.run()
    else:
        sim.run()
    summary = sim.summary()
    summary["input_problems"] = len(problems)
    if timeline is not None:
        timeline.close()
        print_summary(sys.stdout, summary)
    else:
        sys.stdout.write(json.dumps({"kind": "summary", **summary}, ensure_ascii=False) + "\n")
    if report:
        from ..runtime.report_html import write_report

        title = ", ".join(p.playbook.title or p.name for p in programs)
        try:
            write_report(Path(report), collected, summary, title=f"{title}: dry run", lang=programs[0].playbook.locale)
        except OSError as exc:
            raise UserError(f"--report {report}: cannot write it: {exc.strerror or exc}") from None
        click.echo(f"report written to {report}", err=True)
    failed = summary["runs"]["failed"]
    set_aside = sum(1 for note in sim.store.notes() if note["kind"] == "input_failed")
    if failed or set_aside:
        said = " and ".join(part for part in (
            f"{failed} run{'s' if failed != 1 else ''} failed" if failed else "",
            f"{set_aside} input{'s were' if set_aside != 1 else ' was'} set aside" if set_aside else "",
        ) if part)
        click.echo(f"error: {said} (see the warnings): what `run` would send includes their messages only once "
                   "they are fixed", err=True)
        return EXIT_ERROR
    return EXIT_OK


cli.add_command(dry_run)
