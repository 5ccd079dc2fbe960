"""What the engine reads. A store implements this; the engine never writes through it:
its writes are the ``Decision`` it returns (STYLE: core with no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Protocol

from .model import EventWait, Run


class StateReader(Protocol):
    def get_member(self, member_id: str) -> dict[str, Any] | None: ...

    def iter_members(self, timezone: str | None = None, default_timezone: str | None = None) -> Iterator[dict[str, Any]]:
        """Members in roster order; with ``timezone``, those whose own timezone is it
        (members without one count as ``default_timezone``)."""
        ...

    def members_from(
        self, after: int, timezone: str | None = None, default_timezone: str | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """As ``iter_members``, each with its place in the roster (a number that only
        grows, ``seq``), from the first after ``after``: where a chunk of a firing over
        the audience goes on from."""
        ...

    def get_state(self, playbook: str, member: str | None) -> dict[str, Any]: ...

    def get_run(self, run_id: str) -> Run | None: ...

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]: ...

    def event_waits(self, event_type: str, member: str | None) -> Iterable[EventWait]:
        """Waits for ``event_type`` that this event may satisfy: those bound to
        ``member`` and those with a ``where`` filter (any member)."""
        ...

    def day_count(self, member: str, day: str) -> int:
        """Non-urgent messages already planned for ``member`` on local date ``day``."""
        ...

    def exposures(self, playbook: str, member: str) -> Iterable[tuple[str, str, str | None, datetime]]:
        """(goal, step, variant, at) not yet converted, for goal tracking."""
        ...

    def queued_starts(self, playbook: str, flow: str, member: str | None) -> list[dict[str, Any]]:
        """Starts waiting behind an active run (mode: queued), oldest first."""
        ...
