"""The memory store's queue of events: in (time, arrival) order, taken from the front.

Rules: as ``store.memory``; see ``EventQueue``.
"""

from __future__ import annotations

import heapq
from operator import itemgetter
from typing import Any

from ..engine.model import Event

BULK = 256  # events arriving together that are sorted into the run instead of the heap


class EventQueue:
    """Queued events in (time, arrival) order. A day of synthetic behaviour arrives in
    one go and is sorted into an ordered run, taken from its front; events arriving a
    few at a time (emitted by runs, added by tests) go on a heap. The head is the
    earlier of the two heads: the same order as one heap, without the cache misses of
    pushing and popping a million-entry heap."""

    def __init__(self) -> None:
        self.queued: dict[str, Event] = {}  # not yet handed out; by id
        self._seq = 0
        self._incoming: list[tuple[float, int, Event]] = []
        self._run: list[tuple[float, int, Event] | None] = []  # sorted; taken up to _pos
        self._pos = 0
        self._heap: list[tuple[float, int, Event]] = []
        self._head: tuple[float, int, Event] | None = None  # known while nothing changes
        self._head_known = True

    def add(self, event: Event) -> None:
        self._seq += 1
        self.queued[event.id] = event
        self._incoming.append((event.at.timestamp(), self._seq, event))
        self._head_known = False

    def take(self, event_id: str) -> Event | None:
        self._head_known = False
        return self.queued.pop(event_id, None)

    def _settle(self) -> None:
        incoming, self._incoming = self._incoming, []
        if len(incoming) < BULK:
            for item in incoming:
                heapq.heappush(self._heap, item)
            return
        merged: list[Any] = self._run[self._pos:]
        merged.extend(incoming)
        # A stable sort by time keeps arrival order among equal times: the run's
        # entries arrived before the new ones, and each part is in arrival order.
        merged.sort(key=itemgetter(0))
        self._run, self._pos = merged, 0

    def head(self) -> tuple[float, int, Event] | None:
        # Asked several times per instant (next_event_at, pending_events).
        if self._head_known:
            return self._head
        self._head = self._find_head()
        self._head_known = True
        return self._head

    def _find_head(self) -> tuple[float, int, Event] | None:
        if self._incoming:
            self._settle()
        queued, run, heap = self.queued, self._run, self._heap
        pos = self._pos
        while pos < len(run) and run[pos][2].id not in queued:  # type: ignore[index]
            run[pos] = None  # taken by id (``take``): drop it
            pos += 1
        self._pos = pos
        while heap and heap[0][2].id not in queued:
            heapq.heappop(heap)
        first = run[pos] if pos < len(run) else None
        if heap and (first is None or heap[0] < first):
            return heap[0]
        return first

    def take_due(self, last: float, limit: int) -> list[Event]:
        """The queued events due at or before ``last`` (a timestamp), at most ``limit``,
        in order: as taking ``head()`` with ``pop()`` while it is due."""
        out: list[Event] = []
        head = self._head if self._head_known else self.head()
        if head is None or head[0] > last:
            return out
        if not self._heap and not self._incoming:
            # Everything is in the sorted run: take from its front in one pass. An
            # entry taken by id meanwhile (not queued) is dropped, as _find_head does.
            queued, run, pos = self.queued, self._run, self._pos
            end = len(run)
            while pos < end and len(out) < limit:
                item = run[pos]
                if item[0] > last:  # type: ignore[index]
                    break
                run[pos] = None
                pos += 1
                event = queued.pop(item[2].id, None)  # type: ignore[index]
                if event is not None:
                    out.append(event)
            self._pos = pos
            # The next head, as _find_head would find it, when it is plain to see.
            if pos >= end:
                self._head, self._head_known = None, True
            elif run[pos][2].id in queued:  # type: ignore[index]
                self._head, self._head_known = run[pos], True
            else:
                self._head_known = False
            return out
        while head is not None and head[0] <= last and len(out) < limit:
            out.append(self.pop(head))
            head = self.head()
        return out

    def pop(self, head: tuple[float, int, Event]) -> Event:
        """Take ``head``, as just returned by ``head()``."""
        self._head_known = False
        if self._heap and self._heap[0] is head:
            heapq.heappop(self._heap)
        else:
            self._run[self._pos] = None
            self._pos += 1
        return self.queued.pop(head[2].id)
