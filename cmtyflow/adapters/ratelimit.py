"""Per-destination rate limits for adapters (issue 5: documented platform defaults).

Rules:
- A ``Limit`` is a token bucket: ``rate`` tokens per second, at most ``burst`` saved up.
  It is kept in its virtual-scheduling form (GCRA): each bucket remembers only the
  theoretical time its next token is due, so no task ever holds a lock and a bucket
  can be shared by every channel that reaches the same destination.
- One send may need tokens from several buckets at once (Telegram: the bot's 30/s
  and the chat's 20/min). ``reserve`` finds the first instant all of them allow,
  takes a token from each at that instant, and returns how long to wait for it.
- With ``burst=1`` a limit of N per window never lets more than N sends into any
  window of that length, which is what the per-minute robots (WeCom, DingTalk)
  count; their documented penalty for going over is a 10-minute block.
- Time comes from the injected ``monotonic`` and waiting from the injected
  ``sleep``, so tests drive it with a fake clock and never wait for real.
- When a platform says "slow down" (429, a rate-limit error code, or a depleted
  rate-limit header), ``defer`` pushes that bucket back so the next sends wait too.
- ``default_limiter()`` is this process's ``RateLimiter`` unless another ``Limiter``
  was installed with ``set_default_limiter`` (e.g. ``store.pg_ratelimit``'s, shared by
  every process through PostgreSQL). Adapters take the default when they are built,
  so it is installed before the channels are opened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # tokens per second
    burst: int = 1

    @classmethod
    def per(cls, count: int, seconds: float, burst: int = 1) -> Limit:
        return cls(rate=count / seconds, burst=burst)

    @property
    def interval(self) -> float:
        return 1.0 / self.rate


Bucket = tuple[Hashable, Limit]


class RateLimiter:
    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._monotonic = monotonic
        self._sleep = sleep
        self._due: dict[Hashable, float] = {}  # bucket key -> theoretical arrival time

    def reserve(self, *buckets: Bucket) -> float:
        """Take one token from every bucket; return the seconds to wait before sending."""
        now = self._monotonic()
        start = now
        for key, limit in buckets:
            due = max(self._due.get(key, now), now)
            tolerance = (limit.burst - 1) * limit.interval
            start = max(start, due - tolerance)
        for key, limit in buckets:
            due = max(self._due.get(key, now), now)
            self._due[key] = max(due, start) + limit.interval
        return start - now

    async def acquire(self, *buckets: Bucket) -> float:
        delay = self.reserve(*buckets)
        if delay > 0:
            await self._sleep(delay)
        return delay

    def defer(self, key: Hashable, seconds: float) -> None:
        """The platform asked us to hold off ``seconds`` on this bucket."""
        if seconds <= 0:
            return
        until = self._monotonic() + seconds
        self._due[key] = max(self._due.get(key, until), until)

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)


class Limiter(Protocol):
    """What adapters use of a limiter: ``RateLimiter``, or one shared between processes."""

    async def acquire(self, *buckets: Bucket) -> float: ...

    def defer(self, key: Hashable, seconds: float) -> None: ...

    def forget(self, key: Hashable) -> None: ...


_default: Limiter | None = None


def default_limiter() -> Limiter:
    """The process-wide limiter, so two channels that reach one destination share it."""
    global _default
    if _default is None:
        _default = RateLimiter()
    return _default


def set_default_limiter(limiter: Limiter | None) -> None:
    """Make ``limiter`` what ``default_limiter()`` returns (None: a new ``RateLimiter``
    on next use). Adapters built earlier keep the limiter they were given."""
    global _default
    _default = limiter


# Documented platform defaults (see docs/adapters.md for the sources).
SLACK_PER_CHANNEL = Limit.per(1, 1.0)  # chat.postMessage / incoming webhooks: ~1 msg/s
TELEGRAM_PER_BOT = Limit.per(30, 1.0)  # "no more than 30 messages per second" overall
TELEGRAM_PER_GROUP = Limit.per(20, 60.0)  # "no more than 20 messages per minute" in a group
TELEGRAM_PER_CHAT = Limit.per(1, 1.0)  # "avoid more than one message per second" in a chat
DISCORD_PER_WEBHOOK = Limit.per(5, 2.0)  # observed webhook bucket: 5 per 2 s (headers govern)
DISCORD_PER_CHANNEL = Limit.per(5, 5.0)  # observed message-create bucket per channel
DISCORD_PER_BOT = Limit.per(50, 1.0)  # documented global limit: 50 requests/s per bot
WECOM_PER_ROBOT = Limit.per(20, 60.0)  # group robot: 20 messages per minute
DINGTALK_PER_ROBOT = Limit.per(20, 60.0)  # custom robot: 20 per minute, else blocked 10 min
FEISHU_PER_MINUTE = Limit.per(100, 60.0)  # custom bot: 100 per minute ...
FEISHU_PER_SECOND = Limit.per(5, 1.0)  # ... and 5 per second
