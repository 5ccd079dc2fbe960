"""Pydantic validation errors -> messages in playbook terms (STYLE: never "Extra inputs
are not permitted").

Rules:
- Each pydantic error's ``loc`` is walked through the model it came from, in step with
  the raw data: the tag pydantic inserts after a step's or trigger's index (``send``)
  and the member labels of plain unions (``str``, ``list[str]``) are dropped, so the
  result is a path into the data the author wrote, for the source map.
- Unknown keys get a "did you mean" from the keys the model at that place allows.
- A step or trigger without exactly one kind key is explained from its raw mapping
  (SPEC 3, 4).
- Errors raised by the models themselves (``PydanticCustomError``) keep their message.
- A key that belongs to other kinds of trigger (``for_each`` on an event trigger) says
  which kinds take it; a wait of the wrong type says a duration is allowed too.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from pydantic_core.core_schema import ErrorType

from .models import STEP_KINDS, TRIGGER_KINDS, Defaults, EventTrigger, ManualTrigger, Playbook
from .sourcemap import Loc
from .wording import TYPE_WORDS, allowed_keys, describe, did_you_mean, noun, place_name, shape
from .yamldata import FULL_WIDTH_COLON

__all__ = ["SpecError", "allowed_keys", "describe", "did_you_mean", "translate", "translate_errors"]

_BUILTIN_TYPES = frozenset(get_args(ErrorType))
_MISSING = object()


@dataclass(frozen=True)
class SpecError:
    loc: Loc  # path into the raw data
    message: str
    at_key: bool = False  # point at the key rather than the value


# --- walking a pydantic loc through the model types -------------------------------------


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` wrappers and without ``None`` in an optional."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _tags(tp: Any) -> dict[str, Any] | None:
    """Members of a discriminated union by tag, or None."""
    tp = _strip(tp)
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    found: dict[str, Any] = {}
    for member in get_args(tp):
        tag = next((m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)), None)
        if tag is None:
            return None
        found[tag] = member
    return found


def _label(tp: Any) -> str:
    tp = _strip(tp)
    origin = get_origin(tp)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_label(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


@dataclass
class _Place:
    loc: Loc  # data path
    owner: Any  # the type holding the last element (a model, dict, list) or None
    tp: Any  # the type of the value at loc, None when unknown
    union: Loc | None  # data path of a plain union passed on the way
    key_error: bool = False


def _walk(loc: tuple[Any, ...], root: type[BaseModel]) -> _Place:
    tp: Any = root
    out: list[str | int] = []
    owner: Any = None
    union: Loc | None = None
    key_error = False
    for part in loc:
        if part == "[key]":
            key_error = True
            continue
        tags = _tags(tp) if tp is not None else None
        if tags is not None and part in tags:
            tp = tags[part]
            continue
        base = _strip(tp) if tp is not None else None
        if get_origin(base) in (Union, types.UnionType):
            union = tuple(out)
            tp = next((m for m in get_args(base) if _label(m) == part), None)
            continue
        owner = base
        if isinstance(base, type) and issubclass(base, BaseModel):
            fields = {f.alias or n: f for n, f in base.model_fields.items()}
            tp = fields[part].annotation if part in fields else None
        elif get_origin(base) is dict:
            tp = get_args(base)[1]
        elif get_origin(base) is list:
            tp = get_args(base)[0]
        else:
            tp = None
        out.append(part)
    return _Place(tuple(out), owner, tp, union, key_error)


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict):
            if part not in data:
                return _MISSING
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


# --- messages ---------------------------------------------------------------------------


def _kind_error(loc: Loc, value: Any, kinds: tuple[str, ...], what: str) -> SpecError:
    listed = ", ".join(kinds)
    if not isinstance(value, dict):
        example = "send: {text: ...}" if what == "step" else "event: member.joined"
        hint = ""
        if isinstance(value, str) and FULL_WIDTH_COLON in value:
            # 'wait：3d', typed with a Chinese input method: one text, not a key and a value.
            key, _, rest = value.partition(FULL_WIDTH_COLON)
            hint = f"; it has a full-width colon '{FULL_WIDTH_COLON}': write '{key.strip()}: {rest.strip()}'"
        return SpecError(
            loc, f"{what} should be a mapping such as '{example}', not {describe(value)}{hint}"
        )
    present = [k for k in value if k in kinds]
    if len(present) >= 2:
        words = {2: "two", 3: "three"}.get(len(present), str(len(present)))
        names = ", ".join(f"'{k}'" for k in present[:-1]) + f" and '{present[-1]}'"
        return SpecError(
            (*loc, present[1]),
            f"{what} has {words} kinds, {names}; a {what} holds exactly one",
            at_key=True,
        )
    common = (
        {"id", "name", "if"}
        if what == "step"
        else {"id", "flow", "where", "mode", "timezone", "for_each"}
    )
    for key in value:
        if key not in common:
            hint = did_you_mean(key, kinds)
            if hint:
                return SpecError(
                    (*loc, key), f"{what} has no kind; expected one of {listed}{hint}", at_key=True
                )
    return SpecError(loc, f"{what} has no kind; expected one of {listed}")


# Steps whose value may be written in more than one shape (SPEC 4: `wait: 3d`).
_STEP_SHAPES = {"wait": "a duration such as 90s, 3d or 1h30m, or a mapping with for, until or event"}

# Keys of schedules (cron, at) that other triggers do not take, and what those start.
_SCHEDULE_KEYS = ("for_each", "timezone")
_TRIGGER_STARTS: dict[type[BaseModel], str] = {
    EventTrigger: "an event trigger starts a run for the event's member",
    ManualTrigger: "a manual trigger starts one run each time cmtyflow launch names it",
}


def _expected(loc: Loc, fallback: str, root: type[BaseModel]) -> str:
    """What the value at ``loc`` should be; the playbook's own shapes apply to
    playbooks only (an adapter setting called ``to`` is no send's ``to``)."""
    if root not in (Playbook, Defaults):
        return fallback
    if len(loc) >= 4 and loc[0] == "flows" and loc[-1] in _STEP_SHAPES:
        return _STEP_SHAPES[str(loc[-1])]
    return shape(loc, fallback)


def _type_message(err: Any, place: _Place, value: Any, root: type[BaseModel]) -> str:
    kind = err["type"]
    what = place_name(place.loc)
    expected = _expected(place.loc, TYPE_WORDS.get(kind, "something else"), root)
    if kind in ("date_from_datetime_parsing", "date_parsing", "datetime_parsing") and err.get(
        "ctx", {}
    ).get("error"):
        return f"{what} should be {expected}, not {describe(value)} ({err['ctx']['error']})"
    if expected == "text" and isinstance(value, (bool, int, float)):
        # `if: true`, `text: 2026`: YAML read a boolean or a number where text goes.
        written = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return f"{what} should be text, not {describe(value)}; write it in quotes: \"{written}\""
    if expected == _STEP_SHAPES["wait"] and isinstance(value, (int, float)) and not isinstance(value, bool):
        # `wait: 90`: a number without its unit.
        return f"{what} should be {expected}, not {describe(value)}; a duration needs its unit, as in {_number(value)}s or {_number(value)}m"
    return f"{what} should be {expected}, not {describe(value)}"


def _key_of_kind(owner: type[BaseModel], key: str, step: Any) -> str | None:
    """The step kind ``key`` belongs under when a step's kind key is empty and ``key``
    is one of its keys: written one level too far out (``send:`` on a line of its own,
    ``channel:`` below it at the same indent); else None."""
    kind = getattr(owner, "kind", None)
    if not isinstance(kind, str) or not isinstance(step, dict) or step.get(kind) is not None:
        return None
    field = owner.model_fields.get(kind)
    spec = getattr(field, "annotation", None) if field is not None else None
    for tp in (spec, getattr(spec, "__origin__", None), *get_args(spec)):  # the model, or inside Annotated
        if _is_model(tp) and key in allowed_keys(tp):
            return kind
    return None


def _one(err: Any, root: type[BaseModel], data: Any) -> SpecError | None:
    kind = err["type"]
    place = _walk(tuple(err["loc"]), root)
    loc = place.loc
    value = err.get("input")
    ctx = err.get("ctx") or {}
    what = place_name(loc)
    if kind == "step_kind":
        return _kind_error(loc, _get(data, loc), STEP_KINDS, "step")
    if kind == "trigger_kind":
        return _kind_error(loc, _get(data, loc), TRIGGER_KINDS, "trigger")
    if kind not in _BUILTIN_TYPES:
        return SpecError(loc, err["msg"])
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        if key in _SCHEDULE_KEYS and place.owner in _TRIGGER_STARTS:
            return SpecError(
                loc, f"'{key}' applies to cron and at triggers only; {_TRIGGER_STARTS[place.owner]}", at_key=True
            )
        if _is_model(place.owner):
            under = _key_of_kind(place.owner, str(key), _get(data, loc[:-1]))
            if under is not None:
                return SpecError(loc, f"'{key}' is a key of {under}: indent it under '{under}:', two spaces "
                                      f"further in than '{under}'", at_key=True)
            hint = did_you_mean(str(key), allowed_keys(place.owner))
            return SpecError(loc, f"unknown key '{key}' in {noun(place.owner)}{hint}", at_key=True)
        return SpecError(loc, f"unknown key '{key}'", at_key=True)
    if kind == "missing":
        key = loc[-1] if loc else "?"
        holder = noun(place.owner) if _is_model(place.owner) else place_name(loc[:-1])
        return SpecError(loc[:-1], f"missing required key '{key}' in {holder}")
    if place.key_error:
        return SpecError(loc, f"key {describe(value)} of {what} should be text", at_key=True)
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        listed = (
            ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else "".join(options)
        )
        return SpecError(loc, f"{what} should be one of {listed}, not {describe(value)}{hint}")
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern == r"^[a-z0-9][a-z0-9-]*$":
            return SpecError(
                loc,
                f"{what} should be lowercase letters, digits and dashes (such as welcome-dm), not {describe(value)}",
            )
        return SpecError(loc, f"{what} does not match the pattern {pattern}: {describe(value)}")
    bounds = {
        "greater_than": "more than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        limit = bounds[kind].format(**{k: _number(v) for k, v in ctx.items()})
        return SpecError(loc, f"{what} should be {limit}, not {describe(value)}")
    if kind in ("too_short", "too_long"):
        size = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return SpecError(loc, f"{what} should hold {word} {size} item{'s' if size != 1 else ''}")
    if kind in ("value_error", "assertion_error"):
        return SpecError(loc, str(ctx.get("error", err["msg"])))
    if kind in TYPE_WORDS:
        return SpecError(loc, _type_message(err, place, value, root))
    message = str(err["msg"])
    message = re.sub(r"^Input should be", f"{what} should be", message)
    return SpecError(loc, message)


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def translate(exc: ValidationError, root: type[BaseModel], data: Any) -> list[SpecError]:
    """Every error of ``exc`` (raised by ``root.model_validate(data)``) in playbook terms."""
    return translate_errors(exc.errors(include_url=False), root, data)


def translate_errors(errors: list[Any], root: type[BaseModel], data: Any) -> list[SpecError]:
    out: list[SpecError] = []
    unions: dict[Loc, list[Any]] = {}
    for err in errors:
        place = _walk(tuple(err["loc"]), root)
        if place.union is not None:
            unions.setdefault(place.union, []).append(err)
            continue
        found = _one(err, root, data)
        if found is not None:
            out.append(found)
    for loc, errs in unions.items():
        out.extend(_union_errors(loc, errs, root, data))
    seen: set[tuple[Loc, str]] = set()
    unique = []
    for e in out:
        if (e.loc, e.message) not in seen:
            seen.add((e.loc, e.message))
            unique.append(e)
    return unique


def _union_errors(loc: Loc, errs: list[Any], root: type[BaseModel], data: Any) -> list[SpecError]:
    """A value that fits no member of a plain union (``to: str | list[str]``): when the
    value is a list or mapping, the errors of the member of that shape explain it best;
    otherwise one message naming what the value may be."""
    value = _get(data, loc)
    container = list if isinstance(value, list) else dict if isinstance(value, dict) else None
    if container is not None:
        chosen = [e for e in errs if str(_union_label(e, loc, root)).startswith(container.__name__)]
        if chosen:
            results = []
            for e in chosen:
                found = _one(e, root, data)
                if found is not None and found.loc != loc:
                    results.append(found)
            if results:
                return results
    expected = _expected(loc, "something else", root)
    return [SpecError(loc, f"{place_name(loc)} should be {expected}, not {describe(value)}")]


def _union_label(err: Any, loc: Loc, root: type[BaseModel]) -> str:
    """The member label pydantic put right after the union's place in ``err['loc']``."""
    raw = tuple(err["loc"])
    for i in range(len(raw)):
        if _walk(raw[:i], root).loc == loc:
            return str(raw[i])
    return ""
