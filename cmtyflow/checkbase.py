"""What the semantic checks share: the context of one playbook and walks over its raw
data (steps, triggers, sends), used by ``checks``, ``channelchecks`` and
``textchecks``, and by the loader to find the templates a playbook refers to.

Rules:
- The walks read raw data (after folder defaults are merged), skipping anything of the
  wrong shape; the models report that.
- A step's kind is its one kind key (SPEC 4); a step with none or several has kind
  None and is still walked for its common keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .problems import ERROR, Problem
from .spec.models import STEP_KINDS, TRIGGER_KINDS
from .spec.sourcemap import Loc, Mark, SourceMap
from .templates import TemplateSource


@dataclass
class CheckContext:
    path: Path  # the playbook, as the user named it
    data: dict[str, Any]  # raw data, folder defaults merged in
    smap: SourceMap
    templates: dict[str, list[TemplateSource]]  # every referenced template name -> files found
    template_dirs: list[Path]

    def at(self, loc: Loc, message: str, severity: str = ERROR, key: bool = False) -> Problem:
        mark = self.smap.key_mark(loc) if key else self.smap.mark(loc)
        return problem(mark, message, severity)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        return value if isinstance(value, dict) else {}


def problem(mark: Mark, message: str, severity: str = ERROR) -> Problem:
    return Problem(mark.path, mark.line, mark.col, severity, message, mark.source_line)


@dataclass(frozen=True)
class RawStep:
    loc: Loc
    kind: str | None  # None: no kind key or several (the models report it)
    body: dict[str, Any]


def step_kind(step: dict[str, Any]) -> str | None:
    """A raw step's one kind key, or None for none or several."""
    kinds = [k for k in STEP_KINDS if k in step]
    return kinds[0] if len(kinds) == 1 else None


def raw_steps(steps: Any, loc: Loc) -> Iterator[RawStep]:
    """The steps of one list (not the ones inside them), with their data paths."""
    if isinstance(steps, list):
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                yield RawStep((*loc, index), step_kind(step), step)


def _steps(steps: Any, loc: Loc) -> Iterator[RawStep]:
    for raw in raw_steps(steps, loc):
        yield raw
        here, kind, step = raw.loc, raw.kind, raw.body
        if kind == "choose" and isinstance(step["choose"], list):
            for b, branch in enumerate(step["choose"]):
                if isinstance(branch, dict):
                    for key in ("steps", "else"):
                        yield from _steps(branch.get(key), (*here, "choose", b, key))
        elif kind == "repeat" and isinstance(step["repeat"], dict):
            yield from _steps(step["repeat"].get("steps"), (*here, "repeat", "steps"))


def iter_steps(data: dict[str, Any]) -> Iterator[RawStep]:
    """Every step of every flow, depth-first, with its data path."""
    flows = data.get("flows")
    if isinstance(flows, dict):
        for name, steps in flows.items():
            yield from _steps(steps, ("flows", name))


def iter_triggers(data: dict[str, Any]) -> Iterator[tuple[Loc, str | None, dict[str, Any]]]:
    triggers = data.get("triggers")
    if not isinstance(triggers, list):
        return
    for index, trigger in enumerate(triggers):
        if isinstance(trigger, dict):
            kinds = [k for k in TRIGGER_KINDS if k in trigger]
            yield ("triggers", index), (kinds[0] if len(kinds) == 1 else None), trigger


def sends(data: dict[str, Any]) -> Iterator[tuple[Loc, dict[str, Any]]]:
    for step in iter_steps(data):
        if step.kind == "send" and isinstance(step.body["send"], dict):
            yield (*step.loc, "send"), step.body["send"]


def template_names(data: dict[str, Any]) -> list[str]:
    """Every template name a send refers to, directly or through its variants."""
    names: list[str] = []
    for _loc, send in sends(data):
        if isinstance(send.get("template"), str):
            names.append(send["template"])
        variants = send.get("variants")
        if isinstance(variants, dict):
            for variant in variants.values():
                if isinstance(variant, dict) and isinstance(variant.get("template"), str):
                    names.append(variant["template"])
    return list(dict.fromkeys(names))


def listing(names: Any) -> str:
    names = sorted(str(n) for n in names)
    return ", ".join(names) if names else "none"
