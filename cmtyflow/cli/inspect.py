"""``cmtyflow outbox [retry ID]`` (SPEC 6), and what the commands that read the store
share (``status`` in status.py, ``report`` in report.py): JSON output, times shown in
the playbooks' timezone, whether a runner holds the state.

Rules:
- Read-only, except ``outbox retry``, which puts a failed, dead, in-doubt or
  cancelled message back in the queue with its attempts reset, and writes that to
  the audit log. Its text is the stored text: a retry sends the same bytes.
- Keys are shown shortened to 12 characters; any unique prefix names a message.
- ``--format json`` for scripts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from ..clock import SystemClock
from ..errors import UserError
from ..runtime.runner import StateLock
from ..store.base import REQUEUEABLE, OutboxRow
from ..store.open import is_postgres
from . import EXIT_OK, cli
from .columns import text_width
from .state import format_option, print_row, state_option, store_at

SHORT = 12
PROBLEM_STATUSES = ("failed", "dead", "in_doubt")


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, default=_default, indent=2))


def _echo_json_rows(docs: Iterator[dict[str, Any]]) -> int:
    """A JSON array of ``docs`` as ``_echo_json`` writes a list, each written as it
    comes; returns how many."""
    n = 0
    for doc in docs:
        text = json.dumps(doc, ensure_ascii=False, default=_default, indent=2).replace("\n", "\n  ")
        click.echo(("[\n  " if n == 0 else ",\n  ") + text, nl=False)
        n += 1
    click.echo("[]" if n == 0 else "\n]")
    return n


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _when(value: Any, tz: tzinfo | None = None) -> str:
    """A time as text output shows it: to the second (JSON keeps every digit), in
    ``tz`` when given (the playbooks' timezone: a member's timer in their own offset
    looked like another time, out of order beside the others)."""
    if isinstance(value, datetime):
        moment: datetime = value.astimezone(tz) if tz is not None and value.tzinfo is not None else value
        return moment.isoformat(timespec="seconds")
    return str(value or "")


def shown_zone(store: Any) -> tzinfo | None:
    """The timezone times are shown in: the playbooks' when those run on this state
    share one; else None (each time as it was recorded)."""
    from ..runtime.versions import playbook_zones

    zones = set(playbook_zones(store).values())
    if len(zones) != 1:
        return None
    try:
        return ZoneInfo(zones.pop())
    except (ZoneInfoNotFoundError, ValueError):
        return None


# outbox -----------------------------------------------------------------------------------------


def _row_doc(row: OutboxRow) -> dict[str, Any]:
    m = row.message
    return {
        "key": m.key, "status": row.status, "attempts": row.attempts, "playbook": m.playbook, "flow": m.flow,
        "step": m.step, "channel": m.channel, "adapter": m.adapter, "member": m.member, "to": m.to,
        "urgent": m.urgent, "deliver_at": m.deliver_at, "next_attempt": row.next_attempt,
        "last_error": row.last_error, "sent_at": row.sent_at, "text": m.text,
    }


def _no_runner(location: str) -> bool:
    """Whether no runner holds the SQLite state at ``location`` now (False for PostgreSQL,
    whose runner and workers say so themselves)."""
    return not is_postgres(location) and not StateLock.held(location)


@cli.group("outbox", invoke_without_command=True)
@state_option
@click.option("--status", "statuses", multiple=True, type=click.Choice(["queued", "inflight", "sent", "failed", "dead", "in_doubt", "cancelled"]),
              help="show these statuses (repeatable; default: failed, dead and in_doubt)")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@format_option
@click.pass_context
def outbox(ctx: click.Context, state: str | None, statuses: tuple[str, ...], limit: int, fmt: str) -> int:
    """Messages that need attention: failed (will retry), dead (gave up), in doubt
    (the runner stopped while sending; not resent on platforms that cannot
    deduplicate). `cmtyflow outbox retry KEY` sends one again."""
    if ctx.invoked_subcommand is not None:
        # Only --state is shared; the others choose what `outbox` lists, and were silently
        # dropped (`outbox --status failed retry --all` requeued the dead messages).
        options = (("--status", "statuses"), ("--limit", "limit"), ("--format", "fmt"))
        given = click.core.ParameterSource.COMMANDLINE
        listing = [option for option, param in options if ctx.get_parameter_source(param) is given]
        if listing:
            raise UserError(
                f"{', '.join(listing)} before '{ctx.invoked_subcommand}' chooses what `cmtyflow outbox` lists; "
                f"give options of '{ctx.invoked_subcommand}' after it, e.g. cmtyflow outbox retry --all --status failed"
            )
        ctx.obj = {"state": state}
        return EXIT_OK
    store, location = store_at(state, must_exist=True)
    try:
        wanted = list(statuses or PROBLEM_STATUSES)
        counts = store.outbox_counts()
        header = ("key", "status", "tries", "step", "to", "channel", "next try", "error")
        widths = [text_width(h) for h in header]
        if fmt == "json":
            # Written as read, a row at a time: a listing of a million rows held them all
            # twice over (5 GB).
            shown = _echo_json_rows(_row_doc(r) for r in itertools.islice(store.outbox(wanted), limit))
        else:
            # Read twice, a page at a time (the widths, then the rows), as `members list`:
            # a large --limit held every row, its text too.
            shown = 0
            for cells in map(_outbox_cells, itertools.islice(store.outbox(wanted), limit)):
                widths = [max(w, text_width(c)) for w, c in zip(widths, cells, strict=True)]
                shown += 1
        # How many more from the counts (one query), not by reading every row past the limit.
        more = max(0, sum(counts.get(s, 0) for s in set(wanted)) - shown)
        if more:
            click.echo(f"showing the first {limit}; {more} more (raise --limit to see them)", err=True)
        stranded = counts.get("inflight", 0)
        if stranded and not statuses and _no_runner(location):
            # Left by a runner that stopped while sending (killed): in doubt, but marked so
            # only when the next runner starts (SPEC 5.2), so they were not listed at all.
            click.echo(
                f"note: {stranded} message{'s were' if stranded != 1 else ' was'} being sent when the runner stopped; "
                "the next `cmtyflow run` settles them (resent with the same key where the platform deduplicates, "
                "else held here as in doubt). `--status inflight` lists them now",
                err=True,
            )
        if fmt == "json":
            return EXIT_OK
        if not shown:
            click.echo("nothing " + ("with status " + "/".join(statuses) if statuses else "failed, dead or in doubt"))
            return EXIT_OK
        tz = shown_zone(store)
        print_row(header, widths)
        for cells in map(_outbox_cells, itertools.islice(store.outbox(wanted), limit), itertools.repeat(tz)):
            print_row(cells, widths)
    finally:
        store.close()
    return EXIT_OK


def _outbox_cells(r: OutboxRow, tz: tzinfo | None = None) -> tuple[str, ...]:
    m = r.message
    return (
        m.key[:SHORT], r.status, str(r.attempts), f"{m.playbook}/{m.step}", m.member or m.to, m.channel,
        _when(r.next_attempt, tz) if r.next_attempt and r.status == "failed" else "",
        (r.last_error or "")[:80],
    )


@outbox.command("retry")
@click.argument("keys", nargs=-1)
@click.option("--all", "every", is_flag=True,
              help="every message in --status (default: dead) instead of KEYS, e.g. after fixing a channel's token")
@click.option("--status", "statuses", multiple=True, type=click.Choice(REQUEUEABLE),
              help="with --all: these statuses (repeatable). In-doubt messages may already have arrived: "
                   "on a platform that cannot deduplicate, a retry can send them twice")
@click.option("--playbook", help="with --all: only this playbook's messages")
@click.option("--channel", help="with --all: only messages to this channel")
@state_option
@click.pass_context
def outbox_retry(
    ctx: click.Context, keys: tuple[str, ...], every: bool, statuses: tuple[str, ...], playbook: str | None,
    channel: str | None, state: str | None,
) -> int:
    """Queue failed, dead, in-doubt or cancelled messages again, by key (a unique
    prefix is enough), or `--all` of a status. They go out with their stored text at
    the runner's next pass, with their attempts counted afresh."""
    if every == bool(keys):
        raise UserError("give the keys of the messages to retry, or --all (with --status, --playbook, --channel)")
    if not every and (statuses or playbook or channel):
        raise UserError("--status, --playbook and --channel choose messages for --all; with keys, give only the keys")
    state = state or (ctx.obj or {}).get("state")
    store, _ = store_at(state, must_exist=True)
    twice: list[str] = []  # in-doubt messages retried on a platform that cannot drop a repeat
    try:
        now = SystemClock().now()
        if every:
            chosen_statuses = list(statuses or ("dead",))
            # Keys only: the rows are read one page at a time, not kept.
            chosen_keys = [
                row.message.key for row in store.outbox(chosen_statuses)
                if (playbook is None or row.message.playbook == playbook) and (channel is None or row.message.channel == channel)
            ]
            n = store.requeue(chosen_keys, now, reset_attempts=True)
            if chosen_keys:
                # One record for the whole action (a commit per message would take minutes on
                # a large outbox), with every key it queued again.
                store.record(now, "outbox_retry", all=chosen_statuses, playbook=playbook, channel=channel, keys=chosen_keys)
        else:
            chosen: list[OutboxRow] = []
            for prefix in keys:
                found = store.find_messages(prefix)
                if not found:
                    raise UserError(f"no message with key {prefix}")
                if len(found) > 1:
                    raise UserError(f"key {prefix} is ambiguous ({len(found)} messages); give more characters")
                row = found[0]
                if any(r.message.key == row.message.key for r in chosen):
                    continue  # the same message twice (a key and a prefix of it): once
                if row.status not in REQUEUEABLE:
                    raise UserError(f"message {row.message.key[:SHORT]} is {row.status}; only failed, dead, in-doubt or cancelled ones can be retried")
                chosen.append(row)
            n = store.requeue([r.message.key for r in chosen], now, reset_attempts=True)
            for r in chosen:
                store.record(now, "outbox_retry", key=r.message.key, was=r.status)
            twice = [r.message.key[:SHORT] for r in chosen if r.status == "in_doubt" and not _deduplicates(r.message.adapter)]
    finally:
        store.close()
    click.echo(f"queued {n} message{'s' if n != 1 else ''} again")
    if twice:
        click.echo(
            f"note: {', '.join(twice)} may have arrived already (in doubt), and its platform cannot drop a repeat: "
            "the member may get it twice",
            err=True,
        )
    return EXIT_OK


def _deduplicates(adapter: str) -> bool:
    """Whether ``adapter``'s platform drops a repeat of a message's key (False when the
    adapter cannot be loaded here: a warning too many is the safe side)."""
    from ..adapters import registry

    try:
        return bool(registry.get(adapter).capabilities.idempotent)
    except Exception:  # noqa: BLE001 - an unknown or broken adapter: assume it does not
        return False
