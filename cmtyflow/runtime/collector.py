"""Python's cyclic garbage collector around bulk work (a dry run, a dispatch).

Rules:
- Bulk work keeps many objects alive for a short while (a dry run's day of events and
  a schedule's runs until applied; a dispatch's claimed chunk of rows until sent).
  With Python's default youngest generation (700 objects) the collector walks each of
  them once or more on its way to the oldest generation although reference counting
  frees them all; a larger youngest generation leaves them to reference counting.
- What exists before the work (roster, compiled playbooks, modules) is frozen out of
  the collector's passes meanwhile, unless someone else froze it already.
- Both are restored afterwards, when the last of overlapping works ends. Cyclic
  garbage made meanwhile (a traceback) is still collected, once the youngest
  generation fills.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_users = 0  # works under ``collecting_less`` now (a worker's send jobs overlap)
_saved: tuple[tuple[int, int, int], bool] | None = None  # (thresholds before, whether we froze)


@contextmanager
def collecting_less(thresholds: tuple[int, int, int]) -> Iterator[None]:
    """``gc.set_threshold(*thresholds)`` and the heap so far frozen, until the end. Works
    may overlap and end in any order: the first to start saves the collector's settings
    and the last to end restores them."""
    global _users, _saved
    with _lock:
        if _users == 0:
            freeze = gc.get_freeze_count() == 0  # someone else's freeze is theirs to undo
            _saved = (gc.get_threshold(), freeze)
            if freeze:
                gc.freeze()
        _users += 1
        gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                before, froze = _saved
                _saved = None
                gc.set_threshold(*before)
                if froze:
                    gc.unfreeze()
