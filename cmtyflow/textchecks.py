"""Expressions and message templates, checked statically (SPEC 2).

Rules:
- Every expression (audience, trigger and goal ``where``, step and branch ``if``, wait
  ``where``, repeat ``while`` and text ``times``, text values of ``set`` and of emit
  ``data``, emit ``member``) and every inline template (send ``text``, variant
  ``text``) goes through ``exprcheck.static_problems_*``; a problem on line N of the text is
  reported on the YAML line that holds line N.
- ``template:`` names must resolve for the playbook's locale or for no locale, in any
  format; every file found for a referenced name is checked, with problems pointing
  into that file.
- A ``state.KEY`` read that no ``set`` step of the playbook writes (and that is not a
  built-in key) is a warning: each run that reaches it fails, unless the key was
  written by an earlier version of the playbook. ``state.get('KEY', default)`` and
  ``is defined`` guard a read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from .adapters.base import FORMATS
from .checkbase import CheckContext, RawStep, iter_steps, iter_triggers, problem, sends
from .engine.context import BUILTIN_STATE
from .exprcheck import (
    StaticProblem,
    state_keys_read,
    static_problems_expression,
    static_problems_template,
)
from .problems import ERROR, WARNING, Problem
from .spec.sourcemap import Loc, first_non_blank
from .templates import TemplateSource, pick, valid_name

# Names Jinja itself defines inside templates (loops, macros).
TEMPLATE_NAMES = ("loop", "caller", "varargs", "kwargs")


def _expressions(ctx: CheckContext) -> Iterator[tuple[Loc, Any]]:
    data = ctx.data
    audience = data.get("audience")
    if isinstance(audience, dict):
        yield ("audience", "where"), audience.get("where")
    for loc, _kind, trigger in iter_triggers(data):
        yield (*loc, "where"), trigger.get("where")
    for name, goal in ctx.mapping("goals").items():
        if isinstance(goal, dict):
            yield ("goals", name, "where"), goal.get("where")
    for step in iter_steps(data):
        yield from step_expressions(step)


def step_expressions(step: RawStep) -> Iterator[tuple[Loc, Any]]:
    """The expressions of one step (its ``if`` and its kind's), with their data paths."""
    yield (*step.loc, "if"), step.body.get("if")
    kind = step.kind
    body = step.body.get(kind) if kind else None
    if kind is None or not isinstance(body, (dict, list)):
        return
    here = (*step.loc, kind)
    if kind == "wait" and isinstance(body, dict):
        yield (*here, "where"), body.get("where")
    elif kind == "repeat" and isinstance(body, dict):
        yield (*here, "while"), body.get("while")
        yield (*here, "times"), body.get("times")
    elif kind == "set" and isinstance(body, dict):
        for key, value in body.items():
            yield (*here, key), value
    elif kind == "emit" and isinstance(body, dict):
        yield (*here, "member"), body.get("member")
        if isinstance(body.get("data"), dict):
            for key, value in body["data"].items():
                yield (*here, "data", key), value
    elif kind == "choose" and isinstance(body, list):
        for index, branch in enumerate(body):
            if isinstance(branch, dict):
                yield (*here, index, "if"), branch.get("if")


def send_texts(loc: Loc, send: dict[str, Any]) -> Iterator[tuple[Loc, Any]]:
    """A send's inline templates: its ``text`` and its variants'."""
    yield (*loc, "text"), send.get("text")
    variants = send.get("variants")
    if isinstance(variants, dict):
        for name, variant in variants.items():
            if isinstance(variant, dict):
                yield (*loc, "variants", name, "text"), variant.get("text")


def send_template_refs(loc: Loc, send: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """The template names a send refers to: its ``template`` and its variants'."""
    if isinstance(send.get("template"), str):
        yield (*loc, "template"), send["template"]
    variants = send.get("variants")
    if isinstance(variants, dict):
        for name, variant in variants.items():
            if isinstance(variant, dict) and isinstance(variant.get("template"), str):
                yield (*loc, "variants", name, "template"), variant["template"]


def _known(ctx: CheckContext) -> dict[str, list[str]]:
    """The playbook's own names whose keys a misspelling is checked against."""
    return {"vars": [str(k) for k in ctx.mapping("vars")], "roles": [str(k) for k in ctx.mapping("roles")]}


def check_expressions(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    known = _known(ctx)
    for loc, source in _expressions(ctx):
        if not isinstance(source, str):
            continue
        for p in static_problems_expression(source, known=known):
            found.append(problem(ctx.smap.text_mark(loc, p.lineno, source), p.message))
    return found


def _inline_templates(ctx: CheckContext) -> Iterator[tuple[Loc, Any]]:
    for loc, send in sends(ctx.data):
        yield from send_texts(loc, send)


def _template_refs(ctx: CheckContext) -> Iterator[tuple[Loc, str]]:
    for loc, send in sends(ctx.data):
        yield from send_template_refs(loc, send)


def check_templates(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    known = _known(ctx)
    for loc, source in _inline_templates(ctx):
        if isinstance(source, str):
            for p in static_problems_template(source, TEMPLATE_NAMES, known):
                found.append(problem(ctx.smap.text_mark(loc, p.lineno, source), p.message))
    locale = ctx.data.get("locale") if isinstance(ctx.data.get("locale"), str) else "en"
    for loc, name in _template_refs(ctx):
        if not valid_name(name):
            found.append(
                ctx.at(loc, f"template name '{name}' must stay inside the templates folder")
            )
            continue
        sources = ctx.templates.get(name, [])
        if pick(sources, [locale, None], FORMATS) is None:
            found.append(
                ctx.at(
                    loc,
                    f"template '{name}' not found: looked for templates/{name}.{locale}.*.j2 "
                    f"and templates/{name}.*.j2",
                )
            )
    checked: set[str] = set()
    for sources in ctx.templates.values():
        for source in sources:
            if str(source.path) not in checked:
                checked.add(str(source.path))
                file_problems = template_file_problems(source)
                found += file_problems
                if not file_problems:
                    # This playbook's vars and roles: a shared file is checked against
                    # each playbook that uses it.
                    keys = static_problems_template(source.source, TEMPLATE_NAMES, known)
                    found += problems_in_file(str(source.path), source.source, keys, f" (in playbook {ctx.path.name})")
    return found


def _state_written(ctx: CheckContext) -> set[str]:
    """The state keys this playbook's steps write: ``set`` keys and the built-in ones
    (``award`` and ``checkin`` write only those)."""
    written = set(BUILTIN_STATE)
    for step in iter_steps(ctx.data):
        body = step.body.get("set") if step.kind == "set" else None
        if isinstance(body, dict):
            written.update(str(key) for key in body)
    return written


def _unset_key(key: str, written: set[str]) -> str:
    own = [k for k in sorted(written) if k not in BUILTIN_STATE]
    hint = _near_key(key, sorted(written)) or (f" (its steps set {', '.join(own)})" if own else "")
    return (
        f"state '{key}' is read but no step of this playbook sets it{hint}, so a run that reads it fails; "
        f"write it with set: {{{key}: ...}}, or read it as state.get('{key}', 0)"
    )


def _near_key(key: str, options: list[str]) -> str:
    from difflib import get_close_matches

    close = get_close_matches(key, options, n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_state_reads(ctx: CheckContext) -> list[Problem]:
    """``state.KEY`` reads of keys the playbook never writes (rules above)."""
    written = _state_written(ctx)
    found: list[Problem] = []
    texts = [(loc, source, False) for loc, source in _expressions(ctx)]
    texts += [(loc, source, True) for loc, source in _inline_templates(ctx)]
    for loc, source, template in texts:
        if isinstance(source, str):
            for key, lineno in state_keys_read(source, template):
                if key not in written:
                    found.append(problem(ctx.smap.text_mark(loc, lineno, source), _unset_key(key, written), WARNING))
    seen: set[str] = set()
    for _loc, name in _template_refs(ctx):
        for source in ctx.templates.get(name, []) if valid_name(name) else []:
            if str(source.path) in seen:
                continue
            seen.add(str(source.path))
            lines = source.source.splitlines()
            for key, lineno in state_keys_read(source.source, True):
                if key not in written:
                    line = lines[lineno - 1] if 0 < lineno <= len(lines) else None
                    found.append(Problem(str(source.path), lineno, first_non_blank(line), WARNING,
                                         _unset_key(key, written) + f" (in playbook {ctx.path.name})", line))
    return found


def template_file_problems(source: TemplateSource) -> list[Problem]:
    return list(_file_problems(str(source.path), source.source))


@lru_cache(maxsize=1024)
def _file_problems(path: str, text: str) -> tuple[Problem, ...]:
    # A shared templates folder serves many playbooks: check each file once.
    return tuple(problems_in_file(path, text, static_problems_template(text, TEMPLATE_NAMES)))


def problems_in_file(path: str, text: str, problems: Iterable[StaticProblem], suffix: str = "") -> list[Problem]:
    """``problems`` of the template file ``path`` (its ``text``), at their lines."""
    lines = text.splitlines()
    found = []
    for p in problems:
        line = lines[p.lineno - 1] if 0 < p.lineno <= len(lines) else None
        found.append(Problem(path, p.lineno, first_non_blank(line), ERROR, p.message + suffix, line))
    return found
