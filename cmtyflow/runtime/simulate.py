"""Rehearsal with synthetic behaviour: ``--simulate checkin=0.7,post=0.2`` (issue 3).

Rules:
- Each name is an event type with a daily probability per member; shorthands:
  ``checkin`` -> ``checkin.posted``, ``post`` -> ``message.posted``, ``react`` ->
  ``reaction.added``, ``poll`` -> ``poll.answered``, ``report`` -> ``report.filed``.
  Any dotted name is taken as it is.
- Draws come from one seeded generator walking members in roster order, day by day,
  so the same seed, roster and span give the same events.
- Each day of the span (the playbook's) stands for one local day of each member: the
  member's date at its midpoint. An event falls at a uniformly drawn moment of that
  date's waking hours (07:00-23:00 where the member is) that lies within the span's
  day. So each member-local day gets at most one event of a kind: a member eight
  hours behind the playbook got two check-ins on one of their days, and the
  duplicate reply, from a playbook that was right.
- Members who opted out or left still behave; the engine decides what reaches them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..engine.model import Event

SHORTHANDS = {
    "checkin": "checkin.posted",
    "post": "message.posted",
    "react": "reaction.added",
    "poll": "poll.answered",
    "report": "report.filed",
}


class SimulationSpecError(ValueError):
    pass


def parse_spec(text: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise SimulationSpecError(f"'{part}' should be NAME=PROBABILITY, e.g. checkin=0.7")
        try:
            p = float(value)
        except ValueError:
            raise SimulationSpecError(f"'{value}' is not a probability") from None
        if not 0 <= p <= 1:
            raise SimulationSpecError(f"probability {p} is not between 0 and 1")
        name = name.strip()
        etype = SHORTHANDS.get(name, name)
        if "." not in etype:
            raise SimulationSpecError(
                f"unknown behaviour '{name}'; use one of {', '.join(SHORTHANDS)} or a dotted event type"
            )
        if any(seen == etype for seen, _ in out):
            raise SimulationSpecError(f"'{etype}' is given twice; give each behaviour once")
        out.append((etype, p))
    if not out:
        raise SimulationSpecError("no behaviour given, e.g. checkin=0.7,post=0.2")
    return out


class Simulation:
    def __init__(self, behaviours: list[tuple[str, float]], *, seed: int = 0, default_tz: str = "UTC") -> None:
        self.behaviours = behaviours
        self.rng = random.Random(seed)
        self.default_tz = ZoneInfo(default_tz)
        self._zones: dict[str, ZoneInfo] = {}
        self._day = 0

    def _zone(self, name: str | None) -> ZoneInfo:
        if not name:
            return self.default_tz
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    def _waking(self, zone_name: str | None, start: datetime, end: datetime) -> tuple[datetime, int]:
        """The waking hours of the member-local day that [start, end) stands for, within
        it: their first moment and length in seconds (0: none)."""
        tz = self._zone(zone_name)
        day = (start + (end - start) / 2).astimezone(tz).date()
        lo = max(start, datetime.combine(day, time(7), tzinfo=tz))
        hi = min(end, datetime.combine(day, time(23), tzinfo=tz))
        return lo, max(0, int((hi - lo).total_seconds()))

    def events_for(self, start: datetime, end: datetime, store: Any) -> Iterator[Event]:
        if end <= start:
            return
        self._day += 1
        rng = self.rng
        random_ = rng.random
        hours: dict[str | None, tuple[datetime, int]] = {}  # a member's timezone -> its waking hours in the span
        for member in store.iter_members():
            mid = member["id"]
            zone_name = member.get("timezone")
            waking = hours.get(zone_name)
            if waking is None:
                waking = hours[zone_name] = self._waking(zone_name, start, end)
            lo, length = waking
            for etype, p in self.behaviours:
                if random_() >= p:
                    continue
                offset = int(random_() * length)
                if not length:
                    continue  # a partial last day that holds none of their waking hours
                at = lo + timedelta(seconds=offset)
                data: dict[str, Any] = {}
                if etype == "message.posted":
                    data = {"text": "hello", "channel": "group"}
                yield Event(id=f"sim-{self._day}-{etype}-{mid}", type=etype, at=at, member=mid, data=data)
