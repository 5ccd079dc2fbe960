"""Python's cyclic garbage collector around bulk work (a dry run, a dispatch).

Rules:
- Bulk work keeps many objects alive for a short while (a dry run's day of events and
  a schedule's runs until applied; a dispatch's claimed chunk of rows until sent).
  With Python's default youngest generation (700 objects) the collector walks each of
  them once or more on its way to the oldest generation although reference counting
  frees them all; a larger youngest generation leaves them to reference counting.
- What exists before the work (roster, compiled playbooks, modules) is frozen out of
  the collector's passes meanwhile, unless someone else froze it already.
- Both are restored afterwards. Cyclic garbage made meanwhile (a traceback) is still
  collected, once the youngest generation fills.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collecting_less(thresholds: tuple[int, int, int]) -> Iterator[None]:
    """``gc.set_threshold(*thresholds)`` and the heap so far frozen, until the end."""
    before = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0  # someone else's freeze is theirs to undo
    if freeze:
        gc.freeze()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if freeze:
            gc.unfreeze()
