"""Delivery-time policies: quiet hours and the per-member daily cap (SPEC 1, 5.6).

Rules:
- Quiet hours are read in the run's timezone; a send inside them moves to their end
  (never before the send: an end in the hour a fall-back change repeats is its second
  occurrence for a send in that second hour).
  ``start`` after ``end`` wraps midnight (22:00-08:00); ``start == end`` means none.
- The daily cap counts non-urgent messages planned for a member on the member's
  local date, across every loaded playbook. Over it, the message moves to the next
  local day, at the end of quiet hours when there are any (else 00:00), and counts
  against that day.
- Urgent sends ignore both. Only the deferred message moves; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from ..spec.duration import at_local

MAX_DEFER_DAYS = 366

# One text object per local date: the daily-cap counts of a large roster all share it.
_day_text = lru_cache(maxsize=4096)(date.isoformat)


def in_quiet(local: time, quiet: tuple[time, time]) -> bool:
    start, end = quiet
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def after_quiet(moment: datetime, quiet: tuple[time, time] | None, tz: ZoneInfo) -> datetime:
    """``moment``, or the end of the quiet period it falls in."""
    if quiet is None:
        return moment
    local = moment.astimezone(tz)
    if not in_quiet(local.time(), quiet):
        return moment
    start, end = quiet
    day = local.date()
    if start > end and local.time() >= start:
        day += timedelta(days=1)
    found = at_local(day, end, tz)
    if found <= moment:
        # The end falls in the hour a fall-back change repeats, and ``moment`` is in its
        # second pass: the quiet hours end at the end's second occurrence, not before it.
        found = datetime.combine(day, end, tzinfo=tz).replace(fold=1)
    return found


def delivery_plan(
    now: datetime,
    quiet: tuple[time, time] | None,
    run_tz: ZoneInfo,
    cap: int | None,
    member_tz: ZoneInfo | None,
    day_count: Callable[[str], int],
) -> tuple[datetime, str | None, str | None]:
    """(deliver_at, reason deferred or None, local date counted against the cap); the
    interpreter calls it per message, with positional arguments."""
    # As after_quiet(now, quiet, run_tz), reading the local time once: most sends are
    # outside quiet hours, and most members' zone is the run's.
    local = None
    at, reason = now, None
    if quiet is not None:
        local = now.astimezone(run_tz)
        start, end = quiet
        if start != end:  # in_quiet(local.time(), quiet), inline
            clock = local.time()
            if (start <= clock < end) if start < end else (clock >= start or clock < end):
                at, reason = after_quiet(now, quiet, run_tz), "quiet_hours"
    if cap is None or member_tz is None:
        return at, reason, None
    day = local.date() if local is not None and at is now and member_tz is run_tz else at.astimezone(member_tz).date()
    text = _day_text(day)
    if day_count(text) < cap:  # the first pass of the loop below, for the usual case
        return at, reason, text
    for attempt in range(MAX_DEFER_DAYS):
        if attempt:
            day = at.astimezone(member_tz).date()
            text = _day_text(day)
            if day_count(text) < cap:
                return at, reason, text
        reason = "daily_cap"
        start_of_next = at_local(day + timedelta(days=1), quiet[1] if quiet else time(0), member_tz)
        at = after_quiet(start_of_next, quiet, run_tz)
    return at, reason, _day_text(at.astimezone(member_tz).date())
