"""What the SQLite and PostgreSQL stores share (SPEC 5.1): the reads both databases
answer with the same SQL, the writes made of the same steps (``put_members``,
``add_events``) and the outbox results' checks.

Rules:
- Statements here are written once, in SQLite's ``?`` style, with no ``?`` inside a
  string literal. ``SqliteStore`` runs them as they are; ``PostgresStore`` runs them
  through ``pyformat`` (psycopg's ``%s``), converted once per statement (cached).
- A store provides the primitives: ``_all`` and ``_one`` (run a ``?`` statement),
  ``_in`` (a column in a list of values), ``_at_cols`` (a datetime as its ``*_ts``
  and text columns), and for the few writes here ``_write`` (one transaction) with
  the writes it is made of (``_merge_members``, ``_put_zones``, ``_add_events``,
  ``_add_counter``). Everything else a database does its own way (bulk writes,
  COPY, claims with RETURNING or locks, migrations) stays in its store.
- Columns that are booleans in PostgreSQL are 0/1 integers in SQLite: conditions
  test them bare (``NOT converted``, ``WHERE note``), which both read alike.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Self

from ..engine.model import Event, EventWait, Run, Timer
from . import rows
from .base import OUTBOX_STATES, VERSION_KIND, OutboxRow
from .codec import dt_parse, dt_text, loads

PAGE = 1000
FINISH_FIELDS = frozenset({"attempts", "next_attempt", "last_error", "sent_at", "platform_id"})

Row = tuple[Any, ...]


@functools.lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """``sql`` for psycopg: each ``?`` a ``%s``, a literal ``%`` doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


class SqlStore(ABC):
    MEMBER_BATCH: int  # members merged per round trip (the store says how many)
    # ``get_run`` decodes a run of its own at each call, which no one else holds: the
    # engine changes it in place without a copy (``engine.txn.Txn``).
    fresh_runs = True
    # the primitives a store provides ---------------------------------------------------------
    @abstractmethod
    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]:
        ...

    @abstractmethod
    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        ...

    @staticmethod
    @abstractmethod
    def _in(column: str, values: Iterable[Any]) -> tuple[str, tuple[Any, ...]]:
        """(a condition: ``column`` is one of ``values``, its parameters)."""
        ...

    @staticmethod
    @abstractmethod
    def _at_cols(value: datetime) -> tuple[Any, str]:
        """(the ``*_ts`` column's value, the text column's) of ``value``."""
        ...

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """One transaction; what it yields is the ``tx`` the writes below take."""
        ...

    @abstractmethod
    def _merge_members(self, tx: Any, batch: dict[str, dict[str, Any]]) -> None:
        """Write ``batch`` (id -> record), each record merged over the one stored."""
        ...

    @abstractmethod
    def _put_zones(self, tx: Any, zones: set[str]) -> None:
        ...

    @abstractmethod
    def _add_events(self, tx: Any, events: Iterable[Event]) -> int:
        """Queue ``events`` (skipping ids seen before); returns how many were queued."""
        ...

    @abstractmethod
    def _add_counter(self, tx: Any, name: str, n: int) -> None:
        ...

    @abstractmethod
    def _run(self, tx: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run a ``?`` statement in ``tx``; returns how many rows it changed."""
        ...

    @abstractmethod
    def close(self) -> None:
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _paged(self, sql: str, params: tuple[Any, ...] = (), after: int = -(2**63)) -> Iterator[Row]:
        """Rows of ``sql`` (its first column ``seq``, ending ``seq > ? ORDER BY seq LIMIT ?``)."""
        last = after
        while True:
            page = self._all(sql, (*params, last, PAGE))
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1][0]

    # StateReader ------------------------------------------------------------------------------
    def get_member(self, member_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT record FROM members WHERE id = ?", (member_id,))
        return loads(row[0]) if row is not None else None

    def iter_members(self, timezone: str | None = None, default_timezone: str | None = None) -> Iterator[dict[str, Any]]:
        for _, member in self.members_from(-(2**63), timezone, default_timezone):
            yield member

    def members_from(
        self, after: int, timezone: str | None = None, default_timezone: str | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        if timezone is None:
            found = self._paged("SELECT seq, record FROM members WHERE seq > ? ORDER BY seq LIMIT ?", after=after)
        else:
            sql = "SELECT seq, record FROM members WHERE timezone = ? AND seq > ? ORDER BY seq LIMIT ?"
            found = self._paged(sql, (timezone,), after=after)
            if default_timezone == timezone:  # members without a timezone are in the default one
                found = heapq.merge(found, self._paged(sql, ("",), after=after))
        for row in found:
            yield row[0], loads(row[1])

    def get_state(self, playbook: str, member: str | None) -> dict[str, Any]:
        row = self._one("SELECT state FROM states WHERE playbook = ? AND member = ?", (playbook, rows.who(member)))
        return loads(row[0]) if row is not None else {}

    def get_run(self, run_id: str) -> Run | None:
        row = self._one(f"SELECT {rows.RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return rows.run(row) if row is not None else None

    def active_runs(self, playbook: str, flow: str, member: str | None) -> list[str]:
        found = self._all(
            "SELECT id FROM runs WHERE playbook = ? AND flow = ? AND member = ? AND status = 'active' ORDER BY seq",
            (playbook, flow, rows.who(member)),
        )
        return [r[0] for r in found]

    def event_waits(self, event_type: str, member: str | None) -> Iterable[EventWait]:
        sql = f"SELECT {rows.WAIT_COLS} FROM waits WHERE event_type = ? AND member = ? ORDER BY seq"
        found = self._all(sql, (event_type, ""))
        if member is not None:
            found += self._all(sql, (event_type, rows.who(member)))
        return [rows.wait(r) for r in found]

    def day_count(self, member: str, day: str) -> int:
        row = self._one("SELECT n FROM day_counts WHERE day = ? AND member = ?", (day, member))
        return int(row[0]) if row is not None else 0

    def exposures(self, playbook: str, member: str) -> Iterable[tuple[str, str, str | None, datetime]]:
        found = self._all(
            "SELECT goal, step, variant, at FROM exposures WHERE playbook = ? AND member = ? AND NOT converted ORDER BY seq",
            (playbook, member),
        )
        return [(goal, step, variant or None, dt_parse(at)) for goal, step, variant, at in found]

    # A run's version, the first item of its body (``rows.run_params``), in the store's SQL.
    RUN_VERSION = "json_extract(body, '$[0]')"

    def active_run_counts(self) -> dict[tuple[str, str, str], int]:
        # Counted here, a page at a time: a GROUP BY sorted every row in memory first
        # (400 MB for a million runs waiting).
        counts: Counter[tuple[str, str, str]] = Counter()
        sql = f"SELECT seq, playbook, {self.RUN_VERSION}, flow FROM runs WHERE status = 'active' AND seq > ? ORDER BY seq LIMIT ?"
        for _, playbook, version, flow in self._paged(sql):
            counts[(playbook, version, flow)] += 1
        return dict(counts)

    def waiting_starts(self) -> list[dict[str, Any]]:
        return [loads(r[0]) for r in self._all("SELECT record FROM queued_starts ORDER BY seq")]

    def queued_starts(self, playbook: str, flow: str, member: str | None) -> list[dict[str, Any]]:
        found = self._all(
            "SELECT record FROM queued_starts WHERE playbook = ? AND flow = ? AND member = ? ORDER BY seq",
            (playbook, flow, rows.who(member)),
        )
        return [loads(r[0]) for r in found]

    # roster -------------------------------------------------------------------------------------
    def put_members(self, members: Iterable[dict[str, Any]]) -> int:
        with self._write() as tx:
            return self._put_members(tx, members)

    def _put_members(self, tx: Any, members: Iterable[dict[str, Any]]) -> int:
        """Several records of one member in one call merge, the later fields winning."""
        n = 0
        size = self.MEMBER_BATCH
        batch: dict[str, dict[str, Any]] = {}
        zones: set[str] = set()
        for member in members:
            n += 1
            mid = member["id"]
            current = batch.get(mid)
            batch[mid] = {**current, **member} if current is not None else member
            if member.get("timezone"):
                zones.add(member["timezone"])
            if len(batch) >= size:
                self._merge_members(tx, batch)
                batch = {}
        if batch:
            self._merge_members(tx, batch)
        if zones:
            self._put_zones(tx, zones)
        return n

    # sending (SPEC 5.2) ---------------------------------------------------------------------------
    _sending = False  # this store has marked a row sending since it opened (finish then forgets it)

    def mark_sending(self, key: str, member: str | None, urgent: bool) -> bool:
        if member is not None and not urgent:
            record = self.get_member(member)
            if record is not None and (record.get("opted_out") or record.get("left")):
                return False
        with self._write() as tx:
            self._run(tx, "INSERT INTO sending (key) VALUES (?) ON CONFLICT DO NOTHING", (key,))
        self._sending = True
        return True

    def _forget_sending(self, tx: Any, keys: Iterable[str]) -> None:
        """Finished rows leave ``sending`` (only ever filled by ``mark_sending``)."""
        if self._sending:
            condition, params = self._in("key", list(keys))
            self._run(tx, f"DELETE FROM sending WHERE {condition}", params)

    def requeue_unstarted(self) -> int:
        with self._write() as tx:
            return self._run(tx, REQUEUE_UNSTARTED)

    def member_timezones(self) -> set[str]:
        return {r[0] for r in self._all("SELECT timezone FROM zones")}

    def member_count(self) -> int:
        return int(self._all("SELECT count(*) FROM members")[0][0])

    # inputs ---------------------------------------------------------------------------------------
    def add_event(self, event: Event) -> bool:
        return self.add_events([event])[0] == 1

    def add_events(self, events: Iterable[Event]) -> tuple[int, int]:
        events = list(events)
        with self._write() as tx:
            accepted = self._add_events(tx, events) if events else 0
            duplicates = len(events) - accepted
            if duplicates:
                self._add_counter(tx, "duplicate_events", duplicates)
        return accepted, duplicates

    def next_event_at(self) -> datetime | None:
        row = self._one("SELECT at FROM events WHERE status = 'queued' ORDER BY at_ts, seq LIMIT 1")
        return dt_parse(row[0]) if row is not None else None

    def pending_events(self, until: datetime, limit: int = 1000) -> list[Event]:
        found = self._all(
            f"SELECT {rows.EVENT_COLS} FROM events WHERE status = 'queued' AND at_ts <= ? ORDER BY at_ts, seq LIMIT ?",
            (self._at_cols(until)[0], limit),
        )
        return [rows.event(r) for r in found]

    def take_event(self, event_id: str) -> Event | None:
        row = self._one(f"SELECT {rows.EVENT_COLS} FROM events WHERE id = ? AND status = 'queued'", (event_id,))
        return rows.event(row) if row is not None else None

    def next_timer_due(self) -> datetime | None:
        row = self._one("SELECT due FROM timers ORDER BY due_ts, id LIMIT 1")
        return dt_parse(row[0]) if row is not None else None

    def timer_count(self) -> int:
        return int(self._all("SELECT count(*) FROM timers")[0][0])

    def upcoming_timers(self, limit: int = 20) -> list[Timer]:
        found = self._all(f"SELECT {rows.TIMER_COLS} FROM timers ORDER BY due_ts, id LIMIT ?", (limit,))
        return [rows.timer(r) for r in found]

    def schedule_positions(self) -> dict[tuple[str, str, str], datetime | None]:
        found = self._all("SELECT playbook, trigger, zone, next_due FROM schedules ORDER BY seq")
        return {(pb, t, z): dt_parse(due) if due is not None else None for pb, t, z, due in found}

    def firing_progress(self) -> dict[tuple[str, str, str], tuple[datetime, int, datetime, datetime]]:
        found = self._all(
            "SELECT playbook, trigger, zone, next_due, firing_after, firing_started, firing_last FROM schedules "
            "WHERE firing_after IS NOT NULL AND next_due IS NOT NULL ORDER BY seq"
        )
        out = {}
        for pb, t, z, due, after, started, last in found:
            first = dt_parse(started) if started else dt_parse(due)
            out[(pb, t, z)] = (dt_parse(due), int(after), first, dt_parse(last) if last else first)
        return out

    # outbox ----------------------------------------------------------------------------------------
    def outbox(self, statuses: Iterable[str] | None = None) -> Iterator[OutboxRow]:
        if statuses is None:
            found = self._paged(f"SELECT seq, {rows.OUTBOX_COLS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
        else:
            wanted, params = self._in("status", statuses)
            found = self._paged(f"SELECT seq, {rows.OUTBOX_COLS} FROM outbox WHERE {wanted} AND seq > ? ORDER BY seq LIMIT ?", params)
        for row in found:
            yield rows.outbox_row(row[1:])

    def outbox_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for status, n in self._all("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[status] = n
        return counts

    def urgent_waiting(self) -> int:
        row = self._one("SELECT count(*) FROM outbox WHERE urgent AND status IN ('queued', 'failed')")
        return int(row[0]) if row is not None else 0

    def find_messages(self, prefix: str) -> list[OutboxRow]:
        if not prefix:
            return list(self.outbox())
        params: tuple[Any, ...]
        if ord(prefix[-1]) < 0xD7FF:  # a key range on the unique index (keys are hex; PostgreSQL's are COLLATE "C")
            sql = f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE key >= ? AND key < ? ORDER BY seq"
            params = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        else:
            sql = f"SELECT {rows.OUTBOX_COLS} FROM outbox WHERE substr(key, 1, ?) = ? ORDER BY seq"
            params = (len(prefix), prefix)
        return [rows.outbox_row(r) for r in self._all(sql, params)]

    def deliveries(self, playbook: str | None = None) -> Iterator[dict[str, Any]]:
        if playbook is None:
            found = self._paged(f"{rows.DELIVERIES} WHERE d.seq > ? ORDER BY d.seq LIMIT ?")
        else:
            found = self._paged(f"{rows.DELIVERIES} WHERE d.playbook = ? AND d.seq > ? ORDER BY d.seq LIMIT ?", (playbook,))
        for row in found:
            yield rows.delivery(row[1:])

    # reporting -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self._all("SELECT name, value FROM counters ORDER BY name")}

    def notes(self) -> list[dict[str, Any]]:
        return [loads(r[0]) for r in self._all("SELECT detail FROM audit WHERE note ORDER BY seq")]

    def audit(self, kinds: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        where, params = "", ()
        if kinds is not None:
            wanted, params = self._in("kind", kinds)
            where = f"WHERE {wanted}"
        if limit is None:
            found = self._all(f"SELECT at, kind, note, detail FROM audit {where} ORDER BY seq", params)
        else:
            found = self._all(f"SELECT at, kind, note, detail FROM audit {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
            found.reverse()
        return [rows.audit_entry(r) for r in found]

    def iter_audit(self, kinds: Iterable[str]) -> Iterator[dict[str, Any]]:
        wanted, params = self._in("kind", kinds)
        sql = f"SELECT seq, at, kind, note, detail FROM audit WHERE {wanted} AND seq > ? ORDER BY seq LIMIT ?"
        for row in self._paged(sql, params):
            yield rows.audit_entry(row[1:])

    def goal_stats(self) -> dict[tuple[str, str, str, str | None], tuple[int, int]]:
        converted = {
            (pb, goal, step, variant): n
            for pb, goal, step, variant, n in self._all(
                "SELECT playbook, goal, step, variant, count(*) FROM conversions GROUP BY playbook, goal, step, variant"
            )
        }
        return {
            (pb, goal, step, variant or None): (n, converted.get((pb, goal, step, variant), 0))
            for pb, goal, step, variant, n in self._all(
                "SELECT playbook, goal, step, variant, count(*) FROM exposures GROUP BY playbook, goal, step, variant "
                "ORDER BY min(seq)"
            )
        }

    def runs(self, *, status: str | None = "active", playbook: str | None = None) -> Iterator[Run]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if playbook is not None:
            where.append("playbook = ?")
            params.append(playbook)
        where.append("seq > ?")
        sql = f"SELECT seq, {rows.RUN_COLS} FROM runs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        for row in self._paged(sql, tuple(params)):
            yield rows.run(row[1:])

    # upkeep ---------------------------------------------------------------------------------------
    def prune(
        self, before: datetime, *, keep: bool = False, progress: Callable[[str, int], None] | None = None
    ) -> dict[str, int]:
        """Forget what is over and older than ``before`` (``PRUNE``, in order); returns
        the rows changed per line of it (with ``keep``, the rows it would change, read
        and not changed). What is live stays: members and their states, active runs
        with their timers and waits, queued, failed, in-doubt and dead messages,
        schedule positions, goals and counters. Event ids stay too (their data goes),
        so an event sent again is still a duplicate.

        It commits as it goes, a window of ``PRUNE_WINDOW`` rows (by ``seq``; the daily
        cap's counts a day) per transaction, and lets other writers in between
        (``_between_batches``): a runner beside it waits for one window, never for the
        whole of a large state. ``progress(line, rows so far)`` follows each window."""
        ts, _ = self._at_cols(before)
        # Day counts are by member-local date: one a day before the cutoff in UTC has
        # ended in every timezone (UTC-12 to UTC+14).
        day = (before.astimezone(UTC) - timedelta(days=1)).date().isoformat()
        counts: dict[str, int] = {}
        since = 0
        for line in PRUNE:
            cutoff = ts if line.cutoff == "ts" else day
            exempt: list[int] = []
            if line.table == "outbox":
                # Messages due before the cutoff and delivered after it stay, with their
                # delivery (rare: a retry or a deferral across the cutoff). Those
                # delivered so far are read once, now that the old deliveries are gone;
                # those a runner beside it delivers from now on (a delivery past the
                # last one now, read first) in each window's own transaction.
                found = self._one("SELECT max(seq) FROM deliveries")
                since = (found[0] if found is not None else None) or 0
                exempt = sorted({seq for (seq,) in self._all(PRUNE_LATE, (ts, ts))})
            if line.table == "day_counts":
                windows: Iterable[tuple[Any, Any]] = (
                    (d, d) for (d,) in self._all("SELECT DISTINCT day FROM day_counts WHERE day < ? ORDER BY day", (day,))
                )
            else:
                found = self._one(f"SELECT count(*), min(seq), max(seq) FROM {line.table} WHERE {line.where}", (cutoff,))
                n, low, high = found if found is not None else (0, None, None)
                if keep or not n:
                    counts[line.name] = (n or 0) - len(exempt)
                    continue
                windows = ((at, min(at + self.PRUNE_WINDOW - 1, high)) for at in range(low, high + 1, self.PRUNE_WINDOW))
            if keep:
                found = self._one(f"SELECT count(*) FROM {line.table} WHERE {line.where}", (cutoff,))
                counts[line.name] = found[0] if found is not None else 0
                continue
            done = 0
            for first, last in windows:
                started = time.monotonic()
                done += self._prune_window(line, cutoff, first, last, exempt, since)
                if progress is not None:
                    progress(line.name, done)
                self._between_batches(time.monotonic() - started)
            counts[line.name] = done
        return counts

    def _prune_window(
        self, line: PruneLine, cutoff: Any, first: Any, last: Any, exempt: list[int], since: int
    ) -> int:
        key = "day" if line.table == "day_counts" else "seq"
        where = f"{key} >= ? AND {key} <= ? AND {line.where}"
        params: tuple[Any, ...] = (first, last, cutoff)
        skip = exempt[bisect.bisect_left(exempt, first) : bisect.bisect_right(exempt, last)] if exempt else []
        if skip:
            kept, values = self._in("seq", skip)
            where, params = f"{where} AND NOT ({kept})", (*params, *values)
        if line.table == "outbox":  # delivered since the prune began (by seq: the key's range)
            where, params = f"{where} AND key NOT IN (SELECT key FROM deliveries WHERE seq > ?)", (*params, since)
        sql = f"UPDATE {line.table} SET {line.change} WHERE {where}" if line.change else f"DELETE FROM {line.table} WHERE {where}"
        with self._write() as tx:
            return self._run(tx, sql, params)

    PRUNE_WINDOW = 5000  # rows (by ``seq``) per transaction of ``prune``

    def _between_batches(self, took: float) -> None:
        """After each of ``prune``'s transactions (which took ``took`` seconds): what
        lets other writers in. A store whose writers wait for each other (SQLite)
        pauses here; by default nothing."""
        return None

    def states(self, playbook: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
        found = self._paged("SELECT seq, member, state FROM states WHERE playbook = ? AND seq > ? ORDER BY seq LIMIT ?", (playbook,))
        for _, member, state in found:
            yield (member or None), loads(state)


class PruneLine(NamedTuple):
    """A line of ``prune``: what it forgets (``name``), in which table, which rows
    (``where``, with one ``?`` for the cutoff: ``ts`` or ``day``), and how: deleted,
    or, with ``change`` (a SET clause), updated."""

    name: str
    cutoff: str
    table: str
    where: str
    change: str | None = None


# What ``prune`` forgets, in order. A sent message goes with its deliveries (it was due
# before them); one delivered later than the cutoff stays (``PRUNE_LATE``). Finished
# runs go by their start; no timer or wait is left without its run (a run's timers and
# waits are removed when it finishes). An event's data goes once (the rows it changed
# no longer match).
PRUNE: tuple[PruneLine, ...] = (
    PruneLine("deliveries", "ts", "deliveries", "at_ts < ?"),
    PruneLine("messages sent or cancelled", "ts", "outbox", "status IN ('sent', 'cancelled') AND due_ts < ?"),
    PruneLine("finished runs", "ts", "runs", "status <> 'active' AND started_ts < ?"),
    PruneLine(
        "events taken (data dropped, ids kept)", "ts", "events",
        "status <> 'queued' AND at_ts < ? AND (data <> '{}' OR member_update IS NOT NULL)",
        "data = '{}', member_update = NULL",
    ),
    # Playbook versions stay, however old: a run started on a version finishes on it,
    # and the runner rebuilds that version from its snapshot (runtime/versions.py).
    PruneLine("audit entries", "ts", "audit", f"at_ts < ? AND kind <> '{VERSION_KIND}'"),
    PruneLine("daily cap counts", "day", "day_counts", "day < ?"),
)
# The outbox rows (seq) that ``PRUNE`` would take and that were delivered after the cutoff.
PRUNE_LATE = (
    "SELECT DISTINCT outbox.seq FROM deliveries JOIN outbox ON outbox.key = deliveries.key "
    "WHERE deliveries.at_ts >= ? AND outbox.status IN ('sent', 'cancelled') AND outbox.due_ts < ?"
)


# Rows left inflight whose call to the platform never began: back to the queue (SPEC 5.2).
REQUEUE_UNSTARTED = "UPDATE outbox SET status = 'queued' WHERE status = 'inflight' AND key NOT IN (SELECT key FROM sending)"


# outbox results ---------------------------------------------------------------------------------
Shape = tuple[tuple[str, ...], bool]  # (the fields a result sets, whether it moves the row's due time)


def finish_params(
    key: str, status: str, fields: dict[str, Any], at_cols: Callable[[datetime], tuple[Any, str]]
) -> tuple[Shape, tuple[Any, ...], tuple[Any, ...] | None]:
    """(the statement's shape, its parameters, the delivery's parameters when sent) of one
    ``finish_messages`` result; ``at_cols`` is the store's ``_at_cols``."""
    if status not in OUTBOX_STATES:
        raise ValueError(f"not an outbox status: {status!r}")
    if not FINISH_FIELDS.issuperset(fields):
        raise ValueError(f"not an outbox field: {next(n for n in fields if n not in FINISH_FIELDS)!r}")
    params: list[Any] = [status]
    params += [dt_text(value) if isinstance(value, datetime) else value for value in fields.values()]
    retry = fields.get("next_attempt") if status in ("failed", "queued") else None
    if retry is not None:
        params += at_cols(retry)
    params.append(key)
    delivery = None
    if status == "sent":
        sent_at = fields.get("sent_at")
        delivery = (*at_cols(sent_at), key) if sent_at is not None else (None, None, key)
    return (tuple(fields), retry is not None), tuple(params), delivery


@functools.lru_cache(maxsize=64)
def finish_sql(fields: tuple[str, ...], moves_due: bool) -> str:
    """The UPDATE of one result of this shape."""
    sets = ["status = ?", *(f"{name} = ?" for name in fields)]
    if moves_due:  # a retry (or a row put back) is due again at next_attempt
        sets.append("due_ts = ?, due = ?")
    return f"UPDATE outbox SET {', '.join(sets)} WHERE key = ?"


def count(counts: dict[str, int], name: str, n: int) -> None:
    if n:
        counts[name] = counts.get(name, 0) + n
