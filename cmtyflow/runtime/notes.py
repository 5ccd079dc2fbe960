"""Notes as people read them, the same wherever they are shown (the dry run's
warnings, ``cmtyflow status``)."""

from __future__ import annotations

from typing import Any


def set_aside(note: dict[str, Any]) -> str:
    """An ``input_failed`` note (docs/semantics.md, Runs): which input, and why."""
    kind = note.get("input")
    if kind == "event":
        what = f"event {note.get('event')} ({note.get('type')}" + (f", {note['member']})" if note.get("member") else ")")
    elif kind == "timer":
        what = f"wait of run {note.get('run')}"
    elif kind == "firing":
        what = f"firing {note.get('playbook')}/{note.get('trigger')} due {note.get('due')}"
    else:
        what = f"launch {note.get('launch')} of {note.get('playbook')}/{note.get('trigger')}"
    return f"{what}: {note.get('reason')}"
