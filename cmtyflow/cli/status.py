"""``cmtyflow status`` (SPEC 6): what the state holds now, read-only: active runs, the
next timers and schedule firings, outbox counts, the runner's last start and stop,
failed runs, triggers that started nothing, inputs set aside, firings stopped part
way and, on PostgreSQL, the workers. ``--format json`` for scripts.

Times are shown in the playbooks' timezone when they share one (``inspect.shown_zone``).
"""

from __future__ import annotations

from collections import Counter
from datetime import tzinfo
from typing import Any

import click

from ..adapters.base import one_line
from ..runtime import notes
from ..store.open import shown
from . import EXIT_OK, cli
from .inspect import PROBLEM_STATUSES, _echo_json, _no_runner, _when, shown_zone
from .state import format_option, state_option, store_at

NEXT_FIRINGS = 5  # schedules' next firings `status` shows


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


