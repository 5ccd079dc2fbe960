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
  rate-limit header), ``defer`` holds that bucket back so the next sends wait too,
  for at most ``MAX_HOLD`` (a wait that is not a finite number of seconds is ignored).
  A send already asleep for a token it reserved before the hold checks again when it
  wakes, and waits for the hold (with a new token after it).
- ``acquire(..., most=N)`` takes the tokens only when they are due within N seconds:
  a longer wait takes nothing and raises ``WaitTooLong`` (with the wait), so that a
  caller can put the send off instead of sleeping (``HttpAdapter.request`` does, to
  keep a dispatcher worker free). ``reserve(..., most=N)`` is the same without the
  sleep: the tokens are taken when, and only when, the wait it returns is at most N.
- ``default_limiter()`` is this process's ``RateLimiter`` unless another ``Limiter``
  was installed with ``set_default_limiter`` (e.g. ``store.pg_ratelimit``'s, shared by
  every process through PostgreSQL). Adapters take the default when they are built,
  so it is installed before the channels are opened.
"""

from __future__ import annotations

import asyncio
import math
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

# The longest a platform's answer may hold a bucket back, and the longest rate-limit
# wait the dispatcher takes without counting an attempt (runtime/dispatch.py). No
# platform documents waits of more than hours (DingTalk blocks a robot for 10 minutes,
# Telegram's flood waits run to hours); a proxy's ``Retry-After`` date in 2100 or a
# mistyped number would otherwise block a destination for ever.
MAX_HOLD = 24 * 3600.0


class WaitTooLong(Exception):
    """``acquire(..., most=)``: the tokens are due later than ``most`` seconds from now
    (``wait``); none was taken."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the next token is due in {wait:g}s")
        self.wait = wait


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
        self._held: dict[Hashable, float] = {}  # bucket key -> end of a ``defer`` (monotonic)

    def reserve(self, *buckets: Bucket, most: float | None = None) -> float:
        """Take one token from every bucket; return the seconds to wait before sending.
        With ``most``, a wait longer than that takes nothing (and is returned)."""
        now, start = self._take(buckets, most)
        return start - now

    def _take(self, buckets: tuple[Bucket, ...], most: float | None) -> tuple[float, float]:
        """(now, the instant the tokens are due), taking them unless ``most`` says not."""
        now = self._monotonic()
        start = now
        held = self._held
        for key, limit in buckets:
            due = max(self._due.get(key, now), now)
            tolerance = (limit.burst - 1) * limit.interval
            start = max(start, due - tolerance)
            if held:
                until = held.get(key)
                if until is not None:
                    if until > now:
                        start = max(start, until)  # a hold is whole, whatever the burst
                    else:
                        del held[key]
        if most is not None and start - now > most:
            return now, start
        for key, limit in buckets:
            due = max(self._due.get(key, now), now)
            self._due[key] = max(due, start) + limit.interval
        return now, start

    async def acquire(self, *buckets: Bucket, most: float | None = None) -> float:
        """Wait for a token from every bucket; return the seconds waited. With ``most``:
        raise ``WaitTooLong``, taking nothing, when the wait would be longer. A hold
        (``defer``) that came while it slept, and lasts past the instant its token was
        due, is waited for too, with a new token after it."""
        waited = 0.0
        while True:
            now, start = self._take(buckets, most)
            delay = start - now
            if most is not None and delay > most:
                raise WaitTooLong(delay)
            if delay <= 0:
                return waited
            await self._sleep(delay)
            waited += delay
            if self.held_until(*buckets) <= start:
                return waited

    def held_until(self, *buckets: Bucket) -> float:
        """The instant (``monotonic``) the holds on these buckets end; -inf for none."""
        held = self._held
        if not held:
            return -math.inf
        return max((held.get(key, -math.inf) for key, _ in buckets), default=-math.inf)

    def defer(self, key: Hashable, seconds: float) -> None:
        """The platform asked us to hold off ``seconds`` on this bucket (at most
        ``MAX_HOLD``)."""
        if not seconds > 0:  # also NaN
            return
        until = self._monotonic() + min(seconds, MAX_HOLD)
        self._held[key] = max(self._held.get(key, until), until)
        self._due[key] = max(self._due.get(key, until), until)

    def follow(self, key: Hashable, seconds: float) -> None:
        """The bucket's next token is due in ``seconds`` at the earliest (as a limiter
        shared with other processes says): later reservations here start from then.
        Unlike ``defer``, not a hold: a token already reserved stands."""
        if not seconds > 0:
            return
        until = self._monotonic() + min(seconds, MAX_HOLD)
        self._due[key] = max(self._due.get(key, until), until)

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)
        self._held.pop(key, None)


class Limiter(Protocol):
    """What adapters use of a limiter: ``RateLimiter``, or one shared between processes."""

    async def acquire(self, *buckets: Bucket, most: float | None = None) -> float: ...

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
