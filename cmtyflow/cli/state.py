"""Commands that feed or change the store without running playbooks (SPEC 6):
``members import|list``, ``emit``, ``events import``, ``launch``.

Rules:
- Every store command takes ``--state`` (else CMTYFLOW_STATE, else
  .cmtyflow/state.db). Commands that only read refuse a store that does not exist
  yet instead of creating an empty one.
- They write to the store directly (a running runner picks the change up within its
  poll interval); a launch is queued as an input the runner takes, in order, once.
- ``--format json`` prints one JSON document for scripts; text is for people.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from ..clock import SystemClock
from ..engine.model import Launch
from ..engine.program import Program
from ..errors import UserError
from ..problems import plural
from ..runtime.driver import launch_event
from ..runtime.inputs import (
    DuplicateKey,
    RowProblem,
    json_value,
    parse_event,
    quoted,
    read_events,
    read_roster,
)
from ..store.base import Store
from ..store.open import open_store, shown, state_location
from . import EXIT_ERROR, EXIT_OK, cli
from .columns import pad, text_width

F = Callable[..., Any]

state_option = click.option(
    "--state", metavar="PATH|URL",
    help="the store: an SQLite file or a postgresql:// URL (default: CMTYFLOW_STATE, else .cmtyflow/state.db)",
)
format_option = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
IMPORT_BATCH = 5000  # rows (events or members) per transaction of an import
PROGRESS_EVERY = 100_000  # rows between an import's progress lines


class Stops:
    """Ctrl-C and SIGTERM during a long import or prune (``terminated_as_interrupted``).
    Inside ``held()`` (a batch's commit and its count) a stop waits until both are
    done, so that the note's count is what was committed; a second one stops as soon
    as Python code runs again (SQLite's own wait for another writer's lock, up to
    10 s, is not cut short: signals are handled when it returns)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def signal(self, signum: int, frame: Any) -> None:
        if self.holding and not self.pending:  # a second one stops at once
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise KeyboardInterrupt


@contextlib.contextmanager
def terminated_as_interrupted() -> Iterator[Stops]:
    """A SIGTERM (kill, systemd stopping a timer's job) stops a long import or prune as
    Ctrl-C does: the transaction under way is rolled back, or finished when it is
    committing (``Stops.held``), and the note says how far it got (it ended the process
    at once, without a word)."""
    stops = Stops()
    try:
        previous = {sig: signal.signal(sig, stops.signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (a test's, an embedding program's): as it was
        yield stops
        return
    try:
        yield stops
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def store_at(state: str | None, *, must_exist: bool = False) -> tuple[Store, str]:
    location = state_location(state, os.environ)
    if must_exist and "://" not in location:
        path = Path(location)
        # An empty file holds no state either: opening it would write a schema into it.
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            empty = " (an empty file)" if path.exists() else ""
            raise UserError(f"no state at {location}{empty} yet: import members or start `cmtyflow run` first (or pass --state)")
    return open_store(location, must_exist=must_exist), location


def _zone(name: str | None) -> ZoneInfo:
    name = name or os.environ.get("TZ") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"unknown timezone '{name}'") from None


timezone_option = click.option(
    "--timezone", "tz_name", metavar="IANA",
    help="timezone of times written without an offset (default: the playbooks' own, when the runner's "
         "playbooks share one, as SPEC 2 reads them; else TZ; else such a time is refused)",
)


def _event_zone(store: Store, tz_name: str | None) -> ZoneInfo | None:
    """What an event's time without an offset is in: --timezone; else the playbooks'
    timezone when every playbook run on this state has the same one (the intake reads
    it so, in the runner's playbooks); else TZ. None when none of them says (a state no
    runner has run on, without TZ): such a time is refused, not read as UTC (an import
    before the first run put every event 8 hours off for a Shanghai playbook, silently,
    where the dry run read them in the playbook's timezone)."""
    if tz_name:
        return _zone(tz_name)
    from ..runtime.versions import playbook_zones

    zones = set(playbook_zones(store).values())
    if len(zones) == 1:
        return _zone(zones.pop())
    return _zone(None) if os.environ.get("TZ") else None


# members ----------------------------------------------------------------------------------------


@cli.group("members")
def members() -> None:
    """The roster: import members, list them."""


@members.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@state_option
def members_import(file: str, state: str | None) -> int:
    """Add or update members from a CSV (header row, `id` required) or JSON-lines file.

    Existing members are updated field by field; nobody is removed. Bad rows are
    reported with their line and skipped (exit 1 when there were any).
    """
    store, location = store_at(state)
    try:
        with terminated_as_interrupted() as stops:
            done = import_roster(store, file, held=stops.held)
    finally:
        store.close()
    members_text = f"{done.members} members ({done.rows} rows)" if done.repeats else f"{done.members} members"
    click.echo(f"imported {members_text} into {shown(location)}" + (f"; {len(done.problems)} rows skipped" if done.problems else ""))
    return EXIT_ERROR if done.problems else EXIT_OK


@dataclass
class RosterImport:
    rows: int = 0  # rows imported (a member's repeated rows counted each)
    problems: list[RowProblem] = field(default_factory=list)  # rows skipped
    repeats: list[RowProblem] = field(default_factory=list)  # rows naming a member an earlier row named
    kept: list[str] = field(default_factory=list)  # opted out in the state, opted_out false in the file

    @property
    def members(self) -> int:
        return self.rows - len(self.repeats)


def import_roster(store: Store, file: str, held: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext) -> RosterImport:
    """``members import`` and ``run --roster``: the rows of ``file`` into the roster,
    ``IMPORT_BATCH`` at a time, each batch its own transaction, so that a runner (or an
    ``emit``) beside it waits a moment at most, never for the whole import. A row saying
    ``opted_out: false`` for a member who opted out keeps the opt-out (SPEC 5.2: an
    older export of the roster must not undo it; the member opts back in by a
    ``member.opted_in`` event). Rows skipped, repeated and kept from undoing an opt-out
    are said on stderr. Stopped part way (Ctrl-C, a broken file), it says how far it
    got: importing the file again finishes it, since a row updates its member."""
    done = RosterImport()
    opted_out = {m["id"] for m in store.iter_members() if m.get("opted_out")}
    batch: list[dict[str, Any]] = []
    try:
        for row in read_roster(file, done.problems, done.repeats):
            if row.get("opted_out") is False and row["id"] in opted_out:
                row = {k: v for k, v in row.items() if k != "opted_out"}
                done.kept.append(row["id"])
            batch.append(row)
            if len(batch) >= IMPORT_BATCH:
                with held():  # a stop waits for the count of what was committed
                    done.rows += store.put_members(batch)
                batch = []
                if done.rows % PROGRESS_EVERY == 0:
                    click.echo(f"... {done.rows} rows imported", err=True)
        if batch:
            with held():
                done.rows += store.put_members(batch)
    except (UserError, KeyboardInterrupt) as exc:
        if done.rows:
            so_far = (f"the {done.rows} rows before it were imported" if isinstance(exc, UserError)
                      else f"stopped after importing {done.rows} rows")
            click.echo(f"note: {so_far}; import the file again to finish (a row updates its member, "
                       "it never adds one twice)", err=True)
        raise
    finally:
        _said(done)
    return done


def _said(done: RosterImport) -> None:
    for problem in done.problems:
        click.echo(f"{problem}: row skipped", err=True)
    note_repeats(done.repeats)
    kept = done.kept
    if kept:
        click.echo(
            f"kept the opt-out of {len(kept)} member{'s' if len(kept) != 1 else ''} the file says have not opted out "
            f"({', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''}): an opt-out is undone only by a "
            "member.opted_in event (cmtyflow emit member.opted_in --member ID)",
            err=True,
        )


@members.command("list")
@state_option
@click.option("--tag", help="only members with this tag")
@click.option("--limit", type=click.IntRange(1), help="at most this many")
@format_option
def members_list(state: str | None, tag: str | None, limit: int | None, fmt: str) -> int:
    """Members in roster order, with timezone, tags and opt-out."""
    store, _ = store_at(state, must_exist=True)
    try:
        # Streamed from the store, twice for a table (its widths, then its rows): a
        # roster of 200,000 held whole took 400-790 MB to print.
        if fmt == "json":
            first = True
            for member in _listed(store, tag, limit):
                item = json.dumps(member, ensure_ascii=False, default=str, indent=2).replace("\n", "\n  ")
                click.echo(("[\n  " if first else ",\n  ") + item, nl=False)
                first = False
            click.echo("[]" if first else "\n]")
            return EXIT_OK
        header = ("id", "name", "timezone", "tags", "opted out")
        widths = [text_width(h) for h in header]
        count = 0
        for cells in map(_member_cells, _listed(store, tag, limit)):
            widths = [max(w, text_width(c)) for w, c in zip(widths, cells, strict=True)]
            count += 1
        if not count:
            click.echo("no members")
            return EXIT_OK
        print_row(header, widths)
        for cells in map(_member_cells, _listed(store, tag, limit)):
            print_row(cells, widths)
    finally:
        store.close()
    return EXIT_OK


def _listed(store: Store, tag: str | None, limit: int | None) -> Iterator[dict[str, Any]]:
    n = 0
    for member in store.iter_members():
        if tag is not None and tag not in (member.get("tags") or []):
            continue
        yield member
        n += 1
        if limit is not None and n >= limit:
            return


def _member_cells(m: dict[str, Any]) -> tuple[str, ...]:
    cells = (str(m["id"]), str(m.get("name") or ""), str(m.get("timezone") or ""),
             ";".join(m.get("tags") or []), "yes" if m.get("opted_out") else "")
    # A line break or tab in a name would break the table's lines.
    return tuple(" ".join(c.split()) if any(ch in c for ch in "\n\r\t") else c for c in cells)


def print_row(cells: Sequence[str], widths: Sequence[int]) -> None:
    """A row of a table in aligned columns, two spaces apart (``widths``: ``text_width``)."""
    click.echo("  ".join(pad(cell, w) for cell, w in zip(cells, widths, strict=True)).rstrip())


# events -----------------------------------------------------------------------------------------


@cli.command("emit")
@click.argument("event_type", metavar="TYPE")
@click.option("--member", help='the member the event is about: an id, or a JSON object that adds or updates them, '
              'e.g. \'{"id": "u9", "name": "小明", "timezone": "Asia/Shanghai"}\'')
@click.option("--data", "data_text", metavar="JSON", help='event data, a JSON object, e.g. \'{"text": "打卡"}\'')
@click.option("--at", "at_text", metavar="TIME", help="when it happened, ISO 8601 (default: now)")
@click.option("--id", "event_id", help="event id; the same id is taken once (default: derived from the content)")
@timezone_option
@state_option
def emit(event_type: str, member: str | None, data_text: str | None, at_text: str | None, event_id: str | None,
         tz_name: str | None, state: str | None) -> int:
    """Feed one event to the runner.

    A runner takes it at once; one that is not running, at its next start. For
    example: cmtyflow emit message.posted --member u001 --data '{"text": "打卡"}'"""
    data: Any = {}
    if data_text is not None:  # '' and null are mistakes, not {} (leave --data out for none)
        try:
            data = json_value(data_text)
        except DuplicateKey as exc:
            raise UserError(f"--data: {exc}") from None
        except ValueError as exc:
            raise UserError(f"--data is not JSON: {exc}") from None
        if not isinstance(data, dict):
            shown = quoted(json.dumps(data, ensure_ascii=False))
            raise UserError(f"--data must be a JSON object such as '{{\"text\": \"hi\"}}', not {shown}")
    raw: dict[str, Any] = {"type": event_type, "at": at_text or SystemClock().now().isoformat(), "data": data}
    if member is not None:
        if member.lstrip().startswith("{"):  # SPEC 3: an object that updates the roster
            try:
                raw["member"] = json_value(member)
            except DuplicateKey as exc:
                raise UserError(f"--member: {exc}") from None
            except ValueError as exc:
                raise UserError(f"--member is not an id nor a JSON object: {exc}") from None
        else:
            raw["member"] = member
    if event_id is not None:
        raw["id"] = event_id
    try:
        event = parse_event(raw, _zone(tz_name))  # checked before the state is opened (or made)
    except ValueError as exc:
        raise UserError(f"event: {exc}") from None
    store, _ = store_at(state)
    try:
        if at_text is not None and datetime.fromisoformat(at_text).tzinfo is None:
            try:
                event = parse_event(raw, _event_zone(store, tz_name))  # in the playbooks' timezone
            except ValueError as exc:
                raise UserError(f"event: {exc}") from None
        fresh = store.add_event(event)
        # member.joined adds the member; any other event for an id the roster does not
        # know is noted (member.opted_out for a typo made a record of the typo, and the
        # member meant was never opted out).
        unknown = (event.member is not None and event.member_update is None and event.type != "member.joined"
                   and store.get_member(event.member) is None)
    finally:
        store.close()
    click.echo(f"queued event {event.id}" if fresh else f"event {event.id} was seen before; nothing queued")
    if fresh and unknown:
        # Taken all the same (the roster may be imported before the runner takes it),
        # but a typo in an id otherwise showed only as a line in the runner's log.
        click.echo(
            f"note: no member '{event.member}' in the roster yet; check the id (an event for an unknown member starts "
            "nothing, and an opt-out or a leave is kept for that id only). Import the roster first, or give --member "
            "as a JSON object with the member's fields",
            err=True,
        )
    return EXIT_OK


@cli.group("events")
def events() -> None:
    """Feed events in bulk."""


@events.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@timezone_option
@state_option
def events_import(file: str, tz_name: str | None, state: str | None) -> int:
    """Queue events from a JSON-lines file ({"id","type","at","member","data"} per line).

    Importing the same file twice queues nothing the second time (ids, or ids derived
    from the content). Bad lines are reported and skipped (exit 1 when there were any).
    """
    problems: list[RowProblem] = []
    store, _ = store_at(state)
    accepted = duplicates = 0
    try:
        with terminated_as_interrupted() as stops:
            batch = []
            for event in read_events(file, problems, _event_zone(store, tz_name)):
                batch.append(event)
                if len(batch) >= IMPORT_BATCH:
                    with stops.held():  # a stop waits for the count of what was committed
                        a, d = store.add_events(batch)
                        accepted, duplicates = accepted + a, duplicates + d
                    batch = []
                    if (accepted + duplicates) % PROGRESS_EVERY == 0:
                        click.echo(f"... {accepted + duplicates} events read", err=True)
            if batch:
                with stops.held():
                    a, d = store.add_events(batch)
                    accepted, duplicates = accepted + a, duplicates + d
    except (UserError, KeyboardInterrupt):
        if accepted + duplicates:
            click.echo(f"note: stopped after queuing {accepted} events ({duplicates} duplicates not queued again); import the file "
                       "again to finish (events queued before are seen, not queued twice)", err=True)
        raise
    finally:
        store.close()
    for problem in problems:
        click.echo(f"{problem}: line skipped", err=True)
    click.echo(imported(accepted, duplicates, len(problems)))
    return EXIT_ERROR if problems else EXIT_OK


def imported(accepted: int, duplicates: int, skipped: int) -> str:
    """``events import``'s last line. A duplicate's id was queued before, by an earlier
    import or earlier in the same file (the shipped example repeats one on purpose):
    "1 seen before" on a new state read as a fault of the state."""
    line = f"queued {plural(accepted, 'event')}"
    if duplicates:
        line += (f", {plural(duplicates, 'duplicate')} not queued again "
                 "(an id already queued, by an earlier import or earlier in this file)")
    if skipped:
        line += f", {plural(skipped, 'line')} skipped"
    return line


# launch -----------------------------------------------------------------------------------------


NOTED_REPEATS = 10  # rows repeating an id, named one by one; the rest counted


def note_repeats(repeats: list[RowProblem]) -> None:
    """Roster rows that name a member an earlier row named, on stderr (``read_roster``)."""
    for repeat in repeats[:NOTED_REPEATS]:
        click.echo(f"note: {repeat}", err=True)
    if len(repeats) > NOTED_REPEATS:
        click.echo(f"note: {len(repeats) - NOTED_REPEATS} more rows repeat an id of an earlier row", err=True)


@cli.command("launch")
@click.argument("playbook")
@click.argument("trigger")
@click.option("--member", help="start a member run for this member (default: a campaign run)")
@click.option("--input", "inputs", multiple=True, metavar="NAME=VALUE", help="a manual input; repeatable")
@click.option("--id", "launch_id", help="launch id; the same id launches once (default: a new one)")
@state_option
def launch(playbook: str, trigger: str, member: str | None, inputs: tuple[str, ...], launch_id: str | None,
           state: str | None) -> int:
    """Fire a manual trigger; the runner starts the run (at once if it is running,
    else at its next start or `cmtyflow run PLAYBOOK --once`).

    PLAYBOOK is its file, or its name when a runner has run it on the state (its
    last version there is read for the trigger and its inputs)."""
    prog = _launch_program(playbook, state)
    found = [t for t in prog.playbook.triggers if t.id == trigger]
    if not found:
        names = ", ".join(t.id for t in prog.playbook.triggers if t.kind == "manual") or "none"
        raise UserError(f"{playbook}: no trigger '{trigger}' (manual triggers: {names})")
    spec = found[0]
    if spec.kind != "manual":
        kind = {"event": "an event", "at": "an at"}.get(spec.kind, f"a {spec.kind}")
        raise UserError(f"{playbook}: trigger '{trigger}' is {kind} trigger; only manual triggers can be launched")
    specs = spec.manual.inputs  # type: ignore[union-attr]  # kind checked above
    values = _inputs(inputs, specs)
    # An input without a default must be given: a launch without it posted "📢 " to the
    # whole group (a title with nothing in it).
    missing = [name for name, item in specs.items() if name not in values and "default" not in item.model_fields_set]
    if missing:
        said = "; ".join(
            f"--input {name}=..." + (f" — {specs[name].description}" if specs[name].description else "") for name in missing
        )
        raise UserError(f"{playbook}: trigger '{trigger}' needs {said}")
    store, _ = store_at(state)
    try:
        record = store.get_member(member) if member is not None else None
        if member is not None and record is None:
            raise UserError(f"member '{member}' is not in the roster (cmtyflow members import)")
        now = SystemClock().now()
        _check_window(prog, trigger, now, record)
        lid = launch_id or uuid.uuid4().hex[:16]
        fresh = store.add_event(launch_event(Launch(prog.name, trigger, lid, now, member, values)))
        refused = [] if fresh else [e for e in store.audit(["launch_refused"]) if e.get("launch") == lid]
    finally:
        store.close()
    if refused:
        # Its id is spent: the runner that took it had not loaded the playbook.
        at = refused[0].get("at")
        when = at.isoformat(timespec="seconds") if isinstance(at, datetime) else "an earlier run"
        raise UserError(
            f"launch {lid} was refused at {when}: {refused[0].get('reason')}; "
            f"start a runner with {playbook} and launch again without --id (or with a new one)"
        )
    click.echo(f"launch {lid} queued: {prog.name}/{trigger}" if fresh else f"launch {lid} was queued before; nothing new")
    if fresh:
        click.echo(f"the runner takes it if it has loaded {playbook}; one without it refuses it (and logs why)", err=True)
    return EXIT_OK


def _check_window(prog: Program, trigger: str, now: datetime, member: Mapping[str, Any] | None) -> None:
    """A launch outside the playbook's window starts nothing (SPEC 1): refused here, so
    the operator hears it now rather than from the runner's log."""
    from ..engine.interp import zone
    from ..engine.schedule import in_window

    window = prog.window
    tz = zone(member.get("timezone"), prog.tz) if member is not None else prog.tz
    if window is None or in_window(now, window, tz):
        return
    first, last = window
    span = f"{first} to {last}" if last is not None else f"from {first}"
    today = now.astimezone(tz).date()
    raise UserError(
        f"{prog.name}: its window is {span} ({tz.key}); today is {today} there: "
        f"trigger '{trigger}' fires only inside it; change the window to launch it"
    )


def _launch_program(playbook: str, state: str | None) -> Program:
    """The program ``launch`` reads: from the file, else the last version of the playbook
    of that name the runner has run on the state (a crisis is declared by name)."""
    from ..runtime.prepare import load_programs

    if Path(playbook).is_file():
        return load_programs([Path(playbook)], warn=False)[1][0]
    if Path(playbook).suffix in (".yaml", ".yml") or "/" in playbook or "\\" in playbook:
        raise UserError(f"{playbook}: no such file")
    from ..runtime.versions import not_in_state, rebuild, recorded

    store, _ = store_at(state, must_exist=True)
    try:
        known = recorded(store)
    finally:
        store.close()
    if playbook not in known:
        raise UserError(not_in_state(playbook, known) + "; or give the playbook's file")
    version, snap = known[playbook][-1]
    program = rebuild(snap, version, {})
    if program is None:
        raise UserError(f"the last version of '{playbook}' in this state no longer loads; give the playbook's file")
    return program


_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def _inputs(pairs: tuple[str, ...], specs: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--input '{pair}': expected NAME=VALUE")
        if name not in specs:
            raise UserError(f"--input '{name}': this trigger takes {', '.join(sorted(specs)) or 'no inputs'}")
        kind = specs[name].type
        try:
            if kind == "integer":
                # Digits, as JSON writes them: not 1_000, and within what a state keeps.
                if not _INTEGER.fullmatch(text.strip()):
                    raise ValueError
                values[name] = int(text)
            elif kind == "number":
                if "_" in text or not math.isfinite(number := float(text)):
                    raise ValueError  # nan, inf: refused as `emit` refuses them
                values[name] = number
            elif kind == "boolean":
                low = text.lower()
                if low not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                values[name] = low in ("true", "yes", "1")
            else:
                values[name] = text
        except ValueError:
            raise UserError(f"--input '{name}': '{text}' is not {'an' if kind == 'integer' else 'a'} {kind}") from None
    return values
