"""Helpers for engine scenario tests.

``simulate`` runs inline playbooks through the real loader, compiler, engine, driver
and dry run (virtual clock, MemoryStore) and returns the SPEC 6 delivery records and
the dry-run summary. ``deliveries_of`` trims records to (at, member, step) for exact
comparisons. ``compile_text`` and ``engine_for`` support the pure-engine tests that
feed one input to ``Engine.handle``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.engine.core import Engine
from cmtyflow.engine.program import Program, compile_program
from cmtyflow.loader import load
from cmtyflow.problems import ERROR
from cmtyflow.runtime.dryrun import DryRun
from cmtyflow.runtime.inputs import parse_event
from cmtyflow.runtime.prepare import adapter_formats, parse_start, single_destinations
from cmtyflow.store.memory import MemoryStore


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write_playbooks(
    tmp_path: Path,
    playbook_yaml: str | Sequence[str],
    templates: Mapping[str, str] | None = None,
    defaults: str | None = None,
) -> list[Path]:
    """Write each playbook as ``pb<i>.yaml`` (in the given order, which is load order),
    templates under ``templates/`` and an optional folder ``cmtyflow.yaml``."""
    texts = [playbook_yaml] if isinstance(playbook_yaml, str) else list(playbook_yaml)
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"pb{i}.yaml"
        path.write_text(dedent(text), encoding="utf-8")
        paths.append(path)
    for name, source in (templates or {}).items():
        tpath = tmp_path / "templates" / name
        tpath.parent.mkdir(parents=True, exist_ok=True)
        tpath.write_text(source, encoding="utf-8")
    if defaults is not None:
        (tmp_path / "cmtyflow.yaml").write_text(dedent(defaults), encoding="utf-8")
    return paths


def compile_paths(paths: Sequence[Path]) -> list[Program]:
    result = load(paths)
    errors = [p for p in result.problems if p.severity == ERROR]
    assert not errors, "\n".join(str(p) for p in errors)
    assert result.playbooks, "no playbook loaded"
    formats = adapter_formats(result)
    return [compile_program(loaded, formats, single_destinations(loaded)) for loaded in result.playbooks]


def compile_text(
    playbook_yaml: str | Sequence[str], tmp_path: Path, templates: Mapping[str, str] | None = None
) -> list[Program]:
    return compile_paths(write_playbooks(tmp_path, playbook_yaml, templates))


def simulate(
    playbook_yaml: str | Sequence[str],
    roster: list[dict[str, Any]],
    events: list[dict[str, Any]],
    start: str,
    days: int,
    tmp_path: Path,
    *,
    templates: Mapping[str, str] | None = None,
    defaults: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dry-run ``playbook_yaml`` (one text or several, loaded in order) over
    ``[start, start + days)``; ``start`` without an offset is in the first playbook's
    timezone, as ``dry-run --start``. Events are SPEC 3 dicts; ``at`` without an
    offset is in the first playbook's timezone."""
    programs = compile_paths(write_playbooks(tmp_path, playbook_yaml, templates, defaults))
    begin = parse_start(start, programs, None)  # type: ignore[arg-type]
    deliveries: list[dict[str, Any]] = []
    sim = DryRun(programs, start=begin, days=days, sink=deliveries.append)
    sim.load_roster([dict(m) for m in roster])
    tz = ZoneInfo(programs[0].playbook.timezone)
    sim.load_events(parse_event(dict(e), tz) for e in events)
    sim.run()
    return deliveries, sim.summary()


def deliveries_of(deliveries: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """(at, member, step) per delivery, in delivery order."""
    return [(d["at"], d["member"], d["step"]) for d in deliveries]


def engine_for(programs: list[Program], roster: list[dict[str, Any]]) -> tuple[Engine, MemoryStore]:
    store = MemoryStore()
    store.put_members([dict(m) for m in roster])
    return Engine(programs), store


@pytest.fixture(name="simulate")
def simulate_fixture() -> Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]:
    return simulate


@pytest.fixture(name="compile_text")
def compile_text_fixture() -> Callable[..., list[Program]]:
    return compile_text
