from __future__ import annotations

import pytest
from platform_fakes import FakeClock

from cmtyflow.adapters.ratelimit import (
    DINGTALK_PER_ROBOT,
    DISCORD_PER_WEBHOOK,
    FEISHU_PER_MINUTE,
    FEISHU_PER_SECOND,
    TELEGRAM_PER_BOT,
    TELEGRAM_PER_GROUP,
    Limit,
    RateLimiter,
)


def delays(limiter: RateLimiter, clock: FakeClock, n: int, *buckets: object) -> list[float]:
    """Reserve ``n`` sends at the current instant; the waits each would get."""
    return [round(limiter.reserve(*buckets), 6) for _ in range(n)]  # type: ignore[arg-type]


def test_burst_then_steady_rate(clock: FakeClock, limiter: RateLimiter) -> None:
    limit = Limit(rate=2.0, burst=3)
    assert delays(limiter, clock, 5, ("k", limit)) == [0, 0, 0, 0.5, 1.0]


def test_tokens_refill_with_time(clock: FakeClock, limiter: RateLimiter) -> None:
    limit = Limit.per(1, 1.0)
    assert limiter.reserve(("k", limit)) == 0
    clock.now += 0.4
    assert limiter.reserve(("k", limit)) == pytest.approx(0.6)
    clock.now += 10
    assert limiter.reserve(("k", limit)) == 0


def test_buckets_are_per_key(clock: FakeClock, limiter: RateLimiter) -> None:
    limit = Limit.per(1, 1.0)
    assert delays(limiter, clock, 2, ("a", limit)) == [0, 1.0]
    assert delays(limiter, clock, 1, ("b", limit)) == [0]


def test_window_safe_defaults_never_exceed_the_documented_count(clock: FakeClock) -> None:
    # Send as fast as allowed for 10 minutes; count sends in every sliding window.
    for limit, count, window in [
        (DINGTALK_PER_ROBOT, 20, 60.0),
        (DISCORD_PER_WEBHOOK, 5, 2.0),
        (TELEGRAM_PER_GROUP, 20, 60.0),
        (TELEGRAM_PER_BOT, 30, 1.0),
    ]:
        limiter = RateLimiter(monotonic=clock.monotonic, sleep=clock.sleep)
        start = clock.now
        times = []
        while clock.now - start < 600:
            clock.now += limiter.reserve(("robot", limit))
            times.append(clock.now)
        end = 0
        for i, t in enumerate(times):  # two pointers: sends in [t, t + window)
            while end < len(times) and times[end] < t + window - 1e-6:  # float rounding
                end += 1
            assert end - i <= count


def test_several_buckets_wait_for_the_slowest(clock: FakeClock, limiter: RateLimiter) -> None:
    minute, second = (("bot", "m"), FEISHU_PER_MINUTE), (("bot", "s"), FEISHU_PER_SECOND)
    assert delays(limiter, clock, 3, minute, second) == [0, 0.6, 1.2]


def test_a_shared_bucket_slows_every_destination(clock: FakeClock, limiter: RateLimiter) -> None:
    bot = ("bot", Limit.per(2, 1.0))
    assert limiter.reserve(bot, ("chat-a", Limit.per(1, 60.0))) == 0
    assert limiter.reserve(bot, ("chat-b", Limit.per(1, 60.0))) == pytest.approx(0.5)
    assert limiter.reserve(bot, ("chat-a", Limit.per(1, 60.0))) == pytest.approx(60.0)


def test_defer_pushes_the_bucket_back(clock: FakeClock, limiter: RateLimiter) -> None:
    limit = Limit.per(10, 1.0)
    limiter.defer("k", 30)
    assert limiter.reserve(("k", limit)) == pytest.approx(30)
    limiter.defer("k", 5)  # a shorter hint never shortens an earlier one
    assert limiter.reserve(("k", limit)) == pytest.approx(30.1)
    limiter.forget("k")
    assert limiter.reserve(("k", limit)) == 0


async def test_acquire_sleeps_on_the_injected_clock(clock: FakeClock, limiter: RateLimiter) -> None:
    limit = Limit.per(1, 3.0)
    for _ in range(3):
        await limiter.acquire(("k", limit))
    assert clock.slept == [3.0, 3.0]
    assert clock.now == 1006.0
