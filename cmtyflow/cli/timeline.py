"""The text form of a dry run: deliveries grouped by day, then a summary."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any, TextIO

from .columns import pad, text_width

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class TextTimeline:
    """The deliveries day by day. Each time is its playbook's local time; with ``zone``
    (playbooks in several timezones) every time is in that one, said once at the top
    (each in its own zone, 20:00 in New York came after 23:00 UTC under one day)."""

    def __init__(self, out: TextIO, zone: tzinfo | None = None) -> None:
        self.out = out
        self.day: str | None = None
        self.count = 0
        self.zone = zone

    def add(self, record: dict[str, Any]) -> None:
        at = datetime.fromisoformat(record["at"])
        if self.zone is not None:
            if self.count == 0 and self.day is None:
                self.out.write(f"(times in {self.zone}: the playbooks are in several timezones)\n")
            at = at.astimezone(self.zone)
        day = at.date().isoformat()
        if day != self.day:
            if self.day is not None:
                self.out.write("\n")
            self.out.write(f"== {day} {_WEEKDAYS[at.weekday()]} ==\n")
            self.day = day
        who = record["member"] if record["member"] is not None else f"#{record['channel']}"
        variant = f" [{record['variant']}]" if record["variant"] else ""
        self.out.write(
            f"{at.strftime('%H:%M:%S')}  {record['playbook']}/{record['step']}{variant}  "
            f"{record['channel']} -> {who}\n"
        )
        for line in record["text"].rstrip("\n").split("\n"):
            self.out.write(f"    {line}\n")
        self.count += 1

    def close(self) -> None:
        if self.count == 0:
            self.out.write("no deliveries in this span\n")
        self.out.write("\n")


def _table(out: TextIO, title: str, rows: dict[str, Any]) -> None:
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return
    out.write(f"{title}:\n")
    width = max(text_width(str(k)) for k in rows)
    for key, value in rows.items():
        out.write(f"  {pad(str(key), width)}  {value}\n")


def print_summary(out: TextIO, summary: dict[str, Any]) -> None:
    days = summary["days"]
    out.write(f"Summary {summary['start']} .. {summary['end']} ({days} day{'' if days == 1 else 's'})\n")
    out.write(f"  deliveries: {summary['deliveries']}, pending after the span: {summary['pending']}\n")
    _table(out, "deliveries per day", summary["per_day"])
    _table(out, "deliveries per step", summary["per_step"])
    _table(out, "deliveries per channel", summary["per_channel"])
    _table(out, "deliveries per variant", summary.get("per_variant", {}))
    _table(out, "deferred", summary["deferred"])
    _table(out, "firings dropped (mode: single)", summary["dropped"])
    _table(out, "runs", summary["runs"])
    _table(out, "skipped", summary["skipped"])
    goals = {k: f"{v['reached']}/{v['of']}" for k, v in summary["goals"].items()}
    _table(out, "goals reached", goals)
    for warning in summary["warnings"]:
        out.write(f"warning: {warning}\n")
    if summary.get("input_problems"):
        n = summary["input_problems"]
        out.write(f"warning: {n} roster or event row{'s' if n != 1 else ''} skipped, each named on stderr with its line\n")
