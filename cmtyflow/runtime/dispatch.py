"""Dispatch: from due outbox rows to adapters, with retries (SPEC 5.2, 5.4).

Rules:
- Rows are claimed from the store (queued/failed -> inflight) in chunks and sent by a
  fixed number of workers (``concurrency``); the next chunk is claimed while the
  current one is being sent, so the workers never wait on the store.
- Outcomes are committed in groups of at most ``COMMIT_EVERY`` (each delivery's new
  status is durable before the group's transaction ends; a crash before that leaves
  the row inflight, which the next start treats as in doubt).
- The store is called from one thread at a time. A store that allows calls from any
  thread (``thread_safe``, as ``SqliteStore``) gets every claim and commit of a
  ``run_due`` on one thread of their own, in the order they are made, so that the
  database works while the event loop sends; a commit is not waited for, but at most
  ``BACKLOG`` groups wait for theirs while sends go on, and ``run_due`` returns only
  when all are done (a failed one raises). Any other store is called inline.
- A non-urgent message to a member who has opted out is cancelled, not sent, however
  long it has been queued (SPEC 4, 5.2). The member's record is read once, when its
  row is claimed: the same read screens the opt-out and addresses the message.
- Failures: ``PermanentDeliveryError`` dead-letters at once. A rate limit (the
  platform's 429 or equivalent) waits at least as long as the platform asked and
  costs no attempt, unless it asked for more than ``MAX_HOLD`` (24 h): then it counts
  an attempt and waits 24 h. Any other failure counts an attempt; after
  ``retry.attempts`` the message is dead; otherwise it is retried after an
  exponential backoff with jitter (``BACKOFF_BASE`` doubling per attempt, capped at
  ``retry.max_delay``), never sooner than a ``Retry-After`` the platform gave, up to
  ``retry.max_delay``. A message that the channel's own rate limit puts off before
  any request (``paced``, a wait longer than the adapter takes in place) is queued
  again for that time, not failed: nothing was tried.
- A send whose request was written and got no answer (a timeout, a dropped
  connection: ``InDoubtDeliveryError``) is in doubt too, and follows the same rule
  as a crash's, below: retried as any transient failure where a resend is allowed,
  otherwise held (status ``in_doubt``, the attempt counted).
- In doubt (a row left inflight by a process that died): resent with the same key
  when the adapter deduplicates by key, when the send is urgent, or when the
  playbook says ``policies.in_doubt: resend``; otherwise held for ``cmtyflow outbox``
  if its call to the platform had begun (``Store.mark_sending``, recorded just before
  the platform can see it, for adapters that do not deduplicate), and back to the
  queue if it had not (claimed, then the process died: the platform never saw it).
  Recording it is also where an opt-out made while the message waited (for a rate
  limit) cancels it.
- On stop, unstarted rows go back to the queue; sends in flight get ``drain`` seconds
  to finish and are then abandoned (their rows stay inflight: in doubt next start).
- With a ``budget`` (seconds), a call starts no send after that long: unstarted rows go
  back to the queue, as on stop, sends in flight finish, and the call returns
  (``DispatchStats.paused``), so that a runner handles the inputs that came meanwhile
  (a crisis during a large, rate-limited send) before it sends on.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..adapters.base import (
    BEFORE_WRITE,
    InDoubtDeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    Recipient,
    SendCancelled,
    TransientDeliveryError,
    one_line,
)
from ..adapters.ratelimit import MAX_HOLD
from ..spec.duration import parse_duration
from ..spec.models import Policies
from ..store.base import OutboxRow, Store
from .channels import ChannelSet, OpenChannel
from .collector import collecting_less

BACKOFF_BASE = 30.0  # seconds before the first retry; doubles per failed attempt
RATE_JITTER = 0.1  # a rate-limited retry waits up to 10% longer than asked
CHUNK = 1000  # rows claimed at a time
COMMIT_EVERY = 256  # outcomes per group commit (also committed when a chunk ends)
BACKLOG = 2  # groups of outcomes that may wait for their commit while sends go on
# Outcomes are committed at least this often (seconds), a group not yet full too: a
# process killed after the platform answered resends what it had not committed (a send
# job's 200 rows were committed only when it ended, and a kill resent them all).
COMMIT_WITHIN = 1.0
# The collector while ``run_due`` runs (``collector``): a claimed chunk is a few
# thousand objects alive until sent, all freed by reference counting. With Python's
# default (700, 10, 10) they were walked on their way to the oldest generation, about
# 10 us per message (bench/dispatch); the youngest generation now holds ten chunks.
GC_THRESHOLDS = (50_000, 10, 10)

Log = Callable[..., None]
Member = Mapping[str, Any] | None  # a member's record as the store has it
Sendable = tuple[OutboxRow, Member, OpenChannel]  # a claimed row that may go, and where


def no_log(event: str, /, **fields: Any) -> None:
    return None


@dataclass
class DispatchStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0
    requeued: int = 0
    paused: int = 0  # of ``requeued``: left for the next call when the budget was spent
    abandoned: int = 0
    held: int = 0  # in doubt (its request written, no answer) and held for `cmtyflow outbox`
    put_off: int = 0  # times a message was queued again for its channel's own rate limit, nothing tried (not in ``total``)
    by_status: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return self.sent + self.failed + self.dead + self.cancelled + self.held


def backoff(attempts: int, max_delay: float, rng: random.Random) -> float:
    """Delay before the retry that follows failed attempt number ``attempts`` (1-based):
    half of the capped exponential delay fixed, half random ("equal jitter")."""
    delay = min(max_delay, BACKOFF_BASE * 2 ** (attempts - 1))
    return float(delay / 2 + rng.uniform(0, delay / 2))


class Handles(Mapping[str, str]):
    """A member record's text fields but ``id`` and ``name`` (email, telegram, ...): the
    ``Recipient.handles`` the dispatcher passes, read from the record when asked (most
    adapters ask for one field or none, so no copy is made per message)."""

    __slots__ = ("_record",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record

    def __getitem__(self, key: str) -> str:
        value = self._record[key] if key != "id" and key != "name" else None
        if not isinstance(value, str):
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._record.get(key) if key != "id" and key != "name" else None
        return value if isinstance(value, str) else default

    def __iter__(self) -> Iterator[str]:
        return (k for k, v in self._record.items() if isinstance(v, str) and k != "id" and k != "name")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Handles({dict(self)!r})"


def resendable(row: OutboxRow, channels: ChannelSet, policies: Mapping[str, Policies]) -> bool:
    """SPEC 5.2: a row that may have been sent goes again under its key when the adapter
    deduplicates by key, the send is urgent, or the playbook says ``in_doubt: resend``."""
    m = row.message
    opened = channels.adapter_for(m.playbook, m.channel)
    policy = policies.get(m.playbook)
    idempotent = opened is not None and opened.capabilities.idempotent
    return bool(idempotent or m.urgent or (policy is not None and policy.in_doubt == "resend"))


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channels: ChannelSet,
        now: Callable[[], datetime],
        *,
        policies: Mapping[str, Policies],
        concurrency: int = 16,
        rng: random.Random | None = None,
        log: Log = no_log,
    ) -> None:
        self.store = store
        self.channels = channels
        self.now = now
        self.policies = policies
        self.concurrency = max(1, concurrency)
        self.rng = rng or random.Random()
        self.log = log
        self._quiet = log is no_log  # the per-message log calls are skipped
        self.stopping = False
        self._results: list[tuple[str, str, dict[str, Any]]] = []
        self._inflight: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._stopped = asyncio.Event()
        self.monotonic: Callable[[], float] = time.monotonic  # for ``budget`` (tests pass their own)

    # start-up ---------------------------------------------------------------------------------
    def recover_in_doubt(self) -> tuple[int, int]:
        """SPEC 5.2: (resent with the same key, held for the outbox).

        Rows to resend go from inflight straight back to the queue (one transaction)
        before the others are marked in doubt: a start that dies in between leaves them
        queued or still inflight for the next start, never in doubt for good (marking
        all first and requeuing after left them held if it died between the two)."""
        resend: list[str] = []
        for row in self.store.outbox(["inflight"]):
            if resendable(row, self.channels, self.policies):
                resend.append(row.message.key)
        if resend:
            self.store.finish_messages([(key, "queued", {}) for key in resend])
            for key in resend:
                self.log("in_doubt_resent", key=key)
        # Claimed and never started (the platform never saw them): back to the queue,
        # not held; then the rest, whose call had begun, are in doubt.
        unstarted = self.store.requeue_unstarted()
        if unstarted:
            self.log("unsent_requeued", count=unstarted)
        held = self.store.mark_in_doubt()
        for row in held:
            m = row.message
            self.log("in_doubt_held", key=m.key, playbook=m.playbook, step=m.step, channel=m.channel, member=m.member)
        if resend or held:
            self.store.record(self.now(), "in_doubt", resent=len(resend), held=len(held))
        return len(resend), len(held)

    # dispatch ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming; unstarted rows go back to the queue, sends in flight drain."""
        self.stopping = True
        self._stopped.set()
        if self._wake is not None:
            self._wake.set()

    async def run_due(self, until: datetime, *, drain: float = 10.0, budget: float | None = None) -> DispatchStats:
        """Send every message due at or before ``until``; returns when none is left
        (or on stop, or once ``budget`` seconds are spent). Retries that fall due
        meanwhile wait for the next call."""
        with collecting_less(GC_THRESHOLDS):
            return await self._run_due(until, drain, budget)

    async def _run_due(self, until: datetime, drain: float, budget: float | None) -> DispatchStats:
        stats = DispatchStats()
        monotonic = self.monotonic
        started = monotonic()
        deadline = None if budget is None else started + budget
        paused = False  # the budget is spent: start nothing more
        calls = _StoreCalls(self.store)
        todo: deque[Sendable] = deque()  # claimed rows not started yet, oldest first
        ready = asyncio.Event()  # rows in ``todo``, or no more will come
        claiming = True
        # Claim the next chunk when fewer rows than this wait (a claim on the store's
        # own thread takes a while, so more are kept ahead).
        low = self.concurrency * 2 if calls.inline else max(self.concurrency * 2, CHUNK // 2)
        hungry = self._wake = asyncio.Event()
        hungry.set()
        left: list[str] = []
        inflight = self._inflight
        results = self._results  # outcomes not committed yet (``_flush`` empties it in place)
        now = self.now
        outbound_of = self._outbound
        log_sent = None if self._quiet else self._log_sent
        commit_by = started + COMMIT_WITHIN  # when the outcomes so far are committed, however few

        async def worker() -> None:
            nonlocal commit_by
            try:
                while True:
                    if not todo:
                        if not claiming:
                            return
                        ready.clear()
                        await ready.wait()
                        continue
                    row, member, opened = todo.popleft()
                    key = row.message.key
                    clock = monotonic()  # read once a message: the budget, then the commit's time
                    if deadline is not None and not paused and clock >= deadline:
                        pause()
                    if self.stopping or paused:
                        left.append(key)
                        continue
                    if len(todo) < low:
                        hungry.set()
                    outbound = outbound_of(row, member)
                    inflight.add(key)
                    adapter = opened.adapter
                    try:
                        if adapter.capabilities.idempotent:  # resent under its key if in doubt: nothing to record
                            receipt = await adapter.send(outbound)
                        else:
                            receipt = await self._send_recorded(adapter, outbound, row, calls)
                    except SendCancelled:  # the member opted out or left while it waited
                        inflight.discard(key)
                        self._cancelled(row, stats, "opted out or left")
                        continue
                    except Exception as exc:  # noqa: BLE001 - an adapter bug fails this message, not the runner
                        inflight.discard(key)
                        self._failed(row, opened, exc, stats)
                        continue
                    inflight.discard(key)
                    # Sent: the delivery is recorded with the group's commit.
                    results.append((key, "sent", {"sent_at": now(), "attempts": row.attempts + 1, "platform_id": receipt.platform_id, "last_error": None}))
                    stats.sent += 1
                    if log_sent is not None:
                        log_sent(row, opened)
                    if len(results) >= COMMIT_EVERY or clock >= commit_by:
                        commit_by = clock + COMMIT_WITHIN
                        self._flush(calls)
                        await calls.settle(BACKLOG)
            except BaseException:
                hungry.set()  # the claiming loop raises what went wrong
                raise

        def pause() -> None:
            nonlocal paused
            paused = True
            hungry.set()  # the claiming loop ends

        ticker_failed: list[BaseException] = []

        async def ticker() -> None:
            """Commits what is answered at least every ``COMMIT_WITHIN`` seconds, also
            while every send in flight is slow (a worker commits only after a send)."""
            try:
                while True:
                    await asyncio.sleep(COMMIT_WITHIN)
                    if results:
                        self._flush(calls)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a failed commit: raised by ``run_due``
                ticker_failed.append(exc)
                hungry.set()

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        committer = asyncio.create_task(ticker())
        try:
            while not self.stopping and not paused:
                await hungry.wait()
                hungry.clear()
                if ticker_failed:
                    raise ticker_failed[0]
                for task in workers:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                self._flush(calls)
                if self.stopping or paused or len(todo) >= low:
                    continue
                rows = await calls.claim(until, CHUNK)
                todo.extend(self._screen(rows, stats))
                ready.set()
                if len(rows) < CHUNK:
                    break
                if len(todo) < low:  # a chunk that was mostly screened out: claim on
                    hungry.set()
            claiming = False
            ready.set()
            everything: asyncio.Future[Any] = asyncio.gather(*workers)
            # Seen even when this call is cancelled itself (the runner stopping), so that
            # asyncio does not report the workers' cancellation as never retrieved.
            everything.add_done_callback(lambda f: f.cancelled() or f.exception())
            stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
            try:
                # The committer ends only when a commit of its failed: then at once.
                await asyncio.wait({everything, stopped, committer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if ticker_failed:
                for task in workers:
                    task.cancel()
                await asyncio.gather(everything, return_exceptions=True)
                raise ticker_failed[0]  # the rows not committed stay inflight: in doubt at the next start
            if not everything.done():
                # Stopping: sends in flight get ``drain`` seconds, then are abandoned.
                _, pending = await asyncio.wait(workers, timeout=drain)
                for task in pending:
                    task.cancel()
                await asyncio.gather(everything, return_exceptions=True)
                # Rows no worker got to (each was busy with a send when the drain ended)
                # were never started: back to the queue, not left inflight (in doubt).
                left.extend(row.message.key for row, _, _ in todo)
                todo.clear()
                stats.abandoned = len(self._inflight)
                for key in sorted(self._inflight):
                    self.log("abandoned", key=key)
                self._inflight.clear()
            else:
                everything.result()
            committer.cancel()
            if ticker_failed:
                raise ticker_failed[0]
            if left:
                self._results.extend((key, "queued", {}) for key in left)
                stats.requeued += len(left)
                if paused and not self.stopping:
                    stats.paused += len(left)
            self._flush(calls)
            await calls.settle()
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            for task in workers:
                if not task.done():
                    task.cancel()
            self._wake = None
            calls.close()  # waits for the calls made (a failed commit was raised above)
            self._flush(calls)  # outcomes not committed yet (cancelled, failed): inline
        return stats

    def _screen(self, rows: list[tuple[OutboxRow, dict[str, Any] | None]], stats: DispatchStats) -> list[Sendable]:
        """Rows that may go, each with its member's record (claimed with it) and its
        channel; the others are finished here (opted out, no channel)."""
        out: list[Sendable] = []
        adapter_for = self.channels.adapter_for
        for row, member in rows:
            m = row.message
            if member is not None and not m.urgent and (member.get("opted_out") or member.get("left")):
                self._cancelled(row, stats, "opted out" if member.get("opted_out") else "left")
                continue
            opened = adapter_for(m.playbook, m.channel)
            if opened is None:
                self._results.append((m.key, "dead", {"last_error": f"channel '{m.channel}' is not configured", "attempts": row.attempts}))
                stats.dead += 1
                continue
            out.append((row, member, opened))
        return out

    async def _send_recorded(self, adapter: Any, outbound: OutboundMessage, row: OutboxRow, calls: _StoreCalls) -> Receipt:
        """``adapter.send``, with the moment the platform can first see the message
        recorded before it (``Store.mark_sending``): after a crash only such a message
        is in doubt (SPEC 5.2); one claimed and never started goes back to the queue.
        An adapter that waits for a rate limit records it after the wait
        (``about_to_write``), and a member who opted out meanwhile gets nothing."""
        m = row.message
        recorded = False

        async def record() -> None:
            nonlocal recorded
            if not recorded:
                if not await calls.mark_sending(m.key, m.member, m.urgent):
                    raise SendCancelled
                recorded = True

        token = BEFORE_WRITE.set(record)
        try:
            if not getattr(adapter, "marks_writes", False):
                await record()
            receipt: Receipt = await adapter.send(outbound)
            return receipt
        finally:
            BEFORE_WRITE.reset(token)

    def _cancelled(self, row: OutboxRow, stats: DispatchStats, why: str = "opted out") -> None:
        """The member opted out (or left): cancelled, not sent (when claimed, or just
        before its request is written)."""
        m = row.message
        self._results.append((m.key, "cancelled", {"last_error": f"member {why}"}))
        stats.cancelled += 1
        self.log("cancelled", key=m.key, playbook=m.playbook, step=m.step, member=m.member, reason=why)

    def _outbound(self, row: OutboxRow, member: Member) -> OutboundMessage:
        m = row.message
        member_id = m.member
        if member_id is None:
            recipient = None
        elif member is None:
            recipient = Recipient(member_id)
        else:
            name = member.get("name")
            recipient = Recipient(member_id, name if isinstance(name, str) else None, Handles(member))
        # key, channel, text, format, recipient, urgent, subject, alternatives, playbook
        return OutboundMessage(m.key, m.channel, m.text, m.format, recipient, m.urgent, None, {}, m.playbook)

    def _failed(self, row: OutboxRow, opened: OpenChannel, exc: Exception, stats: DispatchStats) -> None:
        if not isinstance(exc, (PermanentDeliveryError, TransientDeliveryError)):  # an adapter's bug
            exc = TransientDeliveryError(f"{opened.adapter_name}: {type(exc).__name__}: {exc}")
        # Kept and logged on one line, without the channel's secrets (a platform may echo
        # its token back in an error).
        error = one_line(str(exc))
        hide = getattr(opened.adapter, "redact", None)
        if callable(hide):
            error = hide(error)
        if isinstance(exc, PermanentDeliveryError):
            self._dead(row, error, row.attempts + 1, stats)
        elif isinstance(exc, InDoubtDeliveryError) and not resendable(row, self.channels, self.policies):
            self._held(row, error, stats)
        else:
            self._retry(row, exc, error, stats)

    def _held(self, row: OutboxRow, error: str, stats: DispatchStats) -> None:
        """SPEC 5.2: its request was written and no answer came; held for ``cmtyflow
        outbox`` (at most once), as a crash's in-doubt rows are."""
        m = row.message
        self._results.append((m.key, "in_doubt", {"attempts": row.attempts + 1, "last_error": error}))
        stats.held += 1
        self.log("in_doubt_held", key=m.key, playbook=m.playbook, step=m.step, channel=m.channel, member=m.member, error=error)

    def _log_sent(self, row: OutboxRow, opened: OpenChannel) -> None:
        # The adapter that sent it: a channel's adapter may have changed since the
        # message was queued (an edit), and the row keeps the one it was queued for.
        m = row.message
        self.log("sent", key=m.key, playbook=m.playbook, flow=m.flow, step=m.step, channel=m.channel,
                 adapter=opened.adapter_name, member=m.member, to=m.to)

    def _retry(self, row: OutboxRow, exc: TransientDeliveryError, error: str, stats: DispatchStats) -> None:
        m = row.message
        policy = self.policies.get(m.playbook)
        attempts_allowed = policy.retry.attempts if policy is not None else 5
        max_delay = parse_duration(policy.retry.max_delay).approx_seconds() if policy is not None else 600.0
        now = self.now()
        asked = exc.retry_after
        if asked is not None and not math.isfinite(asked):
            asked = math.inf  # NaN too: no wait a platform can mean
        if exc.rate_limited and (asked is None or asked <= MAX_HOLD):
            attempts = row.attempts
            wait = asked if asked is not None else backoff(1, max_delay, self.rng)
            delay = wait * (1 + self.rng.uniform(0, RATE_JITTER))
        else:
            if exc.rate_limited:  # a wait past the cap: an attempt, so that ``retry.attempts`` ends it
                error = f"{error} (asked to wait more than {MAX_HOLD / 3600:g} h: counted as a failed attempt)"
            attempts = row.attempts + 1
            if attempts >= attempts_allowed:
                self._dead(row, error, attempts, stats)
                return
            delay = backoff(attempts, max_delay, self.rng)
            if asked is not None:
                delay = max(delay, min(asked, MAX_HOLD if exc.rate_limited else max_delay))
        when = now + timedelta(seconds=delay)
        if exc.paced and attempts == row.attempts:
            # Pacing, not a failure: nothing was sent, so the row is queued again for
            # when the channel's rate limit lets it go (``outbox`` lists failures only;
            # ``status`` counts it as queued, and ``last_error`` says why it waits).
            self._results.append((m.key, "queued", {"next_attempt": when, "last_error": error}))
            stats.put_off += 1
            self.log("put_off", key=m.key, playbook=m.playbook, step=m.step, member=m.member, next_attempt=when.isoformat(), reason=error)
            return
        self._results.append((m.key, "failed", {"attempts": attempts, "next_attempt": when, "last_error": error}))
        stats.failed += 1
        self.log("retry", key=m.key, playbook=m.playbook, step=m.step, member=m.member, attempts=attempts, next_attempt=when.isoformat(), error=error)

    def _dead(self, row: OutboxRow, error: str, attempts: int, stats: DispatchStats) -> None:
        m = row.message
        self._results.append((m.key, "dead", {"attempts": attempts, "last_error": error}))
        stats.dead += 1
        self.log("dead", key=m.key, playbook=m.playbook, step=m.step, member=m.member, attempts=attempts, error=error)

    def _flush(self, calls: _StoreCalls) -> None:
        """Commit the outcomes so far, in groups of at most ``COMMIT_EVERY``."""
        if self._results:
            results = self._results[:]
            self._results.clear()  # in place: ``run_due``'s workers hold this list
            for at in range(0, len(results), COMMIT_EVERY):
                calls.commit(results[at : at + COMMIT_EVERY])


class _StoreCalls:
    """Where ``run_due`` makes its store calls: claims and group commits.

    For a ``thread_safe`` store, one thread of their own runs them in the order they
    are made: a claim is awaited; a commit is not (``settle`` waits for commits, and
    a failed commit raises there or at the next ``commit``); a commit, once made, is
    never cancelled (its sends happened). Any other store is called inline: a commit
    is done when ``commit`` returns. ``close`` waits for every call made; calls after
    it are made inline."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.inline = getattr(store, "thread_safe", False) is not True
        self._pool = None if self.inline else ThreadPoolExecutor(1, thread_name_prefix="cmtyflow-dispatch")
        self._commits: deque[Future[None]] = deque()  # made, oldest first, not yet seen done

    async def claim(self, until: datetime, limit: int) -> list[tuple[OutboxRow, dict[str, Any] | None]]:
        if self._pool is None:
            return self.store.claim_due_messages_with_members(until, limit)
        return await asyncio.wrap_future(self._pool.submit(self.store.claim_due_messages_with_members, until, limit))

    async def mark_sending(self, key: str, member: str | None, urgent: bool) -> bool:
        if self._pool is None:
            return self.store.mark_sending(key, member, urgent)
        return await asyncio.wrap_future(self._pool.submit(self.store.mark_sending, key, member, urgent))

    def commit(self, results: list[tuple[str, str, dict[str, Any]]]) -> None:
        if self._pool is None:
            self.store.finish_messages(results)
            return
        while self._commits and self._commits[0].done():
            self._commits.popleft().result()  # raises a failed commit's error
        self._commits.append(self._pool.submit(self.store.finish_messages, results))

    async def settle(self, most: int = 0) -> None:
        """Wait until at most ``most`` commits are still to be done."""
        while len(self._commits) > most:
            head = self._commits[0]
            # Shielded: a worker cancelled meanwhile (drain over) must not cancel it.
            await asyncio.shield(asyncio.wrap_future(head))
            if self._commits and self._commits[0] is head:
                self._commits.popleft()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
