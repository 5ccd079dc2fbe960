"""Golden transcript tests (``cmtyflow test``): a small spec file beside a playbook
names its roster, events and span; the dry run's deliveries (SPEC 6 jsonl) are
compared with a checked-in expected file.

Spec file ``NAME.test.yaml`` (paths relative to it)::

    playbook: onboarding.yaml
    roster: ../examples/members.csv
    events: ../examples/onboarding.events.jsonl   # optional
    start: 2026-12-01T00:00:00+08:00
    days: 14
    simulate: checkin=0.7                          # optional, with seed
    expected: onboarding.expected.jsonl            # default: NAME.expected.jsonl

A spec is read as playbooks are (UTF-8, the safe YAML reader, no tags, duplicate keys
refused); what keeps it from being read is ``file:line:col: message``, one a line, and
so is an unknown key (with the key it may stand for).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from ..errors import UserError
from ..loader import MAX_BYTES
from ..spec.errors import translate_errors
from ..spec.sourcemap import Origin, split_lines
from ..spec.yamldata import parse_yaml
from .dryrun import build_dry_run
from .prepare import load_programs, parse_start
from .simulate import SimulationSpecError

SUFFIX = ".test.yaml"


class GoldenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    playbook: str
    roster: str
    events: str | None = None
    start: str
    days: StrictInt = Field(ge=1, le=3660)  # as dry-run --days (a bool is not a number of days)
    simulate: str | None = None
    seed: int = 0
    expected: str | None = None


@dataclass
class GoldenResult:
    spec: Path
    expected: Path
    actual: list[str]
    diff: list[str]
    missing: bool

    @property
    def passed(self) -> bool:
        return not self.missing and not self.diff


def discover(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(path.rglob(f"*{SUFFIX}")))
        elif path.name.endswith(SUFFIX):
            found.append(path)
        elif path.suffix in (".yaml", ".yml") and path.with_name(path.stem + SUFFIX).exists():
            found.append(path.with_name(path.stem + SUFFIX))
        else:
            raise UserError(f"{raw}: not a golden spec (*{SUFFIX}) nor a playbook with one beside it")
    if not found:
        raise UserError(f"no *{SUFFIX} files in {', '.join(paths)}")
    return found


MAX_SPEC_BYTES = MAX_BYTES  # as a playbook's


def _refuse(path: Path, problems: list[tuple[int, int, str]]) -> UserError:
    return UserError("\n".join(f"{path}:{line}:{col}: {message}" for line, col, message in sorted(problems)))


def _spec_text(path: Path) -> str:
    try:
        if not path.is_file():  # a named pipe would block the read forever
            raise UserError(f"{path}: not a regular file; a golden spec is a text file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise _refuse(path, [(1, 1, f"a golden spec may be at most 1 MiB ({MAX_SPEC_BYTES:,} bytes)")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
        raise _refuse(path, [(line, col, "not UTF-8 text: save the file as UTF-8")]) from None


def read_spec(path: Path) -> GoldenSpec:
    text = _spec_text(path)
    origin = Origin(str(path), split_lines(text))
    parsed = parse_yaml(text, origin)
    if parsed.problems:
        raise _refuse(path, [(p.line, p.col, p.message.replace("in a playbook", "in a golden spec"))
                             for p in parsed.problems])
    data, smap = parsed.data, parsed.source_map
    if not isinstance(data, dict):
        raise UserError(f"{path}: a golden spec is a mapping (playbook, roster, start, days, ...)")
    # A start written as a date or a year is read as its text (YAML timestamps are text here).
    given = {k: str(v) if k == "start" and isinstance(v, (int, float)) and not isinstance(v, bool) else v
             for k, v in data.items()}
    try:
        return GoldenSpec.model_validate(given)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown key first, at its place and with the key it may stand for (rooster:
        # is why roster is missing); the others as before, the first of them.
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        lines = [
            f"{path}:{line}:{col}: {found.message}"
            for found in translate_errors(unknown, GoldenSpec, given)
            for line, col in [smap.key_locate(found.loc)]
        ]
        rest = [e for e in errors if e["type"] != "extra_forbidden"]
        if rest:
            lines.append(f"{path}: {'.'.join(str(p) for p in rest[0]['loc'])}: {rest[0]['msg']}")
        raise UserError("\n".join(lines)) from None


def transcript(spec_path: Path) -> tuple[GoldenSpec, list[str]]:
    spec = read_spec(spec_path)
    base = spec_path.parent
    for key, name in (("playbook", spec.playbook), ("roster", spec.roster), ("events", spec.events)):
        if name is not None and not (base / name).exists():
            raise UserError(f"{spec_path}: {key}: no such file {base / name}")
    _, programs = load_programs([base / spec.playbook])
    try:
        start = parse_start(spec.start, programs, None, option="start")  # type: ignore[arg-type]
    except UserError as exc:
        raise UserError(f"{spec_path}: {exc}") from None
    lines: list[str] = []

    def sink(record: dict[str, Any]) -> None:
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=False))

    try:
        sim, problems = build_dry_run(
            programs, start=start, days=spec.days, roster=base / spec.roster,
            events=base / spec.events if spec.events else None, simulate=spec.simulate, seed=spec.seed, sink=sink,
        )
    except SimulationSpecError as exc:
        raise UserError(f"{spec_path}: simulate: {exc}") from None
    if problems:
        raise UserError(f"{spec_path}: bad input rows:\n" + "\n".join(str(p) for p in problems))
    sim.run()
    broken = [w for w in sim.summary()["warnings"] if w.startswith(("run ", "set aside: ", "... and "))]
    if broken:
        # A transcript without the messages of runs that failed would pass for as long
        # as they keep failing (`test --update` recorded 0 deliveries, then "ok").
        raise UserError(f"{spec_path}: runs failed in the dry run, so no transcript is compared or written:\n"
                        + "\n".join(f"  {w}" for w in broken))
    return spec, lines


def run_golden(spec_path: Path, update: bool = False) -> GoldenResult:
    spec, lines = transcript(spec_path)
    name = spec_path.name[: -len(SUFFIX)]
    expected_path = spec_path.parent / (spec.expected or f"{name}.expected.jsonl")
    if update:
        expected_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return GoldenResult(spec_path, expected_path, lines, [], False)
    if not expected_path.exists():
        return GoldenResult(spec_path, expected_path, lines, [], True)
    expected = expected_path.read_text(encoding="utf-8").splitlines()
    diff = list(
        difflib.unified_diff(expected, lines, fromfile=str(expected_path), tofile="dry run", lineterm="", n=1)
    )
    return GoldenResult(spec_path, expected_path, lines, diff, False)
