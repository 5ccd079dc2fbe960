"""Durations and times of day (SPEC 2).

Rules:
- A duration is a sum of parts such as ``45s``, ``15m``, ``2h``, ``3d``, ``1w``
  (``1d12h``). Days and weeks are *calendar* days in the run's timezone: the same
  wall-clock time, across daylight-saving changes. Hours, minutes and seconds are
  elapsed time.
- Adding a duration: first the calendar part on local wall-clock time, then the
  elapsed part on absolute time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"(?:\d+[wdhms])+")
MAX_DAYS = 3660  # the longest duration, as dry-run --days: past it a time leaves the calendar's range
# The years a start, a window or a given time may lie in: a day count or a duration on
# top of them stays in the calendar's range (datetime ends with 9999).
FIRST_YEAR, LAST_YEAR = 1971, 9000
_UNITS = {"w": (7, 0), "d": (1, 0), "h": (0, 3600), "m": (0, 60), "s": (0, 1)}
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")

DURATION_PATTERN = r"^(\d+[wdhms])+$"
TIME_OF_DAY_PATTERN = r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"


@dataclass(frozen=True, slots=True)
class Duration:
    days: int
    seconds: int

    def add_to(self, moment: datetime, tz: ZoneInfo) -> datetime:
        """``moment + self`` with calendar days on ``tz`` wall-clock time (SPEC 2)."""
        result = moment
        if self.days:
            local = moment.astimezone(tz).replace(tzinfo=None) + timedelta(days=self.days)
            result = localize(local, tz)
        if self.seconds:
            result = (result.astimezone(UTC) + timedelta(seconds=self.seconds)).astimezone(tz)
        return result

    def approx_seconds(self) -> int:
        return self.days * 86400 + self.seconds

    def __str__(self) -> str:
        out = []
        days, secs = self.days, self.seconds
        if days:
            out.append(f"{days}d")
        for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
            if secs >= size:
                out.append(f"{secs // size}{unit}")
                secs %= size
        return "".join(out) or "0s"


class DurationError(ValueError):
    pass


@lru_cache(maxsize=4096)
def parse_duration(text: str) -> Duration:
    text = text.strip() if isinstance(text, str) else str(text)
    if not _WHOLE.fullmatch(text):
        raise DurationError(
            f"'{text}' is not a duration; write a number and a unit "
            "(s, m, h, d, w), e.g. 45s, 15m, 2h, 3d, 1w or 1d12h"
        )
    days = seconds = 0
    for number, unit in _PART.findall(text):
        d, s = _UNITS[unit]
        days += int(number) * d
        seconds += int(number) * s
    if days * 86400 + seconds > MAX_DAYS * 86400:
        raise DurationError(f"'{text}' is longer than {MAX_DAYS} days (about ten years), the longest a duration may be")
    return Duration(days, seconds)


@lru_cache(maxsize=1024)
def parse_time_of_day(text: str) -> time:
    m = _TIME.fullmatch(str(text).strip())
    if not m:
        raise DurationError(f"'{text}' is not a time of day; write HH:MM such as 20:00")
    return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def localize(naive: datetime, tz: ZoneInfo) -> datetime:
    """Attach ``tz`` to a wall-clock time. A time skipped by a DST jump moves forward
    by the size of the gap (02:30 on a spring-forward night becomes 03:30); an
    ambiguous time takes its first occurrence."""
    aware = naive.replace(tzinfo=tz, fold=0)
    # Round-trip through UTC: a non-existent wall time comes back different.
    back = aware.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        # PEP 495: fold=0 reads a skipped time with the offset before the jump, which
        # lands the same distance past the gap.
        return back
    return aware


def at_local(day: date, tod: time, tz: ZoneInfo) -> datetime:
    return localize(datetime.combine(day, tod), tz)


def next_time_of_day(now: datetime, tod: time, tz: ZoneInfo) -> datetime:
    """The first moment strictly after ``now`` whose local time is ``tod``."""
    local = now.astimezone(tz)
    candidate = at_local(local.date(), tod, tz)
    if candidate <= now:
        candidate = at_local(local.date() + timedelta(days=1), tod, tz)
    return candidate
