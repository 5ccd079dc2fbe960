"""Schedule firings (SPEC 3): cron and ``at`` triggers, computed once per timezone.

Rules:
- A cron expression is read on the wall clock of its timezone: ``0 20 * * *`` fires
  at 20:00 local every day, across daylight-saving changes. A wall time skipped by a
  DST jump fires at the first moment after the gap; a repeated one fires once.
- ``timezone: member`` fires once per member timezone in use (members without one
  use the playbook's), and the firing reaches the members of that zone; the next
  firing is computed per zone, never per member (croniter costs 40-84 us a call).
- Triggers fire only inside the playbook's window, local dates inclusive.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from ..spec.duration import localize


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def next_cron(expr: str, after: datetime, tz_name: str) -> datetime:
    """The first firing of ``expr`` strictly after ``after``, in ``tz_name``."""
    tz = _zone(tz_name)
    local = after.astimezone(tz).replace(tzinfo=None)
    it = croniter(expr, local)
    for _ in range(4):
        candidate = localize(it.get_next(datetime), tz)
        if candidate > after:
            return candidate
    return candidate


def in_window(moment: datetime, window: tuple[date, date | None] | None, tz: ZoneInfo) -> bool:
    if window is None:
        return True
    return in_window_day(moment.astimezone(tz).date(), window)


def in_window_day(day: date, window: tuple[date, date | None] | None) -> bool:
    """Whether the local date ``day`` lies in ``window``."""
    if window is None:
        return True
    first, last = window
    return day >= first and (last is None or day <= last)


def after_window(moment: datetime, window: tuple[date, date | None] | None, tz: ZoneInfo) -> bool:
    if window is None or window[1] is None:
        return False
    return moment.astimezone(tz).date() > window[1]
