"""Semantic checks that need the whole playbook (SPEC 1-4): references between parts,
names, schedules, channels and their adapters, literal secrets.

Rules:
- Checks read the raw data (after folder defaults are merged), never the models, so
  they still run when the models reject some other part of the file: every problem
  is reported in one pass. A value of the wrong type is skipped here; the models
  report it.
- Each problem carries the position of the offending key or value; problems inside a
  folder's ``cmtyflow.yaml`` point into that file.
- Channels and their adapters are checked in ``channelchecks``, expressions and
  templates in ``textchecks``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, croniter

from . import channelchecks, loopchecks, scopechecks, textchecks
from .adapters.destinations import describe as describe_destination
from .adapters.destinations import single_destination
from .checkbase import (
    CheckContext,
    iter_steps,
    iter_triggers,
    listing,
    problem,
    sends,
    template_names,
)
from .engine.core import RESERVED_PREFIX, STANDARD_EVENTS, event_type_fault
from .problems import WARNING, Problem
from .secretscan import credential_in_url
from .spec.errors import did_you_mean
from .spec.sourcemap import Loc

__all__ = [
    "CheckContext",
    "check_names",
    "check_playbook",
    "cron_problem",
    "template_names",
    "valid_timezone",
]


def check_playbook(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    found += _check_timezone(ctx, ("timezone",), allow_member=False)
    found += _check_triggers(ctx)
    found += _check_event_types(ctx)
    found += _check_flows_used(ctx)
    found += _check_step_ids(ctx)
    found += loopchecks.check_loops(ctx)
    found += _check_sends(ctx)
    found += channelchecks.check_channels(ctx)
    found += _check_credential_urls(ctx)
    found += textchecks.check_expressions(ctx)
    found += textchecks.check_templates(ctx)
    found += textchecks.check_state_reads(ctx)
    found += scopechecks.check_scope(ctx)
    return found


@lru_cache(maxsize=1)
def _zones() -> list[str]:
    return sorted(z for z in available_timezones() if valid_timezone(z))


# Files of the system's zone database that are not IANA zone names: the machine's own
# zone (``localtime``, another on the next machine), tzdata's placeholder and its
# variants with leap seconds or POSIX rules.
_NOT_ZONES = ("localtime", "Factory", "posixrules")


def valid_timezone(name: str) -> bool:
    if name in _NOT_ZONES or name.startswith(("posix/", "right/")):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# Abbreviations people write for a zone, and the IANA names they usually mean: the
# nearest spelling among the zones was wrong for each ('PST': did you mean 'MST'?).
_ABBREVIATIONS = {
    "PST": "America/Los_Angeles", "PDT": "America/Los_Angeles", "PT": "America/Los_Angeles",
    "MDT": "America/Denver", "MT": "America/Denver",
    "CST": "America/Chicago (US Central) or Asia/Shanghai (China)", "CDT": "America/Chicago", "CT": "America/Chicago",
    "EDT": "America/New_York", "ET": "America/New_York",
    "AKST": "America/Anchorage", "AKDT": "America/Anchorage",
    "BST": "Europe/London", "CEST": "Europe/Paris", "EEST": "Europe/Athens",
    "IST": "Asia/Kolkata (India) or Europe/Dublin (Ireland)", "JST": "Asia/Tokyo", "KST": "Asia/Seoul",
    "SGT": "Asia/Singapore", "HKT": "Asia/Hong_Kong", "AEST": "Australia/Sydney", "AEDT": "Australia/Sydney",
    "NZST": "Pacific/Auckland", "NZDT": "Pacific/Auckland", "BJT": "Asia/Shanghai",
}
# Valid names that keep one offset all year where people usually want their city's
# clock (with its daylight saving).
_FIXED = {"EST": "America/New_York", "MST": "America/Denver (or America/Phoenix, which keeps no daylight saving)"}
_OFFSET = re.compile(r"(?:UTC|GMT)\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


def _abbreviation(value: str) -> str | None:
    """For a name that is no zone but a known abbreviation or a UTC offset: what to
    write instead; else None."""
    upper = value.strip().upper()
    if upper in _ABBREVIATIONS:
        return f"write the place's IANA name, e.g. {_ABBREVIATIONS[upper]} (an abbreviation is not a timezone)"
    offset = _OFFSET.fullmatch(value.strip())
    if offset:
        return ("a UTC offset is not a timezone: write the IANA name of a place with that offset, e.g. "
                "Asia/Shanghai for UTC+8, Europe/Berlin for UTC+1, America/New_York for UTC-5; a place's "
                "name also follows its daylight saving")
    return None


def _fixed_zone(value: str) -> str | None:
    """A warning for a valid zone that keeps one offset all year, or whose offset reads
    backwards (Etc/GMT+8 is UTC-8); else None."""
    if value in _FIXED:
        return (f"timezone '{value}' is a fixed offset all year, with no daylight saving: from March to November "
                f"its times are an hour off the local clock; write {_FIXED[value]}")
    etc = re.fullmatch(r"Etc/GMT([+-])(\d{1,2})", value)
    if etc:
        real = "-" if etc.group(1) == "+" else "+"
        return (f"timezone '{value}' is UTC{real}{etc.group(2)} (the Etc names read the sign backwards); "
                "write the IANA name of a place, e.g. Asia/Shanghai for UTC+8")
    return None


def _check_timezone(ctx: CheckContext, loc: Loc, allow_member: bool) -> list[Problem]:
    container: Any = ctx.data
    for part in loc[:-1]:
        container = container[part]
    value = container.get(loc[-1]) if isinstance(container, dict) else None
    if not isinstance(value, str) or value == "member" and allow_member:
        return []
    if value == "member":
        return [ctx.at(loc, "timezone: member applies to triggers with for_each: audience only")]
    if valid_timezone(value):
        fixed = _fixed_zone(value)
        return [ctx.at(loc, fixed, WARNING)] if fixed else []
    named = _abbreviation(value)
    if named:
        return [ctx.at(loc, f"unknown timezone '{value}': {named}")]
    zones = _zones()
    if not zones:  # no zone is known at all: the machine lacks the database, not the name
        return [
            ctx.at(loc, f"timezone '{value}' cannot be read: this machine has no time-zone database "
                        "(install the tzdata package: pip install tzdata)")
        ]
    same = [z for z in zones if z.lower() == value.strip().lower()]  # asia/shanghai: the case, or spaces
    hint = f" (did you mean '{same[0]}'?)" if same else did_you_mean(value, zones)
    return [ctx.at(loc, f"unknown timezone '{value}'{hint}; use an IANA name such as Asia/Shanghai")]


_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-6 or SUN-SAT"),
    ("second", "0-59"),
)


def _quartz_hint(fields: list[str]) -> str:
    """For 6 fields read the Quartz and Spring way (seconds first), the 5-field cron of
    the same times when its seconds are one number: "; for that write '0 20 * * *'"."""
    if len(fields) != 6 or not fields[0].isdigit() or int(fields[0]) > 59:
        return ""
    if "?" not in fields and fields[5] != "*":  # not Quartz's for sure, nor every second
        return ""
    rest = ["*" if f == "?" else f for f in fields[1:]]
    hint = " ".join(rest)
    try:
        croniter(hint)
    except (ValueError, KeyError, TypeError):
        return ""
    return f"; Quartz and Spring put seconds first: for their '{' '.join(fields)}' write '{hint}'"


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a cron schedule of 5 fields (or 6, seconds last), or None."""
    fields = text.split()
    if len(fields) not in (5, 6):
        return (
            f"cron '{text}' has {len(fields)} field{'s' if len(fields) != 1 else ''}; write 5 "
            "(minute hour day-of-month month day-of-week), or 6 with seconds last"
        )
    quartz = _quartz_hint(fields)
    if "?" in fields:
        return f"cron '{text}': '?' is Quartz syntax, which cmtyflow does not read{quartz}"
    try:
        expanded = croniter.expand(text)[0]
        if len(fields) == 6 and (expanded[5] == ["*"] or len(expanded[5]) > 1):
            times = 60 if expanded[5] == ["*"] else len(expanded[5])
            return (
                f"cron '{text}' fires {times} times a minute: a 6th field is seconds, last "
                f"(cmtyflow starts with the minute, as crontab does){quartz or '; give one second, or write 5 fields'}"
            )
        try:  # every field valid, yet no date may match (30 February): it would never fire
            croniter(text, datetime(2024, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            return f"cron '{text}' never fires: no month {fields[3]!r} has a day {fields[2]!r}"
        return None
    except (ValueError, KeyError, TypeError) as exc:
        for index, part in enumerate(fields):
            probe = ["*"] * len(fields)
            probe[index] = part
            try:
                croniter(" ".join(probe))
            except (ValueError, KeyError, TypeError):
                name, allowed = _CRON_FIELDS[index]
                return f"cron '{text}': '{part}' is not a valid {name} ({allowed})"
        return f"cron '{text}' is not valid: {exc}"


def _check_triggers(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    flows = ctx.mapping("flows")
    ids: dict[str, Loc] = {}
    for loc, kind, trigger in iter_triggers(ctx.data):
        tid = trigger.get("id")
        if isinstance(tid, str):
            if tid in ids:
                first = ctx.smap.mark((*ids[tid], "id")).line
                found.append(
                    ctx.at((*loc, "id"), f"duplicate trigger id '{tid}' (first at line {first})")
                )
            else:
                ids[tid] = loc
        flow = trigger.get("flow")
        if isinstance(flow, str) and flow not in flows:
            hint = did_you_mean(flow, list(flows)) or (f"; flows are {listing(flows)}" if flows else "; the playbook has no flows")
            found.append(
                ctx.at((*loc, "flow"), f"trigger starts flow '{flow}', which does not exist{hint}")
            )
        if kind == "cron" and isinstance(trigger["cron"], str):
            why = cron_problem(trigger["cron"])
            if why:
                found.append(ctx.at((*loc, "cron"), why))
        if kind == "at" and not isinstance(trigger["at"], (str, date)):  # a datetime is a date
            shown = json.dumps(trigger["at"], ensure_ascii=False, default=str)
            found.append(ctx.at((*loc, "at"), f"'at' should be an ISO 8601 date and time such as 2026-12-24T20:00, not {shown}"))
        elif kind == "at" and isinstance(trigger["at"], str):
            try:
                moment = datetime.fromisoformat(trigger["at"].strip())
            except ValueError:
                found.append(
                    ctx.at(
                        (*loc, "at"),
                        f"'at' should be an ISO 8601 date and time such as 2026-12-24T20:00, not '{trigger['at']}'",
                    )
                )
            else:
                found += _at_outside_window(ctx, loc, trigger, moment)
        if "timezone" in trigger:
            for_each = trigger.get("for_each") == "audience"
            if trigger.get("timezone") == "member" and not for_each:
                found.append(
                    ctx.at((*loc, "timezone"), "timezone: member needs for_each: audience")
                )
            else:
                found += _check_timezone(ctx, (*loc, "timezone"), allow_member=for_each)
    return found


def _window_days(raw: Any) -> tuple[date, date | None] | None:
    """The window's first and last local dates, when it is written well (else None:
    its own checks say why)."""
    if not isinstance(raw, dict):
        return None
    try:
        start = raw["start"] if isinstance(raw.get("start"), date) else date.fromisoformat(str(raw["start"]))
        if raw.get("end") is not None:
            end = raw["end"] if isinstance(raw["end"], date) else date.fromisoformat(str(raw["end"]))
            return start, end
        if isinstance(raw.get("days"), int) and not isinstance(raw["days"], bool) and raw["days"] >= 1:
            return start, start + timedelta(days=raw["days"] - 1)
        return start, None
    except (KeyError, ValueError, TypeError, OverflowError):
        return None


def _at_outside_window(ctx: CheckContext, loc: Loc, trigger: dict[str, Any], moment: datetime) -> list[Problem]:
    """An ``at`` on a day outside the window never fires (SPEC 1: triggers fire only
    inside it); said as a warning."""
    window = _window_days(ctx.data.get("window"))
    if window is None:
        return []
    day = moment.date()
    if moment.tzinfo is not None:
        name = trigger.get("timezone") if isinstance(trigger.get("timezone"), str) else ctx.data.get("timezone")
        try:
            day = moment.astimezone(ZoneInfo(str(name))).date()
        except (ZoneInfoNotFoundError, ValueError):
            return []
    first, last = window
    if day >= first and (last is None or day <= last):
        return []
    span = f"{first} .. {last}" if last is not None else f"from {first}"
    return [ctx.at((*loc, "at"), f"this 'at' falls on {day}, outside the window ({span}): it never fires", WARNING)]


# SPEC 3's standard types, and checkin.posted (the check-in events of the shipped
# playbooks and of dry-run --simulate): a near miss of one is a typo.
_KNOWN_EVENTS = sorted(STANDARD_EVENTS | {"checkin.posted"})


def _event_types(ctx: CheckContext) -> Iterator[tuple[Loc, str]]:
    """Each event type the playbook names: triggers, waits, emits, goals."""
    for loc, _kind, trigger in iter_triggers(ctx.data):
        if isinstance(trigger.get("event"), str):
            yield (*loc, "event"), trigger["event"]
    for step in iter_steps(ctx.data):
        kind = step.kind
        body = step.body.get(kind) if kind == "wait" or kind == "emit" else None
        if kind is not None and isinstance(body, dict) and isinstance(body.get("event"), str):
            yield (*step.loc, kind, "event"), body["event"]
    for name, goal in ctx.mapping("goals").items():
        if isinstance(goal, dict) and isinstance(goal.get("event"), str):
            yield ("goals", name, "event"), goal["event"]


def _check_event_types(ctx: CheckContext) -> list[Problem]:
    """A type with a space or an empty part never matches what a platform sends (a
    trailing space made a trigger that never fired); a near miss of a standard type
    is most likely a typo."""
    found: list[Problem] = []
    for loc, name in _event_types(ctx):
        if "*" in name:
            found.append(ctx.at(loc, f"event type '{name}': types are matched exactly, '*' is not a wildcard; name one type per trigger"))
        elif name.startswith(RESERVED_PREFIX):
            found.append(ctx.at(loc, f"event type '{name}': types starting with '{RESERVED_PREFIX}' are cmtyflow's own "
                                     "(a launch travels as one); name a type of your own, such as club.restart"))
        elif (why := event_type_fault(name)) is not None:
            found.append(ctx.at(loc, f"event type {name!r} has {why}; write a dotted name such as message.posted"))
        elif name not in _KNOWN_EVENTS:
            # Close enough to be a typo (member.joind), not a custom type of the same
            # family (report.acknowledged, member.banned), which is common and fine.
            near = difflib.get_close_matches(name, _KNOWN_EVENTS, n=1, cutoff=0.85)
            if near:
                found.append(ctx.at(loc, f"event type '{name}' is not a standard one (did you mean '{near[0]}'?)", WARNING))
    return found


def _check_flows_used(ctx: CheckContext) -> list[Problem]:
    started = {t.get("flow") for _loc, _kind, t in iter_triggers(ctx.data) if isinstance(t.get("flow"), str)}
    return [
        ctx.at(
            ("flows", name),
            f"flow '{name}' is never started: no trigger names it",
            WARNING,
            key=True,
        )
        for name in ctx.mapping("flows")
        if name not in started
    ]


def _check_step_ids(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    seen: dict[str, Loc] = {}
    for step in iter_steps(ctx.data):
        sid = step.body.get("id")
        if not isinstance(sid, str):
            continue
        if sid in seen:
            first = ctx.smap.mark((*seen[sid], "id")).line
            found.append(
                ctx.at(
                    (*step.loc, "id"),
                    f"duplicate step id '{sid}'; step ids are unique in a playbook (first at line {first})",
                )
            )
        else:
            seen[sid] = step.loc
    return found


def _group_only(channels: dict[str, Any]) -> dict[str, str]:
    """Channel -> adapter, for the channels with one destination (a group robot, a
    webhook without a bot token: ``adapters.destinations``)."""
    out = {}
    for name, channel in channels.items():
        adapter = channel.get("adapter") if isinstance(channel, dict) else None
        if isinstance(adapter, str) and single_destination(adapter, channel):
            out[str(name)] = adapter
    return out


def _check_sends(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    channels = ctx.mapping("channels")
    roles = ctx.mapping("roles")
    robots = _group_only(channels)
    runs = scopechecks.flow_runs(ctx) if robots else {}
    for loc, send in sends(ctx.data):
        channel = send.get("channel")
        used = channel if isinstance(channel, str) else next(iter(channels), None) if len(channels) == 1 else None
        if used in robots:
            found += _posted_in_group(ctx, loc, send, str(used), robots[str(used)], runs.get(str(loc[1])))
        if channel is None:
            if len(channels) == 0:
                found.append(
                    ctx.at(
                        loc,
                        "send has no channel and the playbook defines none; add channels:",
                        key=True,
                    )
                )
            elif len(channels) > 1:
                found.append(
                    ctx.at(
                        loc,
                        f"send has no channel; name one of {listing(channels)} "
                        "(a send may leave it out only when there is exactly one channel)",
                        key=True,
                    )
                )
        elif isinstance(channel, str) and channel not in channels:
            hint = did_you_mean(channel, list(channels))
            found.append(
                ctx.at(
                    (*loc, "channel"),
                    f"unknown channel '{channel}'{hint}; " + (f"channels are {listing(channels)}" if channels else "the playbook has no channels"),
                )
            )
        to = send.get("to")
        if isinstance(to, str) and to not in ("member", "channel"):
            if to.startswith("roles."):
                role = to[len("roles.") :]
                if role not in roles:
                    hint = did_you_mean(role, list(roles))
                    found.append(
                        ctx.at(
                            (*loc, "to"), f"unknown role '{role}'{hint}; " + (f"roles are {listing(roles)}" if roles else "the playbook has no roles")
                        )
                    )
            else:
                found.append(
                    ctx.at(
                        (*loc, "to"),
                        f"'to' should be member, channel, a role such as roles.moderators, or a list of member ids, not '{to}'",
                    )
                )
    return found


def _posted_in_group(
    ctx: CheckContext, loc: Loc, send: dict[str, Any], channel: str, adapter: str, runs: tuple[str, str] | None
) -> list[Problem]:
    """A send to a member or members through a channel with one destination: posted in
    its group (a warning, as it may be meant: "@小明 打卡了吗" in the group)."""
    to = send.get("to")
    if to is None:
        if runs is not None and runs[0] == scopechecks.CAMPAIGN_RUNS:
            return []  # a campaign run's default: the channel itself
        who = "the member"
    elif to == "member":
        who = "the member"
    elif isinstance(to, list):
        who = "these members"
    else:
        # A role (roles.moderators): a robot of the moderators' own group is the usual
        # way to page them, which the warning, printed on every run, could not be told.
        # It is posted once (the engine does not post it once per moderator).
        return []
    said = (f"this send to {who} is posted there, for everyone to read; send it through a channel that "
            "reaches people one by one (telegram, email, slack or discord with a bot token)")
    return [ctx.at(
        (*loc, "to") if to is not None else loc,
        f"channel '{channel}' is {describe_destination(adapter)}: {said}",
        WARNING,
        key=to is None,
    )]


def _strings(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*loc, index))


def _check_credential_urls(ctx: CheckContext) -> list[Problem]:
    """SPEC 1: URLs with credentials in vars (channel settings are checked with their
    adapter)."""
    found = []
    for loc, text in _strings(ctx.data.get("vars"), ("vars",)):
        what = credential_in_url(text)
        if what:
            found.append(
                ctx.at(
                    loc,
                    f"this URL has {what} in it; put secrets in the environment and write ${{env:NAME}}",
                    WARNING,
                )
            )
    return found


def check_names(loaded: list[Any]) -> list[Problem]:
    """SPEC 1: a playbook's name is unique among the playbooks loaded together."""
    found: list[Problem] = []
    first: dict[str, Any] = {}
    for item in loaded:
        name = item.playbook.name
        if name in first:
            mark = item.source_map.mark(("name",))
            found.append(
                problem(mark, f"playbook name '{name}' is also used by {first[name].path}")
            )
        else:
            first[name] = item
    return found
