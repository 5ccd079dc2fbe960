"""Rate limits shared through PostgreSQL by every process that sends to the same
destinations (docs/scale-out.md, "Shared rate limits").

Rules:
- The buckets and the GCRA are ``adapters.ratelimit.RateLimiter``'s; each bucket's
  theoretical arrival time is a row of ``<schema>.rate_buckets``, so worker processes
  on several machines stay within one platform limit together, not one each.
- ``reserve`` (a coroutine here) is one transaction: one statement locks the buckets'
  rows in key order (creating missing ones), so two reservations never deadlock and
  neither takes a token without seeing the other's; the next computes the start
  instant on the database's ``clock_timestamp()`` (hosts with skewed clocks agree),
  writes the new due times and returns the seconds to wait. A key given twice in one
  call counts once. ``acquire`` awaits ``reserve``, then sleeps. With ``most``, the
  same statement takes the tokens only when their start is at most that many seconds
  away (nothing is written otherwise), and ``acquire`` raises ``WaitTooLong``, as
  ``RateLimiter``'s. A sleeper that wakes to a hold this process's ``defer`` put on
  its buckets meanwhile reserves again after it (another process's ``defer`` reaches
  it only at its next reservation: a wait in a worker is short, ``HttpAdapter``).
- Bucket keys may hold credentials (webhook URLs): only their ``bucket_digest``
  (sha256 of a stable text of the key) is stored, sent or logged.
- ``defer`` and ``forget`` stay synchronous, as adapters call them: they apply to the
  process's own ``RateLimiter`` at once and are queued for PostgreSQL; a task writes
  the queue at once when an event loop runs, and every ``reserve`` writes what is
  still queued before reserving. A deferral is written as "due no earlier than the
  database's now plus the seconds still left"; it never shortens a later due time.
- A database problem never costs a send: on an error or a timeout (no server, a
  refused login, a lock held too long, a dropped connection) the reservation is made
  by the process's own ``RateLimiter``, one warning is logged (the URL with its
  password as ***, no key), and PostgreSQL is tried again after ``retry_after``
  seconds. Every shared reservation is mirrored into that local limiter, so falling
  back does not start from empty buckets.
- The table is created when missing, under an advisory lock, in the state schema
  (migrated first, as when a store opens it). It is not a versioned migration step:
  it holds pacing only, and a lost row costs at most one burst. For the same reason
  this connection commits with ``synchronous_commit`` off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..adapters.ratelimit import MAX_HOLD, Bucket, Limit, RateLimiter, WaitTooLong
from ..errors import UserError
from .pg_connect import _password, _reason, connect, mask_url, split_schema
from .pg_migrations import lock_key

try:
    import psycopg
    from psycopg import sql
except ImportError:  # the `postgres` extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("cmtyflow.ratelimit")

TABLE = "rate_buckets"

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    key text COLLATE "C" PRIMARY KEY,  -- bucket_digest(key), never the key
    due timestamptz NOT NULL           -- when the bucket's next token is due (GCRA)
)
"""

# One pass in key order: inserts the missing rows, locks the others (a no-op update).
_LOCK = """
INSERT INTO {table} AS b (key, due)
SELECT k, '-infinity' FROM unnest(%s::text[]) AS k ORDER BY k COLLATE "C"
ON CONFLICT (key) DO UPDATE SET due = b.due
"""

# With the rows locked: the first instant every bucket allows, a token from each at
# that instant; per bucket its new due time and the wait, in seconds from now.
_TAKE = """
WITH now AS (SELECT clock_timestamp() AS t),
given AS (
    SELECT g.key, g.iv, greatest(b.due, now.t) AS due,
           greatest(b.due, now.t) - make_interval(secs => g.tol) AS earliest
    FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS g(key, iv, tol)
    JOIN {table} AS b ON b.key = g.key CROSS JOIN now
),
start AS (SELECT greatest(max(given.earliest), (SELECT t FROM now)) AS t FROM given),
taken AS (
    UPDATE {table} AS b SET due = greatest(g.due, start.t) + make_interval(secs => g.iv)
    FROM given AS g, start, now
    WHERE b.key = g.key AND start.t <= now.t + make_interval(secs => %s::float8)
    RETURNING b.key, b.due
)
SELECT given.key, extract(epoch FROM coalesce(taken.due, given.due) - now.t)::float8,
       extract(epoch FROM start.t - now.t)::float8, taken.key IS NOT NULL
FROM given LEFT JOIN taken ON taken.key = given.key CROSS JOIN start CROSS JOIN now
"""
# ``most`` for a reservation without one: far beyond any wait (an interval's bound).
_NO_MOST = 1e12

_FORGET = """
DELETE FROM {table} WHERE key IN (
    SELECT key FROM {table} WHERE key = ANY(%s::text[]) ORDER BY key FOR UPDATE
)
"""

_DEFER = """
INSERT INTO {table} AS b (key, due)
SELECT d.key, clock_timestamp() + make_interval(secs => d.secs)
FROM unnest(%s::text[], %s::float8[]) AS d(key, secs) ORDER BY d.key COLLATE "C"
ON CONFLICT (key) DO UPDATE SET due = greatest(b.due, EXCLUDED.due)
"""


def _stable(value: object) -> str:
    """A text of ``value`` that is the same in every process (no hash seeds, no ids)."""
    if isinstance(value, tuple | list):
        inner = ",".join(_stable(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(_stable(v) for v in value)) + "}"
    if value is None or isinstance(value, str | bytes | int | float):
        return f"{type(value).__name__}:{value!r}"
    return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


def bucket_digest(key: Hashable) -> str:
    """What is stored for a bucket key: 64 hex digits, the same in every process."""
    text = "cmtyflow.ratelimit:" + _stable(key)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _micros_up(seconds: float) -> float:
    """Rounded up to the microsecond timestamptz keeps: never a faster rate."""
    return math.ceil(seconds * 1e6 - 1e-6) / 1e6


def _micros_down(seconds: float) -> float:
    return math.floor(seconds * 1e6 + 1e-6) / 1e6


@dataclass(slots=True)
class _Change:
    """A queued write for one bucket: delete its row first, then hold it until ``until``
    (this process's monotonic clock)."""

    forget: bool = False
    until: float | None = None

    def then(self, later: _Change) -> _Change:
        if later.forget or later.until is None:
            return later
        until = later.until if self.until is None else max(self.until, later.until)
        return _Change(self.forget, until)


class _Down(Exception):
    """PostgreSQL cannot be used for this call (the reason was logged)."""


class PgRateLimiter:
    """``RateLimiter``'s buckets, shared through ``<schema>.rate_buckets``.

    ``timeout``: seconds for connecting and for any statement or lock wait (a
    reservation gives up after three times that, and falls back). ``retry_after``:
    seconds PostgreSQL is left alone after a failure."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        timeout: float = 5.0,
        retry_after: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        libpq_url, self.schema = split_schema(url, schema)
        self.url = mask_url(url)  # for messages: never the password
        if psycopg is None:
            raise UserError(
                f"{self.url}: shared rate limits need psycopg; install cmtyflow with the postgres extra: "
                "pip install 'cmtyflow[postgres]'"
            )
        self._secret = _password(url)
        try:
            given = psycopg.conninfo.conninfo_to_dict(libpq_url)
            extra = {"connect_timeout": str(max(1, math.ceil(timeout))), "application_name": "cmtyflow-ratelimit"}
            self._conninfo = psycopg.conninfo.make_conninfo(
                libpq_url, **{k: v for k, v in extra.items() if k not in given}
            )
        except psycopg.Error as exc:
            raise UserError(f"{self.url}: not a valid PostgreSQL URL: {_reason(exc, self._secret)}") from None
        self.timeout = timeout
        self.retry_after = retry_after
        self.local = RateLimiter(monotonic=monotonic, sleep=sleep)  # the fallback, and a mirror
        self.fallbacks = 0  # reservations the local limiter made because PostgreSQL failed
        self._monotonic = monotonic
        self._sleep = sleep
        self._table = sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(TABLE))
        self._prepared = False
        self._conn: Any = None
        self._conn_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._retry_at: float | None = None
        self._failing = False
        self._pending: dict[str, _Change] = {}
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PgRateLimiter({self.url!r}, schema={self.schema!r})"

    # ------------------------------------------------------------ the limiter

    async def reserve(self, *buckets: Bucket, most: float | None = None) -> float:
        """Take one token from every bucket; return the seconds to wait before sending.
        With ``most``, a wait longer than that takes nothing (and is returned): the
        tokens are taken when, and only when, the wait returned is at most ``most``."""
        if not buckets:
            return 0.0
        chosen: dict[str, tuple[Hashable, Limit]] = {}
        for key, limit in buckets:
            chosen.setdefault(bucket_digest(key), (key, limit))
        try:
            wait, taken, dues = await self._shared(lambda conn: self._take(conn, chosen, most))
        except _Down:
            self.fallbacks += 1
            return self.local.reserve(*buckets, most=most)
        for digest, due_in in dues:  # the local limiter follows the shared buckets
            self.local.follow(chosen[digest][0], due_in)
        wait = max(0.0, float(wait))
        if most is not None:
            # What PostgreSQL decided, in the returned figure (its rounding may differ).
            wait = min(wait, most) if taken else max(wait, math.nextafter(most, math.inf))
        return wait

    async def acquire(self, *buckets: Bucket, most: float | None = None) -> float:
        """Wait for a token from every bucket; return the seconds waited. With ``most``:
        raise ``WaitTooLong``, taking nothing, when the wait would be longer."""
        waited = 0.0
        while True:
            delay = await self.reserve(*buckets, most=most)
            if most is not None and delay > most:
                raise WaitTooLong(delay)
            if delay <= 0:
                return waited
            # When the token is due here; a millisecond more covers the clocks' rounding
            # between this process and PostgreSQL (a hold written before the reservation
            # ends by then).
            due = self._monotonic() + delay + 1e-3
            await self._sleep(delay)
            waited += delay
            if self.local.held_until(*buckets) <= due:
                return waited

    def defer(self, key: Hashable, seconds: float) -> None:
        """The platform asked us to hold off ``seconds`` on this bucket: here at once,
        in PostgreSQL as soon as it is written (see the module's rules). At most
        ``MAX_HOLD``, as ``RateLimiter.defer``."""
        if not seconds > 0:  # also NaN
            return
        seconds = min(seconds, MAX_HOLD)
        self.local.defer(key, seconds)
        self._queue(bucket_digest(key), _Change(until=self._monotonic() + seconds))
        self._write_soon()

    def forget(self, key: Hashable) -> None:
        self.local.forget(key)
        self._queue(bucket_digest(key), _Change(forget=True))
        self._write_soon()

    async def flush(self) -> bool:
        """Write the queued ``defer``/``forget`` calls now; False when PostgreSQL is
        unavailable (they stay queued)."""
        try:
            await self._shared(None)
        except _Down:
            return False
        return True

    async def aclose(self) -> None:
        """Write what is queued (when PostgreSQL answers) and close the connection."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done() and writer.get_loop() is asyncio.get_running_loop():
            await writer
        if self._pending:
            await self.flush()
        async with self._guard():
            await self._drop()

    # ------------------------------------------------------------ PostgreSQL

    async def _shared(self, op: Callable[[Any], Awaitable[Any]] | None) -> Any:
        """Run ``op`` on the connection after writing the queue, one call at a time;
        any failure becomes ``_Down`` (logged, then PostgreSQL rests ``retry_after``)."""
        async with self._guard():
            if self._retry_at is not None and self._monotonic() < self._retry_at:
                raise _Down
            try:
                async with asyncio.timeout(3 * self.timeout):
                    conn = await self._connection()
                    await self._write_queue(conn)
                    result = await op(conn) if op is not None else None
            except (psycopg.Error, OSError, TimeoutError, UserError) as exc:
                await self._drop()
                self._retry_at = self._monotonic() + self.retry_after
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "shared rate limits: %s unavailable (%s); each process limits its own sends "
                        "until it is back (tried again every %gs)", self.url, self._why(exc), self.retry_after,
                    )
                raise _Down from None
            except BaseException:  # cancelled: the connection may be mid-transaction
                await self._drop()
                raise
            self._retry_at = None
            if self._failing:
                self._failing = False
                log.warning("shared rate limits: %s is back", self.url)
            return result

    async def _take(
        self, conn: Any, chosen: dict[str, tuple[Hashable, Limit]], most: float | None
    ) -> tuple[float, bool, list[tuple[str, float]]]:
        """(the wait, whether the tokens were taken, each bucket's due time from now)."""
        digests = sorted(chosen)
        intervals = [_micros_up(chosen[d][1].interval) for d in digests]
        tolerances = [_micros_down((chosen[d][1].burst - 1) * chosen[d][1].interval) for d in digests]
        bound = _NO_MOST if most is None else max(0.0, most)
        async with conn.transaction():
            await conn.execute(sql.SQL(_LOCK).format(table=self._table), (digests,))
            cur = await conn.execute(
                sql.SQL(_TAKE).format(table=self._table), (digests, intervals, tolerances, bound)
            )
            rows = await cur.fetchall()
        if len(rows) != len(digests) or (most is None and not all(r[3] for r in rows)):
            # a row vanished under its lock: never expected
            raise psycopg.DataError("rate bucket rows missing after locking them")
        return float(rows[0][2]), bool(rows[0][3]), [(key, float(due_in)) for key, due_in, _, _ in rows]

    async def _write_queue(self, conn: Any) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            now = self._monotonic()
            forget = sorted(k for k, c in pending.items() if c.forget)
            hold = sorted((k, c.until - now) for k, c in pending.items() if c.until is not None and c.until > now)
            if forget:
                await conn.execute(sql.SQL(_FORGET).format(table=self._table), (forget,))
            if hold:
                await conn.execute(
                    sql.SQL(_DEFER).format(table=self._table), ([k for k, _ in hold], [s for _, s in hold])
                )
        except BaseException:
            for digest, change in pending.items():  # kept, before anything queued since
                later = self._pending.get(digest)
                self._pending[digest] = change.then(later) if later is not None else change
            raise

    def _queue(self, digest: str, change: _Change) -> None:
        earlier = self._pending.get(digest)
        self._pending[digest] = earlier.then(change) if earlier is not None else change

    def _write_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here: the next reserve writes the queue
            return
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._pending and await self.flush():
            pass

    def _guard(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._conn is not None and (self._conn_loop is not loop or self._conn.closed):
            await self._drop()
        if self._conn is not None:
            return self._conn
        if not self._prepared:
            await asyncio.to_thread(self._prepare)
            self._prepared = True
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            ms = max(1, round(self.timeout * 1000))
            await conn.execute(
                "SET TimeZone TO 'UTC'; SET synchronous_commit TO off; "
                f"SET statement_timeout TO {ms}; SET lock_timeout TO {ms}; "
                f"SET idle_in_transaction_session_timeout TO {ms}; "
                "SET tcp_keepalives_idle TO 30; SET tcp_keepalives_interval TO 10; SET tcp_keepalives_count TO 3"
            )
        except BaseException:
            await conn.close()
            raise
        self._conn, self._conn_loop = conn, loop
        return conn

    def _prepare(self) -> None:
        """The state schema migrated (as a store's open does), then the table if missing."""
        conn = connect(self._conninfo, self.schema, self.url)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, TABLE),))
                found = conn.execute(
                    "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s", (self.schema, TABLE)
                ).fetchone()
                if found is None:  # CREATE needs a privilege that using the table does not
                    conn.execute(sql.SQL(_CREATE).format(table=self._table))
        finally:
            conn.close()

    async def _drop(self) -> None:
        conn, self._conn, self._conn_loop = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, UserError):  # already masked; it names the URL too
            return str(exc).removeprefix(f"{self.url}: ")
        if isinstance(exc, TimeoutError):
            return f"no answer within {3 * self.timeout:g}s"
        return _reason(exc, self._secret)
