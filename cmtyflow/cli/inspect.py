"""What the store says (SPEC 6): ``status``, ``outbox [retry ID]``, ``report PLAYBOOK``.

Rules:
- Read-only, except ``outbox retry``, which puts a failed, dead, in-doubt or
  cancelled message back in the queue with its attempts reset, and writes that to
  the audit log. Its text is the stored text: a retry sends the same bytes.
- Keys are shown shortened to 12 characters; any unique prefix names a message.
- ``--format json`` for scripts.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from ..adapters.base import one_line
from ..clock import SystemClock
from ..engine.interp import zone as member_zone
from ..errors import UserError
from ..runtime import notes
from ..runtime.runner import StateLock
from ..store.base import REQUEUEABLE, OutboxRow, Store
from ..store.open import is_postgres, shown
from . import EXIT_OK, cli
from .columns import text_width
from .state import format_option, print_row, state_option, store_at

SHORT = 12
PROBLEM_STATUSES = ("failed", "dead", "in_doubt")


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, default=_default, indent=2))


def _echo_json_rows(docs: Iterator[dict[str, Any]]) -> int:
    """A JSON array of ``docs`` as ``_echo_json`` writes a list, each written as it
    comes; returns how many."""
    n = 0
    for doc in docs:
        text = json.dumps(doc, ensure_ascii=False, default=_default, indent=2).replace("\n", "\n  ")
        click.echo(("[\n  " if n == 0 else ",\n  ") + text, nl=False)
        n += 1
    click.echo("[]" if n == 0 else "\n]")
    return n


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _when(value: Any, tz: tzinfo | None = None) -> str:
    """A time as text output shows it: to the second (JSON keeps every digit), in
    ``tz`` when given (the playbooks' timezone: a member's timer in their own offset
    looked like another time, out of order beside the others)."""
    if isinstance(value, datetime):
        moment: datetime = value.astimezone(tz) if tz is not None and value.tzinfo is not None else value
        return moment.isoformat(timespec="seconds")
    return str(value or "")


def shown_zone(store: Any) -> tzinfo | None:
    """The timezone times are shown in: the playbooks' when those run on this state
    share one; else None (each time as it was recorded)."""
    from ..runtime.versions import playbook_zones

    zones = set(playbook_zones(store).values())
    if len(zones) != 1:
        return None
    try:
        return ZoneInfo(zones.pop())
    except (ZoneInfoNotFoundError, ValueError):
        return None


NEXT_FIRINGS = 5  # schedules' next firings `status` shows


# status -----------------------------------------------------------------------------------------


@cli.command("status")
@state_option
@format_option
def status(state: str | None, fmt: str) -> int:
    """Active runs, the next timers, outbox counts (and urgent messages waiting), the
    runner's last start and stop, runs that failed (the last five, with why), triggers
    that fired and started nothing (dropped, outside the audience or window), starts
    queued behind an active run, firings over the audience stopped part way,
    and inputs set aside (they broke on a fault of cmtyflow's own: the last five)."""
    store, location = store_at(state, must_exist=True)
    try:
        active: Counter[str] = Counter()
        for (playbook, _, flow), n in store.active_run_counts().items():
            active[f"{playbook}/{flow}"] += n
        timers = store.upcoming_timers(10)
        timer_total = store.timer_count() if len(timers) == 10 else len(timers)
        counts = store.outbox_counts()
        urgent = store.urgent_waiting()
        lifecycle = store.audit(["runner_started", "runner_stopped"], limit=2)
        members = store.member_count()
        next_event = store.next_event_at()
        workers = _workers(store)
        counters = store.counters()
        set_aside = counters.get("inputs_failed", 0)
        last_set_aside = store.audit(["input_failed"], limit=5) if set_aside else []
        failed = counters.get("runs_failed", 0)
        last_failed = store.audit(["run_failed"], limit=5) if failed else []
        queued_now = len(store.waiting_starts())
        under_way = store.firing_progress()
        positions = store.schedule_positions()
        tz = shown_zone(store)
    finally:
        store.close()
    # Member-local schedules have one position per timezone ("Asia/Tokyo#<hash>").
    firings = sorted(
        (due, pb, trigger, zone.split("#", 1)[0]) for (pb, trigger, zone), due in positions.items() if due is not None
    )
    doc = {
        "state": shown(location),
        "members": members,
        "active_runs": dict(sorted(active.items())),
        "timers": timer_total,
        "next_timers": [{"due": t.due.isoformat(), "run": t.run, "kind": t.kind} for t in timers],
        "next_firings": [
            {"due": due.isoformat(), "playbook": pb, "trigger": trigger, "timezone": zone}
            for due, pb, trigger, zone in firings[:NEXT_FIRINGS]
        ],
        "outbox": counts,
        "urgent_waiting": urgent,
        "next_event": next_event.isoformat() if next_event else None,
        "runner": lifecycle,
        "inputs_set_aside": {"count": set_aside, "last": last_set_aside},
        "runs_failed": {"count": failed, "last": last_failed},
        "not_started": not_started(counters),
        "queued_starts": queued_now,
        "firings_under_way": [
            {"playbook": pb, "trigger": trigger, "due": due.isoformat(), "after": after, "started": started.isoformat(),
             "last_chunk": last_chunk.isoformat()}
            for (pb, trigger, _), (due, after, started, last_chunk) in under_way.items()
        ],
    }
    if workers is not None:
        doc["workers"] = workers
    if fmt == "json":
        _echo_json(doc)
        return EXIT_OK
    click.echo(f"state: {shown(location)} ({members} members)")
    if lifecycle:
        last = lifecycle[-1]
        said = f"runner: {last['kind'].replace('runner_', '')} at {_when(last['at'], tz)}"
        if last["kind"] == "runner_started" and _no_runner(location):
            # Started and never stopped, and no runner holds the state: it was killed.
            said += "; not running now (it stopped without a clean stop: killed, or the machine went down)"
        click.echo(said)
    click.echo(f"active runs: {sum(active.values())}")
    for name, n in sorted(active.items()):
        click.echo(f"  {name}: {n}")
    shown_of = f" (the first {len(timers)} of {timer_total:,})" if timer_total > len(timers) else ""
    click.echo(f"next timers{shown_of}:" if timers else "next timers: none")
    for t in timers:
        click.echo(f"  {_when(t.due, tz)}  {t.kind:<7}  {t.run}")
    shown_of = f" (the first {NEXT_FIRINGS} of {len(firings)})" if len(firings) > NEXT_FIRINGS else ""
    click.echo(f"next firings{shown_of}:" if firings else "next firings: none")
    for due, pb, trigger, zone in firings[:NEXT_FIRINGS]:
        local = f" ({due.isoformat(timespec='minutes')} {zone} time)" if tz is None or zone != str(tz) else ""
        click.echo(f"  {_when(due, tz)}  {pb}/{trigger}{local}")
    counted = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "empty"
    click.echo(f"outbox: {counted}")
    if urgent:
        click.echo(f"  {urgent} urgent waiting to go (sent before any other)")
    waiting = sum(counts.get(s, 0) for s in PROBLEM_STATUSES)
    if waiting:
        click.echo(f"  {waiting} need attention: cmtyflow outbox")
    if next_event is not None:
        click.echo(f"events queued, the first at {_when(next_event, tz)}")
    if failed:
        click.echo(f"runs failed: {failed} (each is reported, the others went on); the last:")
        for entry in last_failed:
            who = f" member {entry['member']}" if entry.get("member") else ""
            click.echo(f"  {_when(entry.get('at'), tz)}  {entry.get('playbook')}/{entry.get('flow')} at {entry.get('step')}{who}: "
                       f"{one_line(str(entry.get('error', '')))[:200]}")
    for (pb, trigger, _), (due, after, _, last_chunk) in under_way.items():
        click.echo(f"firing under way: {pb}/{trigger} due {_when(due, tz)}, members up to place {after} reached, "
                   f"last chunk at {_when(last_chunk, tz)} (a runner goes on with it within the catch-up grace)")
    if queued_now:
        click.echo(f"starts queued behind an active run (mode queued): {queued_now}")
    skipped = not_started(counters)
    if skipped:
        click.echo("starts not made: " + ", ".join(f"{NOT_STARTED.get(name.split(':')[0], name)}{_trigger_of(name)} {n}"
                                                  for name, n in skipped.items()))
    if set_aside:
        click.echo(f"inputs set aside: {set_aside} (see docs/semantics.md, Runs); the last:")
        for entry in last_set_aside:
            click.echo(f"  {_set_aside_line(entry, tz)}")
    if workers is not None:
        click.echo(f"workers: {workers['alive']} alive, jobs {workers['jobs'] or 'none'}")
        stuck = {k: v for k, v in workers["stuck"].items() if v}
        click.echo("stuck: none" if not stuck else "stuck:")
        for what, n in stuck.items():
            click.echo(f"  {n} {what}")
    return EXIT_OK


# Counters of triggers that fired and started nothing (SPEC 3: "dropped and counted"),
# with what `status` calls them.
NOT_STARTED = {
    "dropped": "dropped, a run was still active (mode single)",
    "outside_audience": "outside the audience",
    "outside_window": "outside the window",
    "filtered": "filtered out by the trigger's where",
    "launches_refused": "launches refused (trigger not loaded)",
    "skipped_firings": "schedule firings skipped (later than the grace)",
}


def not_started(counters: dict[str, int]) -> dict[str, int]:
    """The counters of ``NOT_STARTED`` that are not zero, by name (``dropped:TRIGGER``)."""
    return {name: n for name, n in sorted(counters.items()) if n and name.split(":")[0] in NOT_STARTED}


def _trigger_of(name: str) -> str:
    return f" [{name.split(':', 1)[1]}]" if ":" in name else ""


def _set_aside_line(entry: dict[str, Any], tz: tzinfo | None = None) -> str:
    """An ``input_failed`` note as one line: when, which input, and why."""
    return f"{_when(entry.get('at'), tz)}  {notes.set_aside(entry)}"


def _workers(store: Any) -> dict[str, Any] | None:
    """For a PostgreSQL state that workers have run on: live workers, jobs by status,
    and the "stuck" queries (docs/scale-out.md); None otherwise."""
    from ..store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):
        return None
    conn = store.conn
    exists = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'procrastinate_jobs'"
    if conn.execute(exists, (store.schema,)).fetchone() is None:
        return None
    from ..runtime.worker import STALLED_AFTER
    from ..store.pg_shared import SharedWork

    alive = conn.execute(
        "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - make_interval(secs => %s)",
        (STALLED_AFTER,),
    ).fetchone()[0]
    jobs = dict(conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1 ORDER BY 1").fetchall())
    return {"alive": int(alive), "jobs": {k: int(v) for k, v in jobs.items()}, "stuck": SharedWork(store).invariants()}


# outbox -----------------------------------------------------------------------------------------


def _row_doc(row: OutboxRow) -> dict[str, Any]:
    m = row.message
    return {
        "key": m.key, "status": row.status, "attempts": row.attempts, "playbook": m.playbook, "flow": m.flow,
        "step": m.step, "channel": m.channel, "adapter": m.adapter, "member": m.member, "to": m.to,
        "urgent": m.urgent, "deliver_at": m.deliver_at, "next_attempt": row.next_attempt,
        "last_error": row.last_error, "sent_at": row.sent_at, "text": m.text,
    }


def _no_runner(location: str) -> bool:
    """Whether no runner holds the SQLite state at ``location`` now (False for PostgreSQL,
    whose runner and workers say so themselves)."""
    return not is_postgres(location) and not StateLock.held(location)


@cli.group("outbox", invoke_without_command=True)
@state_option
@click.option("--status", "statuses", multiple=True, type=click.Choice(["queued", "inflight", "sent", "failed", "dead", "in_doubt", "cancelled"]),
              help="show these statuses (repeatable; default: failed, dead and in_doubt)")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@format_option
@click.pass_context
def outbox(ctx: click.Context, state: str | None, statuses: tuple[str, ...], limit: int, fmt: str) -> int:
    """Messages that need attention: failed (will retry), dead (gave up), in doubt
    (the runner stopped while sending; not resent on platforms that cannot
    deduplicate). `cmtyflow outbox retry KEY` sends one again."""
    if ctx.invoked_subcommand is not None:
        # Only --state is shared; the others choose what `outbox` lists, and were silently
        # dropped (`outbox --status failed retry --all` requeued the dead messages).
        options = (("--status", "statuses"), ("--limit", "limit"), ("--format", "fmt"))
        given = click.core.ParameterSource.COMMANDLINE
        listing = [option for option, param in options if ctx.get_parameter_source(param) is given]
        if listing:
            raise UserError(
                f"{', '.join(listing)} before '{ctx.invoked_subcommand}' chooses what `cmtyflow outbox` lists; "
                f"give options of '{ctx.invoked_subcommand}' after it, e.g. cmtyflow outbox retry --all --status failed"
            )
        ctx.obj = {"state": state}
        return EXIT_OK
    store, location = store_at(state, must_exist=True)
    try:
        wanted = list(statuses or PROBLEM_STATUSES)
        counts = store.outbox_counts()
        header = ("key", "status", "tries", "step", "to", "channel", "next try", "error")
        widths = [text_width(h) for h in header]
        if fmt == "json":
            # Written as read, a row at a time: a listing of a million rows held them all
            # twice over (5 GB).
            shown = _echo_json_rows(_row_doc(r) for r in itertools.islice(store.outbox(wanted), limit))
        else:
            # Read twice, a page at a time (the widths, then the rows), as `members list`:
            # a large --limit held every row, its text too.
            shown = 0
            for cells in map(_outbox_cells, itertools.islice(store.outbox(wanted), limit)):
                widths = [max(w, text_width(c)) for w, c in zip(widths, cells, strict=True)]
                shown += 1
        # How many more from the counts (one query), not by reading every row past the limit.
        more = max(0, sum(counts.get(s, 0) for s in set(wanted)) - shown)
        if more:
            click.echo(f"showing the first {limit}; {more} more (raise --limit to see them)", err=True)
        stranded = counts.get("inflight", 0)
        if stranded and not statuses and _no_runner(location):
            # Left by a runner that stopped while sending (killed): in doubt, but marked so
            # only when the next runner starts (SPEC 5.2), so they were not listed at all.
            click.echo(
                f"note: {stranded} message{'s were' if stranded != 1 else ' was'} being sent when the runner stopped; "
                "the next `cmtyflow run` settles them (resent with the same key where the platform deduplicates, "
                "else held here as in doubt). `--status inflight` lists them now",
                err=True,
            )
        if fmt == "json":
            return EXIT_OK
        if not shown:
            click.echo("nothing " + ("with status " + "/".join(statuses) if statuses else "failed, dead or in doubt"))
            return EXIT_OK
        tz = shown_zone(store)
        print_row(header, widths)
        for cells in map(_outbox_cells, itertools.islice(store.outbox(wanted), limit), itertools.repeat(tz)):
            print_row(cells, widths)
    finally:
        store.close()
    return EXIT_OK


def _outbox_cells(r: OutboxRow, tz: tzinfo | None = None) -> tuple[str, ...]:
    m = r.message
    return (
        m.key[:SHORT], r.status, str(r.attempts), f"{m.playbook}/{m.step}", m.member or m.to, m.channel,
        _when(r.next_attempt, tz) if r.next_attempt and r.status == "failed" else "",
        (r.last_error or "")[:80],
    )


@outbox.command("retry")
@click.argument("keys", nargs=-1)
@click.option("--all", "every", is_flag=True,
              help="every message in --status (default: dead) instead of KEYS, e.g. after fixing a channel's token")
@click.option("--status", "statuses", multiple=True, type=click.Choice(REQUEUEABLE),
              help="with --all: these statuses (repeatable). In-doubt messages may already have arrived: "
                   "on a platform that cannot deduplicate, a retry can send them twice")
@click.option("--playbook", help="with --all: only this playbook's messages")
@click.option("--channel", help="with --all: only messages to this channel")
@state_option
@click.pass_context
def outbox_retry(
    ctx: click.Context, keys: tuple[str, ...], every: bool, statuses: tuple[str, ...], playbook: str | None,
    channel: str | None, state: str | None,
) -> int:
    """Queue failed, dead, in-doubt or cancelled messages again, by key (a unique
    prefix is enough), or `--all` of a status. They go out with their stored text at
    the runner's next pass, with their attempts counted afresh."""
    if every == bool(keys):
        raise UserError("give the keys of the messages to retry, or --all (with --status, --playbook, --channel)")
    if not every and (statuses or playbook or channel):
        raise UserError("--status, --playbook and --channel choose messages for --all; with keys, give only the keys")
    state = state or (ctx.obj or {}).get("state")
    store, _ = store_at(state, must_exist=True)
    twice: list[str] = []  # in-doubt messages retried on a platform that cannot drop a repeat
    try:
        now = SystemClock().now()
        if every:
            chosen_statuses = list(statuses or ("dead",))
            # Keys only: the rows are read one page at a time, not kept.
            chosen_keys = [
                row.message.key for row in store.outbox(chosen_statuses)
                if (playbook is None or row.message.playbook == playbook) and (channel is None or row.message.channel == channel)
            ]
            n = store.requeue(chosen_keys, now, reset_attempts=True)
            if chosen_keys:
                # One record for the whole action (a commit per message would take minutes on
                # a large outbox), with every key it queued again.
                store.record(now, "outbox_retry", all=chosen_statuses, playbook=playbook, channel=channel, keys=chosen_keys)
        else:
            chosen: list[OutboxRow] = []
            for prefix in keys:
                found = store.find_messages(prefix)
                if not found:
                    raise UserError(f"no message with key {prefix}")
                if len(found) > 1:
                    raise UserError(f"key {prefix} is ambiguous ({len(found)} messages); give more characters")
                row = found[0]
                if any(r.message.key == row.message.key for r in chosen):
                    continue  # the same message twice (a key and a prefix of it): once
                if row.status not in REQUEUEABLE:
                    raise UserError(f"message {row.message.key[:SHORT]} is {row.status}; only failed, dead, in-doubt or cancelled ones can be retried")
                chosen.append(row)
            n = store.requeue([r.message.key for r in chosen], now, reset_attempts=True)
            for r in chosen:
                store.record(now, "outbox_retry", key=r.message.key, was=r.status)
            twice = [r.message.key[:SHORT] for r in chosen if r.status == "in_doubt" and not _deduplicates(r.message.adapter)]
    finally:
        store.close()
    click.echo(f"queued {n} message{'s' if n != 1 else ''} again")
    if twice:
        click.echo(
            f"note: {', '.join(twice)} may have arrived already (in doubt), and its platform cannot drop a repeat: "
            "the member may get it twice",
            err=True,
        )
    return EXIT_OK


def _deduplicates(adapter: str) -> bool:
    """Whether ``adapter``'s platform drops a repeat of a message's key (False when the
    adapter cannot be loaded here: a warning too many is the safe side)."""
    from ..adapters import registry

    try:
        return bool(registry.get(adapter).capabilities.idempotent)
    except Exception:  # noqa: BLE001 - an unknown or broken adapter: assume it does not
        return False


# report -----------------------------------------------------------------------------------------

STREAK_BUCKETS = ((0, 0), (1, 2), (3, 6), (7, 13), (14, 20), (21, None))


def _bucket(n: int) -> str:
    for low, high in STREAK_BUCKETS:
        if n >= low and (high is None or n <= high):
            return f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")
    return str(n)


def _playbook_name(text: str) -> str:
    path = Path(text)
    if path.is_file():
        from ..runtime.prepare import load_programs

        _, programs = load_programs([path], warn=False)
        return programs[0].name
    return text


def _playbook_zone(store: Store, name: str, given: str) -> ZoneInfo:
    """The playbook's timezone: from its file when the report was given one, else from
    the last version the runner ran; UTC when neither says."""
    from ..runtime.versions import playbook_zones

    zone: str | None = None
    if Path(given).is_file():
        from ..runtime.prepare import load_programs

        _, programs = load_programs([Path(given)], warn=False)
        zone = programs[0].playbook.timezone
    else:
        zone = playbook_zones(store).get(name)
    return member_zone(zone, ZoneInfo("UTC"))


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


@cli.command("report")
@click.argument("playbook")
@state_option
@click.option("--now", "now_text", metavar="TIME",
              help="as of this time (ISO 8601 with offset; default: now): which day is 'today' and which "
                   "streaks are current, e.g. after rehearsing with run --once --now")
@format_option
def report(playbook: str, state: str | None, now_text: str | None, fmt: str) -> int:
    """What a playbook achieved: deliveries per step and variant, goal conversions,
    check-in rate and streaks, and how long event waits took to be answered.

    PLAYBOOK is its name or its file."""
    from ..runtime.prepare import parse_now

    now = parse_now(now_text) if now_text is not None else SystemClock().now()
    name = _playbook_name(playbook)
    store, _ = store_at(state, must_exist=True)
    try:
        per_step: Counter[str] = Counter()
        per_variant: dict[str, Counter[str]] = defaultdict(Counter)
        first = last = None
        for d in store.deliveries(name):
            per_step[d["step"]] += 1
            if d["variant"] is not None:
                per_variant[d["step"]][d["variant"]] += 1
            first = first or d["at"]
            last = d["at"]
        shown_tz = _playbook_zone(store, name, playbook) if first is not None else None
        # Messages that will not go (dead letters, cancelled by an opt-out, in doubt),
        # per step: a step's deliveries and goals read differently beside them.
        undelivered: dict[str, Counter[str]] = defaultdict(Counter)
        for row in store.outbox(["dead", "cancelled", "in_doubt"]):
            if row.message.playbook == name:
                undelivered[row.message.step][row.status] += 1
        goals: list[dict[str, Any]] = [
            {"goal": goal, "step": step or None, "variant": variant, "exposed": exposed, "converted": converted}
            for (pb, goal, step, variant), (exposed, converted) in sorted(
                store.goal_stats().items(), key=lambda kv: (kv[0][1], kv[0][2] or "", kv[0][3] or "")
            )
            if pb == name
        ]
        streaks: Counter[str] = Counter()
        best: Counter[str] = Counter()
        participants = checkins = today_count = 0
        days: dict[ZoneInfo, date] = {}  # timezone -> today there
        default_zone: ZoneInfo | None = None  # the playbook's, read when a member has none
        for member, st in store.states(name):
            if member is None or not st.get("checkins"):
                continue
            # Today where the member is, as the engine counts their check-ins and streak
            # (their timezone, else the playbook's), not the UTC date.
            zone_name = (store.get_member(member) or {}).get("timezone")
            if not isinstance(zone_name, str) and default_zone is None:
                default_zone = _playbook_zone(store, name, playbook)
            tz = member_zone(zone_name if isinstance(zone_name, str) else None, default_zone or ZoneInfo("UTC"))
            today = days.get(tz)
            if today is None:
                today = days[tz] = now.astimezone(tz).date()
            participants += 1
            checkins += int(st.get("checkins", 0))
            last_day = st.get("last_checkin")
            if isinstance(last_day, str):
                last_day = date.fromisoformat(last_day[:10])
            # Current when the last check-in was today or yesterday there; one after
            # ``now`` (a state rehearsed ahead of it) says nothing about then.
            current = int(st.get("streak", 0)) if isinstance(last_day, date) and 0 <= (today - last_day).days <= 1 else 0
            if last_day == today:
                today_count += 1
            streaks[_bucket(current)] += 1
            best[_bucket(int(st.get("best_streak", 0)))] += 1
        acks: dict[str, list[float]] = defaultdict(list)
        timeouts: Counter[str] = Counter()
        for entry in store.iter_audit(["wait_resolved", "wait_timed_out"]):
            if entry.get("playbook") != name:
                continue
            label = f"{entry.get('flow')}/{entry.get('step')}"
            if entry["kind"] == "wait_resolved" and entry.get("seconds") is not None:
                acks[label].append(float(entry["seconds"]))
            elif entry["kind"] == "wait_timed_out":
                timeouts[label] += 1
        runs: Counter[str] = Counter(run.status for run in store.runs(status=None, playbook=name))
        if not (per_step or undelivered or goals or participants or acks or timeouts or runs):
            from ..runtime.versions import not_in_state, recorded

            known = recorded(store)
            if name not in known:
                # A typo, or a file that is not there, would otherwise read as a campaign
                # that did nothing.
                missing = " (no such file)" if Path(playbook).suffix in (".yaml", ".yml") or "/" in playbook else ""
                raise UserError(not_in_state(name, known, missing))
    finally:
        store.close()
    ack_doc = {
        label: {
            "answered": len(values), "timed_out": timeouts.get(label, 0),
            "median_seconds": statistics.median(values) if values else None,
            "max_seconds": max(values) if values else None,
        }
        for label, values in sorted({**{k: [] for k in timeouts}, **acks}.items())
    }
    order = [_bucket(low) for low, _ in STREAK_BUCKETS]
    doc = {
        "playbook": name,
        "runs": dict(sorted(runs.items())),
        "deliveries": {"total": sum(per_step.values()), "first": first, "last": last, "per_step": dict(per_step.most_common())},
        "variants": {step: dict(sorted(c.items())) for step, c in sorted(per_variant.items())},
        "undelivered": {step: dict(sorted(c.items())) for step, c in sorted(undelivered.items())},
        "goals": goals,
        "checkins": {
            "participants": participants, "total": checkins, "checked_in_today": today_count,
            "current_streaks": {b: streaks.get(b, 0) for b in order},
            "best_streaks": {b: best.get(b, 0) for b in order},
        },
        "acknowledgement": ack_doc,
    }
    if fmt == "json":
        _echo_json(doc)
        return EXIT_OK
    click.echo(f"{name}")
    # Only runs that waited are kept (docs/semantics.md, "Runs"): a flow that sends and
    # ends in the input that started it leaves its deliveries, not a run.
    click.echo("runs that waited: " + (", ".join(f"{k} {v}" for k, v in sorted(runs.items())) or "none"))
    click.echo(f"deliveries: {sum(per_step.values())}" + (f" ({_when(first, shown_tz)} .. {_when(last, shown_tz)})" if first else ""))
    for step, n in per_step.most_common():
        variants = per_variant.get(step)
        extra = " [" + ", ".join(f"{v}: {c}" for v, c in sorted(variants.items())) + "]" if variants else ""
        click.echo(f"  {step}: {n}{extra}")
    if undelivered:
        click.echo("not delivered (cmtyflow outbox lists them):")
        for step, counts in sorted(undelivered.items()):
            click.echo(f"  {step}: " + ", ".join(f"{c} {status.replace('_', ' ')}" for status, c in sorted(counts.items())))
    if goals:
        click.echo("goals:")
        for g in goals:
            where = f" after {g['step']}" if g["step"] else " per run"
            variant = f" [{g['variant']}]" if g["variant"] else ""
            click.echo(f"  {g['goal']}{where}{variant}: {g['converted']} of {g['exposed']} ({_percent(g['converted'], g['exposed'])})")
    if participants:
        # Of the members who have checked in at all, not of the audience (which may
        # hold members who never meant to take part).
        click.echo(f"check-ins: {checkins} by {participants} members; {today_count} of those {participants} "
                   f"checked in today ({_percent(today_count, participants)})")
        click.echo("  current streak: " + ", ".join(f"{b}: {streaks.get(b, 0)}" for b in order))
        click.echo("  best streak:    " + ", ".join(f"{b}: {best.get(b, 0)}" for b in order))
    if ack_doc:
        click.echo("event waits:")
        for label, a in ack_doc.items():
            median = f", median {_duration(a['median_seconds'])}, slowest {_duration(a['max_seconds'])}" if a["answered"] else ""
            click.echo(f"  {label}: {a['answered']} answered, {a['timed_out']} timed out{median}")
    return EXIT_OK


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
