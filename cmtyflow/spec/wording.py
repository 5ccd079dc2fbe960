"""How validation messages name things: values, models, places in a playbook.

Rules:
- Messages speak of keys, mappings, lists and text as the author wrote them, never of
  Python or pydantic types.
- A place is named after what it is in the playbook: ``flow 'onboard'``, ``step 2 of
  flow 'onboard'``, ``'max_per_member_per_day'``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel

from .sourcemap import Loc

# What a model is called in messages; others are named from their class name.
NOUNS = {
    "Playbook": "playbook",
    "Defaults": "cmtyflow.yaml",
    "QuietHours": "quiet_hours",
    "CatchUp": "catch_up",
    "EventTrigger": "trigger",
    "CronTrigger": "trigger",
    "AtTrigger": "trigger",
    "ManualTrigger": "trigger",
    "ManualSpec": "manual",
    "ManualInput": "manual input",
    "SendSpec": "send",
    "WaitSpec": "wait",
    "AwardSpec": "award",
    "CheckinSpec": "checkin",
    "RepeatSpec": "repeat",
    "EmitSpec": "emit",
    "Branch": "choose branch",
}

# What a value is expected to be, by the key that holds it.
SHAPES = {
    "flows": "a mapping of flow name to steps",
    "channels": "a mapping of channel name to channel settings",
    "roles": "a mapping of role name to member ids",
    "vars": "a mapping of names to values",
    "goals": "a mapping of goal name to goal",
    "policies": "a mapping of policy settings",
    "triggers": "a list of triggers",
    "variants": "a mapping of variant name to variant",
    "inputs": "a mapping of input name to input",
    "steps": "a list of steps",
    "else": "a list of steps",
    "choose": "a list of branches",
    "tag": "a tag name or a list of tag names",
    "untag": "a tag name or a list of tag names",
    "to": "member, channel, a role such as roles.moderators, or a list of member ids",
    "set": "a mapping of state key to value",
    "data": "a mapping of names to values",
    "times": "a whole number or an expression",
}

TYPE_WORDS = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "date_type": "a date such as 2026-12-01",
    "date_parsing": "a date such as 2026-12-01",
    "date_from_datetime_parsing": "a date such as 2026-12-01",
    "date_from_datetime_inexact": "a date such as 2026-12-01",
    "datetime_type": "a date and time such as 2026-12-24T20:00",
    "datetime_parsing": "a date and time such as 2026-12-24T20:00",
    "datetime_from_date_parsing": "a date and time such as 2026-12-24T20:00",
    "url_type": "a URL",
    "url_parsing": "a URL",
    "url_scheme": "a URL",
}


def describe(value: Any) -> str:
    """A value as a message shows it: ``'abc'``, ``a list``, ``the number 5``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 40 else f"'{value[:37]}...'"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def noun(model: type[BaseModel]) -> str:
    name = model.__name__
    if name in NOUNS:
        return NOUNS[name]
    if name.endswith("Step"):
        return name[: -len("Step")].lower() + " step"
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def allowed_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def place_name(loc: Loc) -> str:
    """How the value at ``loc`` is named: ``'flows'``, ``flow 'onboard'``, ``step 2 of
    flow 'onboard'``."""
    if not loc:
        return "the playbook"
    last = loc[-1]
    parent = loc[-2] if len(loc) > 1 else None
    if isinstance(last, int):
        if len(loc) == 3 and loc[0] == "flows":
            return f"step {last + 1} of flow '{parent}'"
        if loc == ("triggers", last):
            return f"trigger {last + 1}"
        return f"item {last + 1} of '{parent}'" if parent is not None else f"item {last + 1}"
    singular = {"flows": "flow", "channels": "channel", "roles": "role", "goals": "goal"}
    if len(loc) == 2 and parent in singular:
        return f"{singular[str(parent)]} '{last}'"
    if parent == "variants":
        return f"variant '{last}'"
    return f"'{last}'"


def shape(loc: Loc, fallback: str) -> str:
    """What the value at ``loc`` of a playbook should be, or ``fallback``."""
    if len(loc) == 2 and loc[0] == "flows":
        return "a list of steps"
    if len(loc) == 2 and loc[0] == "roles":
        return "a list of member ids"
    key = loc[-1] if loc else None
    return SHAPES.get(key, fallback) if isinstance(key, str) else fallback
