"""From paths on disk to compiled programs: load, refuse on errors, compile with the
formats each channel's adapter takes and which channels have one destination. Shared by
dry-run, run, preview and test."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..adapters import registry
from ..adapters.destinations import single_destination
from ..engine.program import Program, compile_program
from ..errors import UserError
from ..loader import LoadResult, load
from ..problems import format_text
from ..spec.duration import FIRST_YEAR, LAST_YEAR, localize


def adapter_formats(result: LoadResult) -> dict[str, tuple[str, ...]]:
    formats: dict[str, tuple[str, ...]] = {}
    for loaded in result.playbooks:
        for channel in loaded.playbook.channels.values():
            if channel.adapter not in formats:
                try:
                    formats[channel.adapter] = tuple(registry.get(channel.adapter).capabilities.formats)
                except (LookupError, ImportError):
                    formats[channel.adapter] = ("plain",)
    return formats


def load_programs(paths: Sequence[str | Path], *, warn: bool = True) -> tuple[LoadResult, list[Program]]:
    """Load and compile; a playbook with errors is refused with its problems. Its
    warnings are printed on stderr as ``validate`` prints them (``warn``: a command that
    reads a playbook only for its name or timezone, or logs them as it logs, says
    nothing), and it goes on."""
    result = load(paths)
    if not result.ok:
        raise UserError("the playbooks have errors, so nothing was done:\n" + format_text(result.problems))
    if result.problems and warn:
        print(format_text(result.problems), file=sys.stderr, flush=True)
    if not result.playbooks:
        raise UserError(f"no playbooks found in {', '.join(str(p) for p in paths)}")
    formats = adapter_formats(result)
    return result, [compile_program(loaded, formats, single_destinations(loaded)) for loaded in result.playbooks]


def single_destinations(loaded: Any) -> list[str]:
    """The playbook's channels with one destination (``adapters.destinations``)."""
    return [name for name, channel in loaded.playbook.channels.items()
            if single_destination(channel.adapter, channel.settings())]


def parse_now(text: str, *, option: str = "--now") -> datetime:
    """``--now TIME`` (``run --once``, ``report``): ISO 8601 with a UTC offset, within
    the years every timezone can convert."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option} '{text}' is not an ISO 8601 datetime") from None
    if moment.tzinfo is None:
        example = text if "T" in text else f"{text}T00:00"
        raise UserError(f"{option} '{text}' needs a UTC offset, e.g. {example}+08:00")
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise UserError(f"{option} '{text}' is out of range: give a time between {FIRST_YEAR} and {LAST_YEAR}")
    return moment


def parse_start(text: str | None, programs: list[Program], now: datetime, *, option: str = "--start") -> datetime:
    """``--start`` (or ``option``, as the user wrote it): ISO 8601 (a date means its
    midnight), without an offset in the first playbook's timezone. Default: the
    earliest window start, else today's midnight."""
    tz: ZoneInfo = programs[0].tz
    if text:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"{option} '{text}' is not an ISO 8601 date or datetime") from None
        if not FIRST_YEAR <= value.year <= LAST_YEAR:
            raise UserError(f"{option} '{text}' is out of range: give a time between {FIRST_YEAR} and {LAST_YEAR}")
        return value if value.tzinfo is not None else localize(value, tz)
    starts = [
        localize(datetime.combine(p.window[0], datetime.min.time()), p.tz) for p in programs if p.window
    ]
    if starts:
        return min(starts)
    local = now.astimezone(tz)
    return localize(datetime.combine(local.date(), datetime.min.time()), tz)


def default_days(programs: list[Program], start: datetime) -> int:
    """The window's days, from ``start`` to its last; one day more when a schedule fires
    at each member's own time (``timezone: member``): the window's last day in a zone
    behind the playbook's ends after it in the playbook's (a New Yorker's 21:00 on the
    last day is the next morning in Shanghai), and was neither listed nor pending."""
    ends = [p.window[1] for p in programs if p.window and p.window[1] is not None]
    if ends:
        last = max(ends)
        local = any(getattr(t, "timezone", None) == "member" for p in programs for t in p.playbook.triggers)
        return max(1, (last - start.astimezone(programs[0].tz).date()).days + 1 + int(local))
    return 7
