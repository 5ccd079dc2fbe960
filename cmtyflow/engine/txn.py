"""A read-through overlay over the store for one input: reads see the writes made so
far while handling it; the writes themselves are the ``Decision``."""

from __future__ import annotations

import copy
from typing import Any

from .model import Decision, Run
from .ports import StateReader

_UNREAD: Any = object()


class Txn:
    __slots__ = ("store", "decision", "_members_read", "_runs_by_key", "_runs_indexed", "_copy_runs")

    def __init__(self, store: StateReader, decision: Decision) -> None:
        self.store = store
        self.decision = decision
        # A run read from the store is changed in place while the input is handled, so
        # it is copied first, unless the store says each read decodes a run of its own
        # (``fresh_runs``: the SQL stores; the dry run's keeps the objects it holds).
        # The copy was a quarter of the CPU of a timer's input on SQLite.
        self._copy_runs = not getattr(store, "fresh_runs", False)
        self._members_read: dict[str, dict[str, Any] | None] = {}
        # The decision's runs by (playbook, flow, member), for ``active_runs``: a firing
        # for a whole audience asks once per member while adding a run per member.
        self._runs_by_key: dict[tuple[str, str, str | None], list[str]] = {}
        self._runs_indexed = 0

    # members ---------------------------------------------------------------------------
    def member(self, member_id: str) -> dict[str, Any] | None:
        changed = self.decision.members
        if changed and member_id in changed:
            return changed[member_id]
        found: dict[str, Any] | None = self._members_read.get(member_id, _UNREAD)
        if found is _UNREAD:
            found = self._members_read[member_id] = self.store.get_member(member_id)
        return found

    def member_for_write(self, member_id: str) -> dict[str, Any]:
        current = self.decision.members.get(member_id)
        if current is None:
            base = self.member(member_id)
            current = copy.deepcopy(base) if base is not None else {"id": member_id}
            self.decision.members[member_id] = current
        return current

    # state -------------------------------------------------------------------------------
    def state(self, playbook: str, member: str | None) -> dict[str, Any]:
        """The mutable state of (playbook, member) for this input."""
        key = (playbook, member)
        found = self.decision.states.get(key)
        if found is None:
            found = dict(self.store.get_state(playbook, member))
            if "badges" in found:
                found["badges"] = list(found["badges"])
            self.decision.states[key] = found
        return found

    def state_read(self, playbook: str, member: str | None) -> dict[str, Any]:
        found = self.decision.states.get((playbook, member))
        return found if found is not None else self.store.get_state(playbook, member)

    # runs --------------------------------------------------------------------------------
    def run(self, run_id: str) -> Run | None:
        if run_id in self.decision.runs:
            return self.decision.runs[run_id]
        found = self.store.get_run(run_id)
        if found is not None:
            if self._copy_runs:
                found = copy.deepcopy(found)
            self.decision.runs[run_id] = found
        return found

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]:
        ids = self.store.active_runs(playbook, flow, member)
        runs = self.decision.runs
        if not ids and not runs:
            return []
        out = []
        for rid in ids:
            changed = runs.get(rid)
            if changed is None or changed.status == "active":
                out.append(rid)
        self._index_runs()
        for rid in self._runs_by_key.get((playbook, flow, member), ()):
            run = runs[rid]
            if run.status == "active" and run.waiting is not None and rid not in out:
                out.append(rid)
        return out

    def _index_runs(self) -> None:
        """Index the runs added to the decision since the last call. Runs are only ever
        added to ``decision.runs`` (never removed), and a run's key never changes, so
        the newest entries, read from the end, are the ones not indexed yet."""
        runs = self.decision.runs
        new = len(runs) - self._runs_indexed
        if new <= 0:
            return
        newest = reversed(runs)
        fresh = [next(newest) for _ in range(new)]
        for rid in reversed(fresh):  # in the order they were added
            run = runs[rid]
            self._runs_by_key.setdefault((run.playbook, run.flow, run.member), []).append(rid)
        self._runs_indexed = len(runs)

    # daily cap ---------------------------------------------------------------------------
    def day_count(self, member: str, day: str) -> int:
        return self.store.day_count(member, day) + self.decision.day_counts.get((member, day), 0)

    def add_day_count(self, member: str, day: str) -> None:
        key = (member, day)
        self.decision.day_counts[key] = self.decision.day_counts.get(key, 0) + 1
