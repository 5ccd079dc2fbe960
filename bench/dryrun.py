"""Benchmark: the shipped 21-day check-in challenge, dry-run for many members (issue 3).

    python bench/dryrun.py [--members 100000] [--seed 0] [--repeat 1]

``playbooks/checkin-challenge.yaml`` (with the folder's ``cmtyflow.yaml`` defaults and
``templates/``) over its whole window, for a generated roster (mostly Asia/Shanghai,
some America/New_York and Europe/Berlin, most members tagged ``reading``), with
synthetic behaviour ``checkin=0.7,post=0.2``: about 21 member-days per member.

Two phases, each in its own process so that the peak RSS (``ru_maxrss``) of one is
not the peak of the other:

- engine: ``DryRun`` as ``cmtyflow dry-run --simulate`` runs it: engine, driver,
  MemoryStore, virtual clock, recording delivery.
- floor: one plain Python loop over the same members and days with the same random
  draws (the same ``Simulation``), doing the same per-member work: the audience
  check, the keyword ``where`` on each post, the check-in arithmetic and the
  reminder counter (``set``), the flows' conditions evaluated with the same compiled
  expressions, and the same messages
  rendered with the same compiled templates (the campaign posts too, with the
  audience as plain dicts). No engine, store, scheduling, policies or outbox.

The figures are the wall time of the simulated span only (loading the playbook and
generating the roster are left out of both), the peak RSS of each process, the
deliveries, and the ratio engine / floor. Targets: within 3x, under 1 GiB. On a shared
machine the two timings drift independently; ``--repeat N`` runs the phases N times,
alternately, and compares the fastest run of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmtyflow.expr import compile_expression, scope  # noqa: E402
from cmtyflow.runtime.dryrun import DryRun  # noqa: E402
from cmtyflow.runtime.prepare import default_days, load_programs, parse_start  # noqa: E402
from cmtyflow.runtime.simulate import Simulation, parse_spec  # noqa: E402
from cmtyflow.spec.duration import localize  # noqa: E402

PLAYBOOK = ROOT / "playbooks" / "checkin-challenge.yaml"
BEHAVIOUR = "checkin=0.7,post=0.2"
TARGET_RATIO = 3.0
TARGET_RSS_MIB = 1024


# --- the roster ---------------------------------------------------------------------------


def make_roster(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` members: ~80% Asia/Shanghai (an eighth of them without a timezone, so the
    playbook's applies), ~12% America/New_York, ~8% Europe/Berlin; ~95% tagged
    ``reading`` (the audience); ~1% opted out."""
    rng = random.Random(f"roster-{seed}")
    extra_tags = ("fitness", "registered", "newcomer", "staff")
    members = []
    for i in range(n):
        r = rng.random()
        tz = "Asia/Shanghai" if r < 0.80 else "America/New_York" if r < 0.92 else "Europe/Berlin"
        zh = tz == "Asia/Shanghai"
        tags = ["reading"] if rng.random() < 0.95 else []
        tags += [t for t in extra_tags if rng.random() < 0.15]
        member: dict[str, Any] = {
            "id": f"m{i:06d}",
            "name": f"书友{i:06d}" if zh else f"Reader {i}",
            "locale": "zh-CN" if zh else "en",
            "tags": tags,
            "joined_at": f"2026-11-{1 + i % 28:02d}",
        }
        if not (zh and rng.random() < 0.125):
            member["timezone"] = tz
        if rng.random() < 0.01:
            member["opted_out"] = True
        members.append(member)
    return members


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- phase: engine ----------------------------------------------------------------------------


def engine_phase(members: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    _, programs = load_programs([PLAYBOOK])
    begin = parse_start(None, programs, None)  # type: ignore[arg-type]
    days = default_days(programs, begin)
    simulation = Simulation(parse_spec(BEHAVIOUR), seed=seed, default_tz=programs[0].playbook.timezone)
    sim = DryRun(programs, start=begin, days=days, sink=lambda record: None, simulation=simulation)
    sim.load_roster(members)
    del members[:]  # the store holds its own copies
    t0 = time.perf_counter()
    stats = sim.run()
    wall = time.perf_counter() - t0
    counters = sim.store.counters()
    pending = sum(1 for _ in sim.store.outbox(["queued", "failed"]))
    return {
        "wall": wall,
        "rss_mib": _rss_mib(),
        "deliveries": stats.deliveries,
        "pending": pending,
        "inputs": stats.inputs,
        "events": counters.get("events_processed", 0),
        "runs": counters.get("runs_started", 0),
        "per_step": dict(stats.per_step),
        "days": days,
    }


# --- phase: floor ---------------------------------------------------------------------------------


class _Roster:
    """What ``Simulation.events_for`` reads: the members in roster order."""

    def __init__(self, members: list[dict[str, Any]]) -> None:
        self.members = members

    def iter_members(self) -> Iterator[dict[str, Any]]:
        return iter(self.members)


def _view(state: dict[str, Any], today: date) -> dict[str, Any]:
    """``state`` as SPEC 2 reads it, as a plain dict (the streak lapses after a missed day)."""
    view = dict(state)
    last = state["last_checkin"]
    if last is None or (today - last).days > 1:
        view["streak"] = 0
    view["badges"] = list(state["badges"])
    return view


class ShapeChanged(Exception):
    pass


def _shape(steps: list[Any]) -> list[Any]:
    """Step kinds, with `if` marked and choose branches nested: what the floor hard-codes."""
    out: list[Any] = []
    for step in steps:
        kind = step.kind + ("?" if step.if_ else "")
        if step.kind == "choose":
            out.append([kind, *[["if" if br.if_ else "else", _shape(br.body())] for br in step.choose]])
        else:
            out.append(kind)
    return out


# The flows as the floor below hard-codes them; bench fails when the playbook differs.
FLOOR_SHAPE = {
    "checkin": ["checkin", ["choose", ["if", ["send"]], ["else", [
        "set", "award", ["choose", ["if", ["award", "set"]], ["if", ["award", "set"]], ["if", ["award", "set"]]], "send",
    ]]]],
    "remind": ["stop?", "set", "stop?", "send"],
    "kickoff": ["send"],
    "leaderboard": ["send"],
    "summary": ["send"],
}


def floor_phase(members: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    _, programs = load_programs([PLAYBOOK])
    prog = programs[0]
    pb = prog.playbook
    begin = parse_start(None, programs, None)  # type: ignore[arg-type]
    days = default_days(programs, begin)
    end = begin + timedelta(days=days)
    first_day, last_day = prog.window
    flows = pb.flows
    triggers = {t.id: t for t in pb.triggers}

    # The playbook's expressions and templates, compiled once (the same cached objects
    # the engine's program holds).
    shape = {name: _shape(steps) for name, steps in flows.items()}
    if shape != FLOOR_SHAPE:
        raise ShapeChanged(f"{PLAYBOOK.name} changed; update floor_phase to its flows: {shape}")
    audience = compile_expression(pb.audience.where)
    keyword = compile_expression(triggers["keyword"].where)
    choose = flows["checkin"][1].choose
    duplicate_cond = compile_expression(choose[0].if_)
    duplicate_tpl = choose[0].steps[0].send.template
    done_steps = choose[1].else_
    # The check-in's `set` (literals, or expressions that read nothing: new_badge "''").
    reset = {k: compile_expression(v).evaluate(scope({})) if isinstance(v, str) else v for k, v in done_steps[0].set.items()}
    base_award = done_steps[1].award
    # Each bonus a branch of one choose: its condition, its award, the new_badge it sets.
    bonuses = []
    for branch in done_steps[2].choose:
        award, note = branch.steps
        (key, value), = note.set.items()
        bonuses.append((compile_expression(branch.if_), award.award.points, award.award.badge, key, compile_expression(value)))
    done_tpl = done_steps[3].send.template
    remind = flows["remind"]
    remind_done = compile_expression(remind[0].if_)
    (count_key, count_src), = remind[1].set.items()
    count_expr = compile_expression(count_src)
    remind_gave_up = compile_expression(remind[2].if_)
    remind_tpl = remind[3].send.template
    campaign_tpl = {
        tid: flows[triggers[tid].flow][0].send.template for tid in ("kickoff", "weekly-leaderboard", "final-summary")
    }
    formats = prog.channel_formats["dm"]
    group_formats = prog.channel_formats["group"]
    picked: dict[tuple[str, str | None], Any] = {}

    def template(name: str, locale: str | None, fmts: tuple[str, ...]) -> Any:
        key = (name, locale)
        found = picked.get(key)
        if found is None:
            found = picked[key] = prog.templates[name].pick((locale, pb.locale, None), fmts)[0]
        return found

    zones: dict[str, ZoneInfo] = {}

    def zone(name: str) -> ZoneInfo:
        found = zones.get(name)
        if found is None:
            found = zones[name] = ZoneInfo(name)
        return found

    # Campaign posts (the `at` and weekly cron triggers), in the playbook's timezone.
    tz = prog.tz
    campaign: list[tuple[datetime, str]] = [(prog.at_times["kickoff"], "kickoff"), (prog.at_times["final-summary"], "final-summary")]
    day = first_day
    while day <= last_day:
        if day.weekday() == 6:  # cron "0 20 * * 0"
            campaign.append((localize(datetime.combine(day, dtime(20)), tz), "weekly-leaderboard"))
        day += timedelta(days=1)
    campaign = sorted(c for c in campaign if begin <= c[0] < end)

    # The nightly reminder: 21:00 local on each window day, per member timezone.
    reminders: dict[str, list[datetime]] = {}
    tz_names = {m.get("timezone") or pb.timezone for m in members}
    for name in tz_names:
        instants = []
        day = first_day
        while day <= last_day:
            at = localize(datetime.combine(day, dtime(21)), zone(name))
            if begin <= at < end:
                instants.append(at)
            day += timedelta(days=1)
        reminders[name] = instants

    simulation = Simulation(parse_spec(BEHAVIOUR), seed=seed, default_tz=pb.timezone)
    roster = _Roster(members)
    vars_, roles = pb.vars, pb.roles
    t0 = time.perf_counter()

    in_audience: dict[str, bool] = {}
    states: dict[str, dict[str, Any]] = {}
    for m in members:
        ok = bool(audience.evaluate(scope({"member": m, "vars": vars_, "roles": roles})))
        in_audience[m["id"]] = ok
        if ok:
            states[m["id"]] = {"points": 0, "checkins": 0, "streak": 0, "best_streak": 0, "last_checkin": None, "badges": []}
    rendered = 0

    def member_item(m: dict[str, Any], mtz: ZoneInfo, at: datetime, event: Any) -> int:
        """One event or reminder of one member: returns the messages rendered."""
        local = at.astimezone(mtz)
        today = local.date()
        if not first_day <= today <= last_day:
            return 0
        state = states[m["id"]]
        if event is None:  # remind
            view = _view(state, today)
            ctx = scope({
                "member": m, "state": view, "vars": vars_, "roles": roles, "now": local,
                "today": today, "event": None,
            })
            if remind_done.evaluate(ctx):
                return 0
            state[count_key] = view[count_key] = count_expr.evaluate(ctx)
            if remind_gave_up.evaluate(ctx) or m.get("opted_out"):
                return 0
            template(remind_tpl, m.get("locale"), formats).render(ctx)
            return 1
        event_ctx = event.as_context()
        if event.type == "message.posted":
            ctx = scope({
                "member": m, "state": _view(state, today), "vars": vars_, "roles": roles, "now": local,
                "today": today, "event": event_ctx,
            })
            if not keyword.evaluate(ctx):
                return 0
        # checkin (SPEC 4): once per local day
        duplicate = state["last_checkin"] == today
        if not duplicate:
            last = state["last_checkin"]
            state["streak"] = state["streak"] + 1 if last is not None and (today - last).days == 1 else 1
            state["checkins"] += 1
            state["best_streak"] = max(state["best_streak"], state["streak"])
            state["last_checkin"] = today
        view = _view(state, today)
        ctx = scope({
            "member": m, "state": view, "vars": vars_, "roles": roles, "now": local, "today": today,
            "event": event_ctx, "checkin": {"duplicate": duplicate},
        })
        if duplicate_cond.evaluate(ctx):
            tpl = duplicate_tpl
        else:
            state.update(reset)
            view.update(reset)
            state["points"] += base_award.points
            for cond, points, badge, key, value in bonuses:
                if cond.evaluate(ctx):  # the first that holds (a choose)
                    state["points"] += points
                    if badge not in state["badges"]:
                        state["badges"].append(badge)
                    state[key] = view[key] = value.evaluate(ctx)
                    break
            view["points"] = state["points"]
            view["badges"] = list(state["badges"])
            tpl = done_tpl
        if m.get("opted_out"):
            return 0
        template(tpl, m.get("locale"), formats).render(ctx)
        return 1

    def campaign_post(at: datetime, trigger: str) -> int:
        local = at.astimezone(tz)
        today = local.date()
        if not first_day <= today <= last_day:
            return 0
        # As the engine's MemberView reads them: opted_out False when the roster says nothing.
        crowd = [
            {"opted_out": False, **m, "state": _view(states[m["id"]], today)} for m in members if in_audience[m["id"]]
        ]
        ctx = scope({"vars": vars_, "roles": roles, "now": local, "today": today, "audience": crowd, "event": None})
        template(campaign_tpl[trigger], None, group_formats).render(ctx)
        return 1

    chunk = begin
    while chunk < end:
        chunk_end = min(chunk + timedelta(days=1), end)
        by_member: dict[str, list[Any]] = {}
        for event in simulation.events_for(chunk, chunk_end, roster):
            by_member.setdefault(event.member, []).append(event)
        cuts = [c for c in campaign if chunk <= c[0] < chunk_end]
        bounds = [chunk, *(c[0] for c in cuts), chunk_end]
        for seg in range(len(bounds) - 1):
            lo, hi = bounds[seg], bounds[seg + 1]
            due = {name: [(at, 0, None) for at in instants if lo <= at < hi] for name, instants in reminders.items()}
            for m in members:
                mid = m["id"]
                if not in_audience[mid]:
                    continue
                zname = m.get("timezone") or pb.timezone
                # Firings come before events at the same instant (SPEC 5.6).
                items = due[zname]
                events = by_member.get(mid)
                if events:
                    items = items + [(e.at, 1, e) for e in events if lo <= e.at < hi]
                    if len(items) > 1:
                        items.sort(key=lambda item: (item[0], item[1]))
                if not items:
                    continue
                mtz = zone(zname)
                for at, _, event in items:
                    rendered += member_item(m, mtz, at, event)
            if seg < len(cuts):
                rendered += campaign_post(*cuts[seg])
        chunk = chunk_end
    wall = time.perf_counter() - t0
    return {"wall": wall, "rss_mib": _rss_mib(), "rendered": rendered, "days": days}


# --- driver ---------------------------------------------------------------------------------------


def _child(phase: str, members: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--members", str(members), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {phase} phase failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run both phases this many times, alternately, and compare the fastest of each",
    )
    parser.add_argument("--phase", choices=["engine", "floor"], help="run one phase here and print it as JSON")
    args = parser.parse_args()
    if args.phase:
        members = make_roster(args.members, args.seed)
        result = (engine_phase if args.phase == "engine" else floor_phase)(members, args.seed)
        print(json.dumps(result))
        return 0
    engines, floors = [], []
    for _ in range(max(1, args.repeat)):
        engines.append(_child("engine", args.members, args.seed))
        floors.append(_child("floor", args.members, args.seed))
    engine = min(engines, key=lambda r: r["wall"])
    floor = min(floors, key=lambda r: r["wall"])
    engine_rss = max(r["rss_mib"] for r in engines)
    floor_rss = max(r["rss_mib"] for r in floors)
    days = engine["days"]
    member_days = args.members * days
    ratio = engine["wall"] / floor["wall"] if floor["wall"] else float("inf")
    print(f"bench/dryrun: {PLAYBOOK.relative_to(ROOT)}, {args.members:,} members x {days} days "
          f"= {member_days:,} member-days, --simulate {BEHAVIOUR} --seed {args.seed}")
    print(f"machine: {_machine()}")
    if len(engines) > 1:
        walls = {name: ", ".join(f"{r['wall']:.1f}" for r in runs) for name, runs in (("engine", engines), ("floor", floors))}
        print(f"runs (wall s): engine {walls['engine']}; floor {walls['floor']}; the fastest of each below")
    print(f"engine: wall {engine['wall']:.1f} s ({engine['wall'] / member_days * 1e6:.1f} us per member-day), "
          f"peak RSS {engine_rss:.0f} MiB, deliveries {engine['deliveries']:,} "
          f"(+{engine['pending']:,} pending past the span), events {engine['events']:,}, runs {engine['runs']:,}")
    print(f"floor:  wall {floor['wall']:.1f} s ({floor['wall'] / member_days * 1e6:.1f} us per member-day), "
          f"peak RSS {floor_rss:.0f} MiB, messages rendered {floor['rendered']:,}")
    ok_ratio = ratio <= TARGET_RATIO
    ok_rss = engine_rss < TARGET_RSS_MIB
    print(f"ratio engine/floor: {ratio:.2f}x (target <= {TARGET_RATIO:g}x: {'met' if ok_ratio else 'MISSED'}); "
          f"engine peak RSS {engine_rss:.0f} MiB (target < {TARGET_RSS_MIB} MiB: {'met' if ok_rss else 'MISSED'})")
    return 0 if ok_ratio and ok_rss else 1


if __name__ == "__main__":
    raise SystemExit(main())
