"""The dispatcher and the waits platforms ask for (runtime/dispatch.py): a robot held
for 10 minutes does not hold the workers (its messages are put off, not slept on,
and the other channels go); a rate limit asking for more than a day counts attempts,
so that ``retry.attempts`` ends it; a 5xx's ``Retry-After`` is capped at
``retry.max_delay``. Real adapters against loopback fakes; the limiter's clock is a
fake one (nothing waits for real)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from cmtyflow.adapters.dingtalk import DingtalkAdapter, DingtalkSettings
from cmtyflow.adapters.ratelimit import RateLimiter
from cmtyflow.adapters.slack import SlackAdapter, SlackSettings
from cmtyflow.adapters.telegram import TelegramAdapter, TelegramSettings
from cmtyflow.adapters.webhook import WebhookAdapter, WebhookSettings
from cmtyflow.engine.model import Decision, QueuedMessage
from cmtyflow.runtime.channels import OpenChannel
from cmtyflow.runtime.dispatch import Dispatcher
from cmtyflow.runtime.runner import summary
from cmtyflow.spec.models import Policies, Retry
from cmtyflow.store.memory import MemoryStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
YEAR_2100 = "Fri, 31 Dec 2100 23:59:59 GMT"


class Clock:
    """The limiter's monotonic time, moved only by its sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Channels:
    def __init__(self, **adapters: Any) -> None:
        self.opened = {name: OpenChannel(name, a.name, a, a.capabilities) for name, a in adapters.items()}

    def adapter_for(self, playbook: str, channel: str) -> OpenChannel | None:
        return self.opened.get(channel)


def queue(store: MemoryStore, key: str, channel: str, adapter: str, at: datetime = T0, urgent: bool = False) -> None:
    store.apply(Decision(messages=[QueuedMessage(key, "pb", "r1", "f", "s", 1, channel, adapter, None, "channel",
                                                 "hi", "plain", None, urgent, at, at)]))


def rows(store: MemoryStore) -> dict[str, tuple[str, int, datetime | None, str | None]]:
    return {r.message.key: (r.status, r.attempts, r.next_attempt, r.last_error) for r in store.outbox()}


async def serve(aiohttp_server: Any, handler: Any) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def test_a_robot_held_ten_minutes_does_not_hold_the_workers(aiohttp_server: Any) -> None:
    """A DingTalk robot answers 130101 (blocked 10 minutes). Its other messages are put
    off for the hold, without a request, without an attempt and without a worker
    asleep; the Telegram message queued behind them goes in the same pass. (The
    second robot message may go before the first's answer: its 3 s on the fake clock
    pass at once.)"""
    robot_calls: list[str] = []
    telegram_calls: list[str] = []

    async def robot(request: web.Request) -> web.Response:
        robot_calls.append(await request.text())
        return web.json_response({"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"})

    async def telegram(request: web.Request) -> web.Response:
        telegram_calls.append(await request.text())
        return web.json_response({"ok": True, "result": {"message_id": 7}})

    robot_base = await serve(aiohttp_server, robot)
    telegram_base = await serve(aiohttp_server, telegram)
    clock = Clock()
    limiter = RateLimiter(monotonic=clock.monotonic, sleep=clock.sleep)
    ding = DingtalkAdapter(DingtalkSettings(webhook_url=f"{robot_base}/robot/send?access_token=" + "a" * 64), limiter=limiter)
    tg = TelegramAdapter(TelegramSettings(token="1:" + "b" * 35, chat_id="-1001", api_base=telegram_base), limiter=limiter)
    store = MemoryStore()
    for i in range(40):
        queue(store, f"d{i:02d}", "group", "dingtalk", T0 + timedelta(seconds=i))
    queue(store, "t0", "dm", "telegram", T0 + timedelta(seconds=50))
    now = T0 + timedelta(minutes=1)
    try:
        stats = await Dispatcher(store, Channels(group=ding, dm=tg), lambda: now, policies={}, concurrency=2).run_due(now)
    finally:
        await ding.close()
        await tg.close()
    assert len(robot_calls) <= 2 and len(telegram_calls) == 1
    assert stats.sent == 1 and stats.failed == len(robot_calls) and stats.put_off == 40 - len(robot_calls)
    assert max(clock.slept, default=0.0) <= 5.0  # no worker slept through the block
    found = rows(store)
    assert found["t0"][0] == "sent"
    robot = [found[f"d{i:02d}"] for i in range(40)]
    assert all(attempts == 0 for _, attempts, _, _ in robot)
    # Refused by the platform: failed (no attempt counted); put off by the limiter
    # before any request: queued again for the hold, with why it waits.
    assert sum(status == "failed" for status, _, _, _ in robot) == len(robot_calls)
    put_off = [row for row in robot if row[3] == "dingtalk: waiting for 127.0.0.1's rate limit, 600s"]
    assert len(put_off) == 40 - len(robot_calls)
    assert all(status == "queued" and at is not None and at >= now + timedelta(seconds=590) for status, _, at, _ in put_off)
    assert [r.message.key for r in store.outbox(["failed"])] == [f"d{i:02d}" for i in range(len(robot_calls))]
    assert summary("done", 0, 0, stats, False).endswith(f"messages put off {stats.put_off} times for a channel's rate limit")
    assert all(at is not None and at >= now + timedelta(seconds=599) for _, _, at, _ in robot)


async def test_a_rate_limit_asking_for_years_counts_attempts_until_dead(aiohttp_server: Any) -> None:
    async def limited(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=429, text="rate limited", headers={"Retry-After": YEAR_2100})

    base = await serve(aiohttp_server, limited)
    clock = Clock()
    limiter = RateLimiter(monotonic=clock.monotonic, sleep=clock.sleep)
    adapter = SlackAdapter(SlackSettings(webhook_url=f"{base}/services/T0/B0/" + "X" * 24), limiter=limiter)
    store = MemoryStore()
    queue(store, "k1", "general", "slack")
    policies = {"pb": Policies(retry=Retry(attempts=2, max_delay="10m"))}
    try:
        await Dispatcher(store, Channels(general=adapter), lambda: T0, policies=policies).run_due(T0)
        status, attempts, at, error = rows(store)["k1"]
        assert (status, attempts) == ("failed", 1)
        assert at == T0 + timedelta(hours=24)
        assert error is not None and error.endswith("(asked to wait more than 24 h: counted as a failed attempt)")
        later = T0 + timedelta(hours=25)
        clock.now += 25 * 3600  # the bucket's hold (a day at most) is over
        await Dispatcher(store, Channels(general=adapter), lambda: later, policies=policies).run_due(later)
    finally:
        await adapter.close()
    status, attempts, _, _ = rows(store)["k1"]
    assert (status, attempts) == ("dead", 2)


@pytest.mark.parametrize("retry_after", ["864000", YEAR_2100])
async def test_a_5xx_retry_after_is_capped_at_max_delay(aiohttp_server: Any, retry_after: str) -> None:
    async def down(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="down", headers={"Retry-After": retry_after})

    base = await serve(aiohttp_server, down)
    adapter = WebhookAdapter(WebhookSettings(url=f"{base}/hook"))
    store = MemoryStore()
    queue(store, "k1", "hook", "webhook")
    policies = {"pb": Policies(retry=Retry(attempts=5, max_delay="10m"))}
    try:
        await Dispatcher(store, Channels(hook=adapter), lambda: T0, policies=policies).run_due(T0)
    finally:
        await adapter.close()
    status, attempts, at, _ = rows(store)["k1"]
    assert (status, attempts) == ("failed", 1)
    assert at is not None and at <= T0 + timedelta(minutes=10)


async def test_a_dingtalk_webhook_that_always_redirects_ends_dead(aiohttp_server: Any) -> None:
    """A redirect was taken for the robot's 10-minute block: retried for ever, never
    costing an attempt. Now each try counts, and ``retry.attempts`` ends it."""
    calls: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=301, headers={"Location": "https://oapi.dingtalk.com/robot/send?access_token=abc123"})

    base = await serve(aiohttp_server, moved)
    clock = Clock()
    limiter = RateLimiter(monotonic=clock.monotonic, sleep=clock.sleep)
    adapter = DingtalkAdapter(DingtalkSettings(webhook_url=f"{base}/robot/send?access_token=" + "a" * 64), limiter=limiter)
    store = MemoryStore()
    queue(store, "k1", "group", "dingtalk")
    policies = {"pb": Policies(retry=Retry(attempts=2, max_delay="10m"))}
    try:
        await Dispatcher(store, Channels(group=adapter), lambda: T0, policies=policies).run_due(T0)
        status, attempts, at, error = rows(store)["k1"]
        assert (status, attempts, at) == ("failed", 1, T0 + timedelta(minutes=10))
        assert error == "dingtalk: HTTP 301 redirect to https://oapi.dingtalk.com; check webhook_url if this lasts"
        later = T0 + timedelta(minutes=11)
        clock.now += 660
        await Dispatcher(store, Channels(group=adapter), lambda: later, policies=policies).run_due(later)
    finally:
        await adapter.close()
    assert rows(store)["k1"][:2] == ("dead", 2) and len(calls) == 2


@pytest.mark.parametrize(
    ("urgent", "in_doubt", "expected"),
    [(False, "hold", "in_doubt"), (True, "hold", "failed"), (False, "resend", "failed")],
    ids=["held", "urgent-resent", "policy-resend"],
)
async def test_no_answer_after_the_request_was_written_is_in_doubt(
    aiohttp_server: Any, urgent: bool, in_doubt: str, expected: str
) -> None:
    """Telegram got the message and answered too late (SPEC 5.2): held for `cmtyflow
    outbox`, as after a crash, and not sent twice; resent when urgent or when the
    playbook says `in_doubt: resend`."""
    got: list[str] = []
    release = asyncio.Event()

    async def late(request: web.Request) -> web.Response:
        got.append(await request.text())
        await release.wait()
        return web.json_response({"ok": True, "result": {"message_id": len(got)}})

    base = await serve(aiohttp_server, late)
    adapter = TelegramAdapter(TelegramSettings(token="1:" + "b" * 35, chat_id="-1001", api_base=base),
                              timeout=0.3, limiter=RateLimiter())
    store = MemoryStore()
    queue(store, "k1", "group", "telegram", urgent=urgent)
    policies = {"pb": Policies(in_doubt=in_doubt)}
    logged: list[str] = []
    try:
        stats = await Dispatcher(store, Channels(group=adapter), lambda: T0, policies=policies,
                                 log=lambda event, **fields: logged.append(event)).run_due(T0)
    finally:
        release.set()
        await adapter.close()
    status, attempts, _, error = rows(store)["k1"]
    assert (status, attempts) == (expected, 1) and len(got) == 1
    assert error is not None and "after the message was sent; it may have arrived" in error
    assert (stats.held, "in_doubt_held" in logged) == ((1, True) if expected == "in_doubt" else (0, False))
