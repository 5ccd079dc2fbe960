"""Playbook versions for live edits (issue: "a playbook's version is its content hash").

Rules:
- A version is the loader's content hash of the playbook text, its folder defaults
  and the template sources it uses. Each version a runner starts with is kept in the
  store's audit log as a snapshot of those texts (kind ``playbook_version``), once.
- Runs finish on the version they started on: at start-up the runner rebuilds the
  older versions its active runs use from their snapshots and gives them to the
  engine. A run whose version has no snapshot (started before snapshots were kept)
  continues on the current version; the runner says so.
- ``plan`` compares the version on disk with the last one run and lists what each
  in-flight run has ahead of it that changed.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ..engine.program import Instr, Program, compile_program
from ..loader import LoadedPlaybook, load
from ..store.base import VERSION_KIND, Store
from ..templates import template_dirs

KIND = VERSION_KIND
DEFAULTS_NAME = "cmtyflow.yaml"


def snapshot(loaded: LoadedPlaybook) -> dict[str, Any]:
    """The texts that make up ``loaded``'s version, enough to rebuild it."""
    path = Path(loaded.path)
    defaults = path.parent / DEFAULTS_NAME
    dirs = template_dirs(path)
    templates: list[list[str]] = []
    for group in loaded.templates.values():
        for source in group:
            rel = _relative(source.path, dirs) or PurePosixPath(source.name).parent / source.path.name
            templates.append([str(rel), source.source])
    return {
        "file": path.name,
        "text": loaded.text,
        "defaults": defaults.read_text(encoding="utf-8") if defaults.is_file() else None,
        "templates": sorted(templates),
    }


def _relative(path: Path, dirs: list[Path]) -> PurePosixPath | None:
    for folder in dirs:
        try:
            return PurePosixPath(Path(path).resolve().relative_to(folder.resolve()).as_posix())
        except ValueError:
            continue
    return None


def rebuild(snap: dict[str, Any], version: str, formats: dict[str, tuple[str, ...]]) -> Program | None:
    """The program of a stored version, or None if it no longer loads (a removed
    adapter, say)."""
    with tempfile.TemporaryDirectory(prefix="cmtyflow-version-") as tmp:
        # One folder down in a private one: templates are also looked up in the
        # playbook's parent folder (``../templates``), which is then ours and empty,
        # not the system's temporary folder, where anyone may write.
        root = Path(tmp) / "version"
        root.mkdir()
        (root / snap["file"]).write_text(snap["text"], encoding="utf-8")
        if snap.get("defaults") is not None:
            (root / DEFAULTS_NAME).write_text(snap["defaults"], encoding="utf-8")
        for rel, source in snap.get("templates", []):
            target = root / "templates" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_text(source, encoding="utf-8")
        result = load([root / snap["file"]])
        if not result.ok or not result.playbooks:
            return None
        from .prepare import adapter_formats, single_destinations

        # The formats of its own channels' adapters (an edit may have changed them: its
        # templates are the ones it was written with). The rebuilt copy hashes its
        # temporary paths; it is the stored version.
        own = {**formats, **adapter_formats(result)}
        return compile_program(replace(result.playbooks[0], version=version), own, single_destinations(result.playbooks[0]))


def recorded(store: Store) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """playbook -> [(version, snapshot)], the version run last at the end (a version run
    again, an edit undone, moves to the end: it is the one running)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in store.audit([KIND]):
        versions = out.setdefault(entry["playbook"], {})
        versions.pop(entry["version"], None)
        versions[entry["version"]] = entry["snapshot"]
    return {name: list(versions.items()) for name, versions in out.items()}


def not_in_state(name: str, known: Iterable[str], detail: str = "") -> str:
    """What ``report`` and ``launch`` say of a playbook name the state has not run
    (``detail`` after the name: " (no such file)")."""
    names = sorted(known)
    return f"no playbook '{name}'{detail} in this state; " + (
        f"it knows: {', '.join(names)}" if names else "the runner has not run any playbook on it yet"
    )


def playbook_zones(store: Store) -> dict[str, str]:
    """playbook -> its timezone, for the playbooks the runner has run on ``store`` (each
    one's last version): what a time written without an offset means to it (SPEC 2)."""
    zones: dict[str, str] = {}
    for name, versions in recorded(store).items():
        version, snap = versions[-1]
        program = rebuild(snap, version, {})
        if program is not None and program.playbook.timezone:
            zones[name] = program.playbook.timezone
    return zones


def record(store: Store, loaded: Iterable[LoadedPlaybook], now: datetime) -> list[tuple[str, bool]]:
    """Keep a snapshot of each version that is not the one run last (a new version, or
    an older one run again: an edit undone), so that the last one recorded is the one
    running; returns (playbook, first version of it) for each one recorded."""
    known = recorded(store)
    fresh = []
    for item in loaded:
        name = item.playbook.name
        kept = known.get(name, [])
        if kept and kept[-1][0] == item.version:
            continue
        store.record(now, KIND, playbook=name, version=item.version, snapshot=snapshot(item))
        fresh.append((name, name not in known))
    return fresh


def older_programs(
    store: Store, current: list[Program], formats: dict[str, tuple[str, ...]]
) -> tuple[list[Program], Counter[tuple[str, str]]]:
    """Programs of the older versions that active runs use, and starts queued behind
    them (a start runs on the version it was queued under), and the (playbook, version)
    pairs, with their run counts, that have no snapshot."""
    now_versions = {p.name: p.version for p in current}
    wanted: Counter[tuple[str, str]] = Counter()
    for (playbook, version, _), n in store.active_run_counts().items():
        if now_versions.get(playbook) != version:
            wanted[(playbook, version)] += n
    wanted.update(
        (r["playbook"], r["version"]) for r in store.waiting_starts() if now_versions.get(r["playbook"]) != r["version"]
    )
    if not wanted:
        return [], Counter()
    snaps = {(name, v): s for name, versions in recorded(store).items() for v, s in versions}
    programs: list[Program] = []
    missing: Counter[tuple[str, str]] = Counter()
    for key, n in wanted.items():
        snap = snaps.get(key)
        prog = rebuild(snap, key[1], formats) if snap is not None else None
        if prog is None:
            missing[key] = n
        else:
            programs.append(prog)
    return programs, missing


# plan --------------------------------------------------------------------------------------------


@dataclass
class StepChange:
    flow: str
    step: str
    change: str  # "removed" | "added" | "changed"
    detail: str = ""
    # Where in the older version's flow (instruction index): the step removed or changed,
    # or the step an added one comes before (the flow's length: at its end).
    at: int = -1


@dataclass
class RunGroup:
    version: str
    flow: str
    at: str  # the step the runs are at (waiting in, or about to run)
    count: int
    ahead: list[StepChange] = field(default_factory=list)  # changes still ahead of them
    templates: list[str] = field(default_factory=list)  # changed templates their steps ahead send


@dataclass
class PlaybookPlan:
    name: str
    old: str | None  # the version last run (None: never run)
    new: str | None  # the version given (None: the playbook was not given, ``left_behind``)
    changes: list[StepChange] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # what else changed: settings, channels, templates
    runs: list[RunGroup] = field(default_factory=list)
    unknown_versions: int = 0  # active runs on a version with no snapshot
    # Not among the playbooks given (renamed or removed), with runs still in flight:
    # the runner keeps them going on their version.
    left_behind: int = 0


def _steps(prog: Program) -> dict[tuple[str, str], tuple[int, Instr]]:
    out = {}
    for flow, instrs in prog.flows.items():
        for pc, ins in enumerate(instrs):
            if ins.step is not None:
                out[(flow, ins.label)] = (pc, ins)
    return out


def _describe(ins: Instr) -> str:
    """A step as a playbook writer would read it: ``wait 2d``, ``send text: hi``."""
    if ins.step is None:
        return ins.op
    kind = type(ins.step).kind
    body = ins.step.model_dump(exclude_none=True, exclude_defaults=True, by_alias=True).get(kind)
    if isinstance(body, dict) and set(body) == {"for"}:
        body = body["for"]
    if isinstance(body, dict):
        return f"{kind} " + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in body.items())
    return f"{kind} {_yaml_value(body)}" if body is not None else kind


def _yaml_value(value: Any) -> str:
    """A value as the playbook writes it (``true``, ``{a: 1}``), not as Python prints it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _key(ins: Instr) -> tuple[str, str]:
    """What matches a step across versions: its id, else (it is known by its position,
    which an inserted step shifts) its content."""
    if ins.step is not None and ins.step.id:
        return ("id", ins.step.id)
    return ("content", json.dumps(_own(ins) if ins.step is not None else ins.op, sort_keys=True))


def _own(ins: Instr) -> Any:
    """A step's content without the steps it holds (a repeat's body, a choose's
    branches): those are steps of their own, compared on their own, so a change inside
    a repeat is one change, not that and the repeat's."""
    data = ins.step.model_dump(mode="json")
    if ins.op == "loop":
        data["repeat"] = {k: v for k, v in data["repeat"].items() if k != "steps"}
    elif ins.op == "choose":
        data["choose"] = [
            {"if": branch.get("if_"), "else": branch.get("else_") is not None} for branch in data["choose"]
        ]
    return data


def diff(old: Program, new: Program) -> list[StepChange]:
    """Steps removed, changed and added, flow by flow. Steps with ids are matched by id;
    the others by aligning the flow's steps in order, so that one step inserted does
    not read as every later one changed."""
    changes = []
    for flow in [*old.flows, *(f for f in new.flows if f not in old.flows)]:
        instrs = old.flows.get(flow, [])
        a = [ins for ins in instrs if ins.step is not None]
        b = [ins for ins in new.flows.get(flow, []) if ins.step is not None]
        where = {id(ins): k for k, ins in enumerate(instrs)}
        # The older flow's instruction index of each a[i], and its end past them.
        pos = [where[id(ins)] for ins in a] + [len(instrs)]
        matcher = difflib.SequenceMatcher(None, [_key(i) for i in a], [_key(i) for i in b], autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for k, (x, y) in enumerate(zip(a[i1:i2], b[j1:j2], strict=True), i1):
                    if _own(x) != _own(y):  # the same id, new content
                        changes.append(StepChange(flow, x.label, "changed", f"{_describe(x)} -> {_describe(y)}", pos[k]))
                continue
            paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
            for k, (x, y) in enumerate(zip(a[i1:i1 + paired], b[j1:j1 + paired], strict=True), i1):
                if x.step.id and x.step.id != y.step.id:  # an id gone, another come: not the same step
                    changes.append(StepChange(flow, x.label, "removed", _describe(x), pos[k]))
                    changes.append(StepChange(flow, y.label, "added", _describe(y), pos[k]))
                else:
                    changes.append(StepChange(flow, x.label, "changed", f"{_describe(x)} -> {_describe(y)}", pos[k]))
            changes += [StepChange(flow, x.label, "removed", _describe(x), pos[k]) for k, x in enumerate(a[i1 + paired:i2], i1 + paired)]
            changes += [StepChange(flow, y.label, "added", _describe(y), pos[i1 + paired]) for y in b[j1 + paired:j2]]
    return changes


def trigger_changes(old: Program, new: Program) -> list[str]:
    a = {t.id: t.model_dump() for t in old.playbook.triggers}
    b = {t.id: t.model_dump() for t in new.playbook.triggers}
    anew = _schedules_anew(old, new)
    out = [f"trigger {t} removed" for t in a if t not in b]
    out += [f"trigger {t} changed" + (_ANEW if t in anew else "") for t in a if t in b and a[t] != b[t]]
    out += [f"trigger {t}: the playbook's timezone or window changed" + _ANEW
            for t in a if t in b and a[t] == b[t] and t in anew]
    out += [f"trigger {t} added" for t in b if t not in a]
    return out


_ANEW = "; its schedule starts anew when a runner loads this version (firings the old one missed are not caught up)"


def _schedules_anew(old: Program, new: Program) -> set[str]:
    """The schedule triggers of both versions whose firings are decided differently (the
    runner keys a schedule's position by them: ``driver.schedule_key``)."""
    from .driver import schedule_key

    def keys(prog: Program) -> dict[str, str]:
        return {
            t.id: schedule_key(prog, t, prog.playbook.timezone) for t in prog.playbook.triggers if t.kind in ("cron", "at")
        }

    before, after = keys(old), keys(new)
    return {t for t in before if t in after and before[t] != after[t]}


def other_changes(old: Program, new: Program) -> list[str]:
    """What changed besides steps and triggers, each said once: a top-level setting (the
    folder defaults' included), a channel (added, removed, its adapter or settings; the
    runs in flight send through the current one of that name), a template's files."""
    out: list[str] = []
    a = old.playbook.model_dump(exclude={"flows", "triggers", "channels"})
    b = new.playbook.model_dump(exclude={"flows", "triggers", "channels"})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key} changed")
    for name in sorted(set(old.playbook.channels) | set(new.playbook.channels)):
        was, now = old.playbook.channels.get(name), new.playbook.channels.get(name)
        if was is None:
            out.append(f"channel {name} added")
        elif now is None:
            out.append(f"channel {name} removed (runs in flight on the older version still send through it)")
        elif was.adapter != now.adapter:
            out.append(f"channel {name}: adapter {was.adapter} -> {now.adapter} (for runs in flight too)")
        elif was.settings() != now.settings():
            out.append(f"channel {name}: settings changed (for runs in flight too)")

    def sources(prog: Program) -> dict[str, dict[Any, str]]:
        return {name: {k: t.source for k, t in ts.files.items()} for name, ts in prog.templates.items()}

    was_t, now_t = sources(old), sources(new)
    for name in sorted(set(was_t) | set(now_t)):
        if name not in now_t:
            out.append(f"template {name} no longer used")
        elif name not in was_t:
            out.append(f"template {name} now used")
        elif was_t[name] != now_t[name]:
            out.append(f"template {name} changed")
    return out


def changed_templates(old: Program, new: Program) -> set[str]:
    """Templates both versions use whose files differ."""
    return {
        name for name, ts in old.templates.items()
        if name in new.templates and {k: t.source for k, t in ts.files.items()} != {k: t.source for k, t in new.templates[name].files.items()}
    }


def _next(ins: Any, i: int) -> list[int]:
    """Where the instruction at ``i`` may go on to: every way (a branch, a loop's body or
    its exit, a jump back)."""
    out = [] if ins.op == "jump" else [i + 1]
    if ins.target >= 0:
        out.append(ins.target)
    return out + [target for _, target in ins.branches]


def reachable(instrs: list[Any], pc: int, *, beyond: bool = False) -> set[int]:
    """The instructions a run at ``pc`` may still run, ``pc`` itself included (the step
    it waits in); with ``beyond``, only those after it (``pc`` again only when a loop
    comes back to it). A step earlier in a loop that goes round again counts."""
    seen: set[int] = set()
    todo = _next(instrs[pc], pc) if beyond and pc < len(instrs) else [pc]
    while todo:
        i = todo.pop()
        if i in seen or not 0 <= i < len(instrs):
            continue
        seen.add(i)
        todo += _next(instrs[i], i)
    return seen


def _templates_of(ins: Any) -> set[str]:
    spec = getattr(ins.step, "send", None) if ins.op == "send" else None
    if spec is None:
        return set()
    names = {spec.template} if spec.template else set()
    return names | {v.template for v in (spec.variants or {}).values() if v.template}


QUEUED = -1  # the place of a start queued behind an active run (mode: queued): not begun


def plan(store: Store, current: list[Program], formats: dict[str, tuple[str, ...]]) -> list[PlaybookPlan]:
    known = recorded(store)
    active: dict[str, Counter[tuple[str, str, int]]] = {}
    for run in store.runs(status="active"):
        active.setdefault(run.playbook, Counter())[(run.version, run.flow, run.pc)] += 1
    # A start queued behind an active run runs on the version it was queued under, from
    # its first step: plan said "no runs in flight on an older version" of one.
    for record in store.waiting_starts():
        active.setdefault(record["playbook"], Counter())[(record["version"], record["flow"], QUEUED)] += 1
    plans = []
    for prog in current:
        versions = known.get(prog.name, [])
        last = versions[-1][0] if versions else None
        result = PlaybookPlan(prog.name, last, prog.version)
        builds: dict[str, Program | None] = {prog.version: prog}
        snaps = dict(versions)
        if last is not None and last != prog.version:
            old = builds[last] = rebuild(snaps[last], last, formats)
            if old is not None:
                result.changes = diff(old, prog)
                result.triggers = trigger_changes(old, prog)
                result.other = other_changes(old, prog)
        for (version, flow, pc), n in sorted(active.get(prog.name, Counter()).items()):
            if version == prog.version:
                continue
            if version not in builds:
                builds[version] = rebuild(snaps[version], version, formats) if version in snaps else None
            old = builds[version]
            if old is None:
                result.unknown_versions += n
                continue
            instrs = old.flows.get(flow, [])
            queued = pc == QUEUED
            pc = 0 if queued else pc
            at = "(queued behind an active run, not begun)" if queued else instrs[pc].label if pc < len(instrs) else "(end)"
            changes = diff(old, prog)
            on = reachable(instrs, pc)
            beyond = on if queued else reachable(instrs, pc, beyond=True)
            # A step added goes before the step at its place: ahead when that place comes
            # after where the runs are (not the step they are in), or at the end (every
            # run gets there).
            ahead = [
                c for c in changes if c.flow == flow
                and (c.at in beyond or c.at >= len(instrs) if c.change == "added" else c.at in on)
            ]
            fixed = changed_templates(old, prog)
            templates = sorted({t for i in on for t in _templates_of(instrs[i]) if t in fixed})
            result.runs.append(RunGroup(version, flow, at, n, ahead, templates))
        plans.append(result)
    given = {prog.name for prog in current}
    for name, groups in sorted(active.items()):
        if name in given:
            continue
        # Not given (renamed, removed, or only other files named): its runs, where
        # they are, each on its own version; nothing to compare them with.
        versions = known.get(name, [])
        last = versions[-1][0] if versions else ""
        left = PlaybookPlan(name, last or None, None, left_behind=sum(groups.values()))
        snaps = dict(versions)
        for (version, flow, pc), n in sorted(groups.items()):
            old = rebuild(snaps[version], version, formats) if version in snaps else None
            instrs = old.flows.get(flow, []) if old is not None else []
            if pc == QUEUED:
                at = "(queued behind an active run, not begun)"
            else:
                at = instrs[pc].label if pc < len(instrs) else ("(end)" if old is not None else "?")
            left.runs.append(RunGroup(version, flow, at, n))
        plans.append(left)
    return plans
