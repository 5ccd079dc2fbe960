"""Dispatch: from due outbox rows to adapters, with retries (SPEC 5.2, 5.4).

Rules:
- Rows are claimed from the store (queued/failed -> inflight) in chunks and sent by a
  fixed number of workers (``concurrency``); the next chunk is claimed while the
  current one is being sent, so the workers never wait on the store.
- Outcomes are committed in groups (each delivery's new status is durable before the
  group's transaction ends; a crash before that leaves the row inflight, which the
  next start treats as in doubt).
- A non-urgent message to a member who has opted out is cancelled, not sent, however
  long it has been queued (SPEC 4, 5.2). The member's record is read once, when its
  row is claimed: the same read screens the opt-out and addresses the message.
- Failures: ``PermanentDeliveryError`` dead-letters at once. A rate limit (the
  platform's 429 or equivalent) waits at least as long as the platform asked and
  costs no attempt. Any other failure counts an attempt; after ``retry.attempts`` the
  message is dead; otherwise it is retried after an exponential backoff with jitter
  (``BACKOFF_BASE`` doubling per attempt, capped at ``retry.max_delay``), never
  sooner than a ``Retry-After`` the platform gave.
- In doubt (a row left inflight by a process that died): resent with the same key
  when the adapter deduplicates by key, when the send is urgent, or when the
  playbook says ``policies.in_doubt: resend``; otherwise held for ``cmtyflow outbox``.
- On stop, unstarted rows go back to the queue; sends in flight get ``drain`` seconds
  to finish and are then abandoned (their rows stay inflight: in doubt next start).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..adapters.base import (
    OutboundMessage,
    PermanentDeliveryError,
    Recipient,
    TransientDeliveryError,
)
from ..spec.duration import parse_duration
from ..spec.models import Policies
from ..store.base import OutboxRow, Store
from .channels import ChannelSet, OpenChannel

BACKOFF_BASE = 30.0  # seconds before the first retry; doubles per failed attempt
RATE_JITTER = 0.1  # a rate-limited retry waits up to 10% longer than asked
CHUNK = 1000  # rows claimed at a time
COMMIT_EVERY = 256  # outcomes per group commit (also committed when a chunk ends)

Log = Callable[..., None]
Member = Mapping[str, Any] | None  # a member's record as the store has it
Sendable = tuple[OutboxRow, Member, OpenChannel]  # a claimed row that may go, and where


def no_log(event: str, **fields: Any) -> None:
    return None


@dataclass
class DispatchStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0
    requeued: int = 0
    abandoned: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return self.sent + self.failed + self.dead + self.cancelled


def backoff(attempts: int, max_delay: float, rng: random.Random) -> float:
    """Delay before the retry that follows failed attempt number ``attempts`` (1-based):
    half of the capped exponential delay fixed, half random ("equal jitter")."""
    delay = min(max_delay, BACKOFF_BASE * 2 ** (attempts - 1))
    return float(delay / 2 + rng.uniform(0, delay / 2))


def recipient_of(member: Mapping[str, Any] | None, member_id: str) -> Recipient:
    if member is None:
        return Recipient(member_id)
    handles = {k: v for k, v in member.items() if isinstance(v, str) and k not in ("id", "name")}
    return Recipient(member_id, member.get("name") if isinstance(member.get("name"), str) else None, handles)


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

    # start-up ---------------------------------------------------------------------------------
    def recover_in_doubt(self) -> tuple[int, int]:
        """SPEC 5.2: (resent with the same key, held for the outbox).

        Rows to resend go from inflight straight back to the queue (one transaction)
        before the others are marked in doubt: a start that dies in between leaves them
        queued or still inflight for the next start, never in doubt for good (marking
        all first and requeuing after left them held if it died between the two)."""
        resend: list[str] = []
        for row in self.store.outbox(["inflight"]):
            m = row.message
            opened = self.channels.adapter_for(m.playbook, m.channel)
            policy = self.policies.get(m.playbook)
            idempotent = opened is not None and opened.capabilities.idempotent
            if idempotent or m.urgent or (policy is not None and policy.in_doubt == "resend"):
                resend.append(m.key)
        if resend:
            self.store.finish_messages([(key, "queued", {}) for key in resend])
            for key in resend:
                self.log("in_doubt_resent", key=key)
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

    async def run_due(self, until: datetime, *, drain: float = 10.0) -> DispatchStats:
        """Send every message due at or before ``until``; returns when none is left
        (or on stop). Retries that fall due meanwhile wait for the next call."""
        stats = DispatchStats()
        queue: asyncio.Queue[Sendable | None] = asyncio.Queue()
        low = self.concurrency * 2
        hungry = self._wake = asyncio.Event()
        hungry.set()
        left: list[str] = []

        async def worker() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if self.stopping:
                    left.append(item[0].message.key)
                    continue
                if queue.qsize() < low:
                    hungry.set()
                await self._send(*item, stats)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            while not self.stopping:
                await hungry.wait()
                hungry.clear()
                self._flush()
                if self.stopping or queue.qsize() >= low:
                    continue
                rows = self.store.claim_due_messages_with_members(until, CHUNK)
                for item in self._screen(rows, stats):
                    queue.put_nowait(item)
                if len(rows) < CHUNK:
                    break
            for _ in workers:
                queue.put_nowait(None)
            everything: asyncio.Future[Any] = asyncio.gather(*workers)
            stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({everything, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if not everything.done():
                # Stopping: sends in flight get ``drain`` seconds, then are abandoned.
                _, pending = await asyncio.wait(workers, timeout=drain)
                for task in pending:
                    task.cancel()
                await asyncio.gather(everything, return_exceptions=True)
                stats.abandoned = len(self._inflight)
                for key in sorted(self._inflight):
                    self.log("abandoned", key=key)
                self._inflight.clear()
            else:
                everything.result()
            if left:
                self.store.finish_messages([(key, "queued", {}) for key in left])
                stats.requeued += len(left)
        finally:
            for task in workers:
                if not task.done():
                    task.cancel()
            self._wake = None
            self._flush()
        return stats

    def _screen(self, rows: list[tuple[OutboxRow, Member]], stats: DispatchStats) -> list[Sendable]:
        """Rows that may go, each with its member's record (claimed with it) and its
        channel; the others are finished here (opted out, no channel)."""
        out: list[Sendable] = []
        adapter_for = self.channels.adapter_for
        for row, member in rows:
            m = row.message
            if member is not None and not m.urgent and member.get("opted_out"):
                self._results.append((m.key, "cancelled", {"last_error": "member opted out"}))
                stats.cancelled += 1
                self.log("cancelled", key=m.key, playbook=m.playbook, step=m.step, member=m.member, reason="opted out")
                continue
            opened = adapter_for(m.playbook, m.channel)
            if opened is None:
                self._results.append((m.key, "dead", {"last_error": f"channel '{m.channel}' is not configured", "attempts": row.attempts}))
                stats.dead += 1
                continue
            out.append((row, member, opened))
        return out

    async def _send(self, row: OutboxRow, member: Member, opened: OpenChannel, stats: DispatchStats) -> None:
        m = row.message
        outbound = OutboundMessage(
            key=m.key,
            channel=m.channel,
            text=m.text,
            format=m.format,
            recipient=recipient_of(member, m.member) if m.member is not None else None,
            urgent=m.urgent,
            playbook=m.playbook,
        )
        self._inflight.add(m.key)
        try:
            receipt = await opened.adapter.send(outbound)
        except asyncio.CancelledError:
            raise
        except PermanentDeliveryError as exc:
            self._inflight.discard(m.key)
            self._dead(row, str(exc), row.attempts + 1, stats)
            return
        except TransientDeliveryError as exc:
            self._inflight.discard(m.key)
            self._retry(row, exc, stats)
            return
        except Exception as exc:  # noqa: BLE001 - an adapter bug fails this message, not the runner
            self._inflight.discard(m.key)
            self._retry(row, TransientDeliveryError(f"{opened.adapter_name}: {type(exc).__name__}: {exc}"), stats)
            return
        self._inflight.discard(m.key)
        now = self.now()
        self._results.append((m.key, "sent", {"sent_at": now, "attempts": row.attempts + 1, "platform_id": receipt.platform_id, "last_error": None}))
        stats.sent += 1
        if not self._quiet:
            self.log("sent", key=m.key, playbook=m.playbook, flow=m.flow, step=m.step, channel=m.channel, adapter=m.adapter, member=m.member, to=m.to)
        if len(self._results) >= COMMIT_EVERY:
            self._flush()

    def _retry(self, row: OutboxRow, exc: TransientDeliveryError, stats: DispatchStats) -> None:
        m = row.message
        policy = self.policies.get(m.playbook)
        attempts_allowed = policy.retry.attempts if policy is not None else 5
        max_delay = parse_duration(policy.retry.max_delay).approx_seconds() if policy is not None else 600.0
        now = self.now()
        if exc.rate_limited:
            attempts = row.attempts
            wait = exc.retry_after if exc.retry_after is not None else backoff(1, max_delay, self.rng)
            delay = wait * (1 + self.rng.uniform(0, RATE_JITTER))
        else:
            attempts = row.attempts + 1
            if attempts >= attempts_allowed:
                self._dead(row, str(exc), attempts, stats)
                return
            delay = backoff(attempts, max_delay, self.rng)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
        when = now + timedelta(seconds=delay)
        self._results.append((m.key, "failed", {"attempts": attempts, "next_attempt": when, "last_error": str(exc)}))
        stats.failed += 1
        self.log("retry", key=m.key, playbook=m.playbook, step=m.step, member=m.member, attempts=attempts, next_attempt=when.isoformat(), error=str(exc))

    def _dead(self, row: OutboxRow, error: str, attempts: int, stats: DispatchStats) -> None:
        m = row.message
        self._results.append((m.key, "dead", {"attempts": attempts, "last_error": error}))
        stats.dead += 1
        self.log("dead", key=m.key, playbook=m.playbook, step=m.step, member=m.member, attempts=attempts, error=error)

    def _flush(self) -> None:
        if self._results:
            results, self._results = self._results, []
            self.store.finish_messages(results)
