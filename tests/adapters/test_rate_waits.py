"""How long a rate limit holds a send back, and where it waits (adapters.ratelimit,
adapters._http): a platform's wait is capped at ``MAX_HOLD``; a send waits in place
only for a short time (``MAX_WAIT_IN_WORKER``) and is put off otherwise, taking no
token; a send asleep for its token waits for a hold that came meanwhile. The
limiter's clock is a fake one: nothing here waits for real."""

from __future__ import annotations

import math
from typing import Any

import pytest
from aiohttp import web
from platform_fakes import DingtalkFake, FakeClock, SlackFake

from cmtyflow.adapters._http import parse_retry_after
from cmtyflow.adapters.base import OutboundMessage, TransientDeliveryError
from cmtyflow.adapters.ratelimit import Limit, RateLimiter

EVERY_3S = Limit.per(1, 3.0)


def message() -> OutboundMessage:
    return OutboundMessage(key="k1", channel="chan", text="你好")


# the cap -----------------------------------------------------------------------------------------


def test_a_hold_is_capped_at_a_day_and_a_wait_that_is_not_a_number_is_ignored(
    clock: FakeClock, limiter: RateLimiter
) -> None:
    limiter.defer("hook", 2.3e9)  # Retry-After: a date in 2100
    assert limiter.reserve(("hook", EVERY_3S)) == pytest.approx(24 * 3600)
    limiter.defer("other", math.inf)
    assert limiter.reserve(("other", EVERY_3S)) == pytest.approx(24 * 3600)
    limiter.defer("third", math.nan)
    assert limiter.reserve(("third", EVERY_3S)) == 0


def test_retry_after_that_is_not_a_finite_number_is_ignored() -> None:
    assert parse_retry_after("inf") is None
    assert parse_retry_after("1e400") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("120") == 120.0


async def test_a_429_asking_for_years_holds_the_next_send_a_day_at_most(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = SlackFake()
    adapter = await adapter_for("slack", fake, lambda b, f: {"webhook_url": b + f.hook_path})
    fake.then(lambda rec: web.Response(status=429, text="rate limited", headers={"Retry-After": "Fri, 31 Dec 2100 23:59:59 GMT"}))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(message())
    with pytest.raises(TransientDeliveryError) as held:
        await adapter.send(message())
    assert held.value.rate_limited and held.value.retry_after == pytest.approx(24 * 3600)
    assert len(fake.requests) == 1


# waiting in place, or put off ----------------------------------------------------------------------


async def test_acquire_with_most_takes_nothing_when_the_wait_is_longer(clock: FakeClock, limiter: RateLimiter) -> None:
    from cmtyflow.adapters.ratelimit import WaitTooLong

    assert await limiter.acquire(("robot", EVERY_3S), most=5) == 0
    assert await limiter.acquire(("robot", EVERY_3S), most=5) == 3.0  # 3 s: waited in place
    with pytest.raises(WaitTooLong) as caught:
        await limiter.acquire(("robot", EVERY_3S), most=2)
    assert caught.value.wait == pytest.approx(3.0)
    assert limiter.reserve(("robot", EVERY_3S), most=2) == pytest.approx(3.0)  # nothing taken either
    assert limiter.reserve(("robot", EVERY_3S)) == pytest.approx(3.0)  # the slot is still free
    assert clock.slept == [3.0]


async def test_a_sleeper_waits_for_a_hold_that_came_while_it_slept(clock: FakeClock) -> None:
    """A token reserved for t+3 s; a 429 holds the bucket 10 s meanwhile: the sleeper
    does not go at t+3 s, inside the hold, but after it."""
    holds: list[float] = [10.0]

    async def sleep(seconds: float) -> None:
        if holds:
            limiter.defer("robot", holds.pop())  # another send's 429, while this one sleeps
        await clock.sleep(seconds)

    limiter = RateLimiter(monotonic=clock.monotonic, sleep=sleep)
    start = clock.now
    limiter.reserve(("robot", EVERY_3S))
    await limiter.acquire(("robot", EVERY_3S))
    assert clock.now - start == pytest.approx(10.0) and clock.slept == [3.0, pytest.approx(7.0)]


async def test_a_hold_made_before_the_reservation_is_not_waited_twice(clock: FakeClock, limiter: RateLimiter) -> None:
    limiter.defer("robot", 4.0)
    assert await limiter.acquire(("robot", EVERY_3S)) == 4.0
    assert clock.slept == [4.0]


async def test_a_robot_held_for_ten_minutes_puts_the_next_send_off_without_a_request(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = DingtalkFake(secret=None)
    adapter = await adapter_for(
        "dingtalk", fake, lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}"}
    )
    fake.then(fake.code(130101, "send too fast, exceed 20 times per minute"))
    with pytest.raises(TransientDeliveryError, match="130101") as refused:
        await adapter.send(message())
    assert not refused.value.paced  # the platform refused it: a request was made
    with pytest.raises(TransientDeliveryError) as held:
        await adapter.send(message())
    assert str(held.value) == "dingtalk: waiting for 127.0.0.1's rate limit, 600s"
    assert held.value.rate_limited and held.value.paced and held.value.retry_after == pytest.approx(600)
    assert len(fake.requests) == 1 and clock.slept == []
    clock.now += 600
    await adapter.send(message())
    assert len(fake.requests) == 2


async def test_sends_a_few_seconds_apart_still_wait_in_place(adapter_for: Any, clock: FakeClock) -> None:
    """20 a minute: the second send waits its 3 s in the send; the third, 6 s away, is
    put off."""
    fake = DingtalkFake(secret=None)
    adapter = await adapter_for(
        "dingtalk", fake, lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}"}
    )
    await adapter.send(message())
    limiter = adapter.limiter
    limiter.reserve((("dingtalk", adapter.settings.webhook_url.get_secret_value()), Limit.per(20, 60.0)))
    with pytest.raises(TransientDeliveryError, match="rate limit, 6s") as held:
        await adapter.send(message())
    assert held.value.retry_after == pytest.approx(6.0)
    clock.now += 3
    await adapter.send(message())
    assert clock.slept == [pytest.approx(3.0)] and len(fake.requests) == 2
