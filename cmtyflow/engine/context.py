"""Names in scope for expressions and templates (SPEC 2), built per run.

Rules:
- ``state`` reads built-in keys as 0, empty or none until set; ``state.streak`` reads
  0 once a whole local day has passed without a check-in; ``last_checkin`` reads as
  a date. Other keys through ``state.get('key', default)`` or ``state.key`` once set.
- ``member`` is the roster record; fields a member lacks read as none for the fields
  SPEC 2 names (``name``, ``locale``, ``timezone``, handles...), and ``tags`` as [].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from ..expr import item_first

BUILTIN_STATE: dict[str, Any] = {
    "points": 0,
    "badges": (),
    "checkins": 0,
    "streak": 0,
    "best_streak": 0,
    "last_checkin": None,
}
_ABSENT = object()
_DERIVED = frozenset({"last_checkin", "badges"})  # read from data with a twist, as streak
MEMBER_FIELDS = ("id", "name", "locale", "timezone", "tags", "joined_at", "opted_out", "email", "telegram")


def checkin_date(raw: Any) -> date | None:
    """A stored ``last_checkin`` as ``state.last_checkin`` reads it: a date or None."""
    if raw is None or isinstance(raw, date):
        return raw
    return date.fromisoformat(raw)


@item_first
class StateView(Mapping[str, Any]):
    """Read-only view of one state mapping as SPEC 2 defines its reading."""

    __slots__ = ("_data", "_today", "_raw", "_day", "_lapsed")

    def __init__(self, data: Mapping[str, Any], today: date | None) -> None:
        self._data = data
        self._today = today
        # The last ``last_checkin`` value read, its date, and whether a whole day has
        # passed since (the streak then reads 0).
        self._raw: Any = None
        self._day: date | None = None
        self._lapsed = False

    def __getitem__(self, key: str) -> Any:
        data = self._data
        if key == "streak":  # one of the readings SPEC 2 defines, and the one read most
            raw = data.get("last_checkin")
            if raw is None:
                return 0
            if raw is not self._raw:  # read many times per run, written at most once
                day = raw if isinstance(raw, date) else date.fromisoformat(raw)
                today = self._today
                self._raw, self._day = raw, day
                self._lapsed = today is None or (today - day).days > 1
            return 0 if self._lapsed else data.get("streak", 0)
        if key in _DERIVED:
            if key == "last_checkin":
                return self._last()
            value = data.get("badges", _ABSENT)  # badges, as a copy
            return [] if value is _ABSENT else list(value)
        value = data.get(key, _ABSENT)
        if value is not _ABSENT:
            return value
        if key in BUILTIN_STATE:
            return BUILTIN_STATE[key]  # none of the others is a container
        raise KeyError(key)

    def _last(self) -> date | None:
        raw = self._data.get("last_checkin")
        if raw is None or isinstance(raw, date):
            return raw
        if raw is not self._raw:  # read many times per run, written at most once
            today = self._today
            self._raw, self._day = raw, date.fromisoformat(raw)
            self._lapsed = today is None or (today - self._day).days > 1
        return self._day

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(BUILTIN_STATE), **dict.fromkeys(self._data)})

    def __len__(self) -> int:
        return len(set(BUILTIN_STATE) | set(self._data))

    def __repr__(self) -> str:
        return f"StateView({dict(self)!r})"

    def undefined_hint(self, name: str) -> str:
        """What ``state.NAME`` missing means (``expr``'s message for it)."""
        return f"state has no {name!r} yet; state.get({name!r}, 0) reads a key that may not be set"


@item_first
class MemberView(Mapping[str, Any]):
    """A roster record as templates see it; in campaign runs also ``.state``."""

    __slots__ = ("_data", "_state")

    def __init__(self, data: Mapping[str, Any], state: StateView | None = None) -> None:
        self._data = data
        self._state = state

    def __getitem__(self, key: str) -> Any:
        if key == "state" and self._state is not None:
            return self._state
        value = self._data.get(key, _ABSENT)
        if value is not _ABSENT:
            return value
        if key == "tags":
            return []
        if key == "opted_out":
            return False
        if key in MEMBER_FIELDS:
            return None
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemberView({self._data.get('id')!r})"

    def undefined_hint(self, name: str) -> str:
        """What ``member.NAME`` missing means (``expr``'s message for it)."""
        return (
            f"member {self._data.get('id')} has no {name!r}: no such roster column, or an empty cell for this "
            f"member; member.get({name!r}, '') reads an optional column"
        )


def record_of(view: MemberView) -> Mapping[str, Any]:
    """The roster record behind ``view``."""
    return view._data


def local_today(now: datetime) -> date:
    return now.date()


def yesterday(day: date) -> date:
    return day - timedelta(days=1)
