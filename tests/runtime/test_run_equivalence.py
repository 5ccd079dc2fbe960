"""SPEC 5.5: for the same playbook, roster and events, `dry-run --format jsonl` and the
real runner (SQLite store, outbox, file adapter, dispatcher) driven through the same
span on a virtual clock produce the same deliveries."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from runner_harness import Harness

from cmtyflow.adapters.file import FileAdapter, FileSettings
from cmtyflow.engine.model import Event
from cmtyflow.runtime.dryrun import build_dry_run, delivery_record
from cmtyflow.runtime.golden import read_spec
from cmtyflow.runtime.inputs import read_events, read_roster
from cmtyflow.runtime.prepare import load_programs, parse_start

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "playbooks").glob("*.test.yaml"))


def _dry_run(paths: list[Path], roster: Path, events: Path | None, start: Any, days: int) -> list[dict[str, Any]]:
    _, programs = load_programs(paths)
    out: list[dict[str, Any]] = []
    sim, problems = build_dry_run(
        programs, start=start, days=days, roster=roster, events=events, simulate=None, seed=0, sink=out.append
    )
    assert not problems
    sim.run()
    return out


async def _run(tmp_path: Path, paths: list[Path], roster: Path, events: Path | None, start: Any, days: int) -> list[dict[str, Any]]:
    h = Harness(tmp_path, paths, start)
    _, programs = load_programs(paths)
    channels = {name for p in programs for name in p.playbook.channels}
    files = {name: FileAdapter(FileSettings(path=str(tmp_path / f"{name}.jsonl"), fsync=False), name) for name in channels}
    await h.open(files)
    assert h.store is not None
    end = start + timedelta(days=days)
    h.store.put_members(read_roster(roster, []))
    if events is not None:
        tz = programs[0].tz
        h.store.add_events(e for e in read_events(events, [], tz) if start <= e.at < end)
    await h.run_until(end)
    tzs = {p.name: p.tz for p in programs}
    records = []
    for d in h.store.deliveries():
        row = next(iter(h.store.find_messages(d["key"])))
        records.append(delivery_record(row.message, d["at"].astimezone(tzs[d["playbook"]]).isoformat()))
    written = sum(len((tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()) for name in channels if (tmp_path / f"{name}.jsonl").exists())
    assert written == len(records)
    await h.close()
    return records


def _key(record: dict[str, Any]) -> tuple[str, ...]:
    return (record["at"], record["playbook"], record["step"], record["member"] or "", record["to"], record["text"])


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.name.removesuffix(".test.yaml") for p in SPECS])
async def test_dry_run_and_run_deliver_the_same(tmp_path, spec_path):
    spec = read_spec(spec_path)
    base = spec_path.parent
    paths = [base / spec.playbook]
    _, programs = load_programs(paths)
    start = parse_start(spec.start, programs, None)  # type: ignore[arg-type]
    roster = base / spec.roster
    events = base / spec.events if spec.events else None
    dry = _dry_run(paths, roster, events, start, spec.days)
    real = await _run(tmp_path, paths, roster, events, start, spec.days)
    assert dry, "the spec should deliver something"
    # The dry run lists in time order; the runner in the order sends completed
    # (concurrent within an instant): compare as sorted lists.
    assert sorted(real, key=_key) == sorted(dry, key=_key)


async def test_equivalent_with_simulated_behaviour_across_three_weeks(tmp_path):
    paths = [ROOT / "playbooks" / "checkin-challenge.yaml"]
    _, programs = load_programs(paths)
    start = parse_start("2026-12-01", programs, None)  # type: ignore[arg-type]
    roster = ROOT / "examples" / "members.csv"
    rng = random.Random(11)
    members = [m["id"] for m in read_roster(roster, [])]
    events: list[Event] = []
    for day in range(21):
        for member in members:
            if rng.random() < 0.6:
                at = start + timedelta(days=day, minutes=rng.randrange(24 * 60))
                kind = rng.choice(["checkin.posted", "message.posted"])
                data = {"text": f"打卡 第{day + 1}天"} if kind == "message.posted" else {}
                events.append(Event(f"e{day}-{member}", kind, at, member, data))
    events_file = tmp_path / "events.jsonl"
    with events_file.open("w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps({"id": e.id, "type": e.type, "at": e.at.isoformat(), "member": e.member, "data": e.data}, ensure_ascii=False) + "\n")
    dry = _dry_run(paths, roster, events_file, start, 21)
    real = await _run(tmp_path / "run", paths, roster, events_file, start, 21)
    assert len(dry) > 100
    assert sorted(real, key=_key) == sorted(dry, key=_key)

