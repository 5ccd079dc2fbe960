"""``cmtyflow report PLAYBOOK`` (SPEC 6): what a playbook achieved, read-only:
deliveries per step and variant, goal conversions, check-in rate and streak
distribution, and time to acknowledge for event waits. ``--format json`` for scripts.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from ..clock import SystemClock
from ..engine.interp import zone as member_zone
from ..errors import UserError
from ..store.base import Store
from . import EXIT_OK, cli
from .inspect import _echo_json, _when
from .state import format_option, state_option, store_at

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
