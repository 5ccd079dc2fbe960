"""Rate limits shared through PostgreSQL (store.pg_ratelimit): several limiters (as
several processes have, each with its own connection) together stay within one limit;
buckets are taken atomically; deferrals reach the other processes; only digests of
keys are stored; a database that fails costs no send.

Waits are checked as returned by ``reserve`` (nobody sleeps): reservations made at
once get the slots of one schedule, each wait short by at most the real time that
passed since the first reservation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cmtyflow.adapters.base import OutboundMessage
from cmtyflow.adapters.ratelimit import (
    DISCORD_PER_WEBHOOK,
    WECOM_PER_ROBOT,
    Limit,
    RateLimiter,
    default_limiter,
    set_default_limiter,
)

psycopg = pytest.importorskip("psycopg")

from cmtyflow.store.pg_connect import split_schema  # noqa: E402
from cmtyflow.store.pg_ratelimit import PgRateLimiter, bucket_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PER_SECOND = Limit.per(1, 1.0)
SLACK_HOOK = ("slack", "webhook", "https://hooks.slack.com/services/T0001/B0001/s3cretHookToken")


@pytest.fixture
async def limiters(pg_url: str) -> AsyncIterator[Callable[..., PgRateLimiter]]:
    """``limiters(**kw)``: a new PgRateLimiter on the test's schema (a connection of
    its own, as another process would have); all are closed at the end."""
    made: list[PgRateLimiter] = []

    def make(url: str | None = None, **kw: Any) -> PgRateLimiter:
        limiter = PgRateLimiter(url or pg_url, **kw)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


def rows(pg_url: str) -> list[tuple[Any, ...]]:
    url, schema = split_schema(pg_url)
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(f"SELECT key, due FROM {schema}.rate_buckets ORDER BY key").fetchall()


async def warm(*limiters: PgRateLimiter) -> None:
    """Connected (and the table made), so the reservations under test are quick."""
    for i, limiter in enumerate(limiters):
        assert await limiter.reserve((("warm-up", i), PER_SECOND)) == 0


async def at_once(calls: list[tuple[PgRateLimiter, tuple[Any, ...]]]) -> tuple[list[float], float]:
    """Run the reservations concurrently; (their waits in call order, seconds it took)."""
    start = time.monotonic()
    waits = await asyncio.gather(*(limiter.reserve(*buckets) for limiter, buckets in calls))
    return list(waits), time.monotonic() - start


def due(wait: float, slot: float, since: float) -> bool:
    """``wait`` is ``slot`` seconds after ``since`` (a monotonic instant taken before the
    reservation that fixed the schedule), asked for at most the time since then later."""
    return slot - (time.monotonic() - since) - 1e-3 <= wait <= slot + 1e-3


def assert_schedule(waits: list[float], expected: list[float], elapsed: float) -> None:
    """Sorted, the waits are the expected slots, each early by at most ``elapsed``."""
    for got, slot in zip(sorted(waits), expected, strict=True):
        assert slot - elapsed - 1e-3 <= got <= slot + 1e-3, (sorted(waits), expected, elapsed)


# one limit across processes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "n", "expected", "window", "most"),
    [
        (PER_SECOND, 10, [float(k) for k in range(10)], 1.0, 1),  # 10 at once on 1/s: 0, 1, ..., 9 s
        (DISCORD_PER_WEBHOOK, 20, [0.4 * k for k in range(20)], 2.0, 5),  # 5 per 2 s, no burst
        (Limit.per(5, 2.0, burst=5), 12, [0.0] * 5 + [0.4 * k for k in range(1, 8)], 0.4, 5),  # 5 at once
    ],
    ids=["1-per-s", "5-per-2s", "burst-5"],
)
async def test_two_limiters_share_one_bucket(
    limiters: Callable[..., PgRateLimiter], limit: Limit, n: int, expected: list[float], window: float, most: int
) -> None:
    a, b = limiters(), limiters()
    await warm(a, b)
    waits, elapsed = await at_once([(a if i % 2 else b, ((("robot", 1), limit),)) for i in range(n)])
    assert_schedule(waits, expected, elapsed)
    # Together, no more than one process alone may send: at most ``most`` sends
    # surely fall in the first ``window`` seconds.
    assert sum(1 for w in waits if w < window - elapsed) <= most


async def test_a_process_that_sent_alone_slows_the_other(limiters: Callable[..., PgRateLimiter]) -> None:
    a, b = limiters(), limiters()
    await warm(a, b)
    since = time.monotonic()
    waits = [await a.reserve((SLACK_HOOK, PER_SECOND)) for _ in range(3)]
    assert all(due(w, slot, since) for w, slot in zip(waits, [0, 1, 2], strict=True)), waits
    assert due(await b.reserve((SLACK_HOOK, PER_SECOND)), 3, since)
    assert await b.reserve((("another", "hook"), PER_SECOND)) == 0  # buckets are per key


# several buckets at once ---------------------------------------------------------------------------


async def test_several_buckets_take_a_token_from_each_atomically(
    limiters: Callable[..., PgRateLimiter], pg_url: str
) -> None:
    a, b = limiters(), limiters()
    await warm(a, b)
    bot, chat = ("telegram", "bot"), ("telegram", "chat", 42)
    started = time.monotonic()
    for _ in range(3):  # the chat's bucket is 3 s ahead of the bot's
        await a.reserve((chat, PER_SECOND))
    waits, _ = await at_once([(a if i % 2 else b, ((bot, PER_SECOND), (chat, PER_SECOND))) for i in range(6)])
    elapsed = time.monotonic() - started
    # Each send waits for the slower bucket, and takes the bot's token at that same
    # instant: the bot's bucket ends exactly where the chat's does.
    assert_schedule(waits, [3.0 + k for k in range(6)], elapsed)
    dues = dict(rows(pg_url))
    assert dues[bucket_digest(bot)] == dues[bucket_digest(chat)]
    assert due(await b.reserve((bot, PER_SECOND)), 9, started)


async def test_a_key_given_twice_in_one_call_takes_one_token(limiters: Callable[..., PgRateLimiter]) -> None:
    a = limiters()
    await warm(a)
    since = time.monotonic()
    assert await a.reserve(("k", PER_SECOND), ("k", PER_SECOND)) == 0
    assert due(await a.reserve(("k", PER_SECOND)), 1, since)


# defer and forget ------------------------------------------------------------------------------------


async def test_defer_pushes_the_bucket_back_for_every_process(limiters: Callable[..., PgRateLimiter]) -> None:
    a, b = limiters(), limiters()
    await warm(a, b)
    limit = Limit.per(10, 1.0)
    since = time.monotonic()
    a.defer(SLACK_HOOK, 30)  # synchronous, as adapters call it; written by a task at once
    assert due(await a.reserve((SLACK_HOOK, limit)), 30, since)
    assert due(await b.reserve((SLACK_HOOK, limit)), 30.1, since)
    b.defer(SLACK_HOOK, 5)  # a shorter hint never shortens an earlier one
    assert await b.flush()
    assert due(await a.reserve((SLACK_HOOK, limit)), 30.2, since)
    a.forget(SLACK_HOOK)
    assert await a.flush()
    assert await b.reserve((SLACK_HOOK, limit)) == 0


async def test_a_deferral_is_held_a_day_at_most(limiters: Callable[..., PgRateLimiter]) -> None:
    """A ``Retry-After`` date in 2100 holds the bucket 24 hours, not 73 years, here and
    in the other processes."""
    a, b = limiters(), limiters()
    await warm(a, b)
    since = time.monotonic()
    a.defer(SLACK_HOOK, 2.3e9)
    assert await a.flush()
    assert due(await b.reserve((SLACK_HOOK, PER_SECOND)), 24 * 3600, since)
    assert due(await a.reserve((SLACK_HOOK, PER_SECOND)), 24 * 3600 + 1, since)


async def test_a_reservation_with_most_takes_nothing_past_it(limiters: Callable[..., PgRateLimiter]) -> None:
    """``most``: the tokens are taken only when due within it; a longer wait is
    returned, nothing is written, and ``acquire`` raises ``WaitTooLong``."""
    from cmtyflow.adapters.ratelimit import WaitTooLong

    a, b = limiters(), limiters()
    await warm(a, b)
    since = time.monotonic()
    robot = (("robot", 2), Limit.per(1, 3.0))
    assert await a.reserve(robot, most=5) == 0
    assert due(await b.reserve(robot, most=5), 3, since)  # within 5 s: taken
    assert due(await a.reserve(robot, most=5), 6, since) and await a.reserve(robot, most=5) > 5  # not taken
    with pytest.raises(WaitTooLong) as caught:
        await b.acquire(robot, most=5)
    assert due(caught.value.wait, 6, since)
    assert due(await b.reserve(robot), 6, since)  # the slot at 6 s was still free


async def test_a_sleeper_waits_for_a_hold_this_process_made_meanwhile(limiters: Callable[..., PgRateLimiter]) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        if not slept:
            a.defer(("robot", 3), 20)  # another send's 429, while this one sleeps
        slept.append(seconds)

    a = limiters(sleep=sleep)
    await warm(a)
    robot = (("robot", 3), Limit.per(1, 3.0))
    since = time.monotonic()
    assert await a.reserve(robot) == 0
    await a.acquire(robot)
    assert len(slept) == 2 and due(slept[0], 3, since) and due(slept[1], 20, since), slept


async def test_the_deferral_task_writes_without_another_reserve(limiters: Callable[..., PgRateLimiter]) -> None:
    a, b = limiters(), limiters()
    await warm(a, b)
    since = time.monotonic()
    a.defer(("wecom", "robot"), 60)
    writer = a._writer  # noqa: SLF001 - the task defer started; a makes no call of its own
    assert writer is not None
    await asyncio.wait_for(writer, 10)
    assert not a._pending  # noqa: SLF001
    assert due(await b.reserve((("wecom", "robot"), WECOM_PER_ROBOT)), 60, since)


async def test_a_deferral_made_outside_the_event_loop_is_written_by_the_next_reserve(
    limiters: Callable[..., PgRateLimiter],
) -> None:
    a, b = limiters(), limiters()
    since = time.monotonic()
    await asyncio.to_thread(a.defer, ("dingtalk", "robot"), 20)  # no running loop in that thread
    assert a._writer is None  # noqa: SLF001 - nothing was scheduled: queued only
    assert await a.reserve((("unrelated",), PER_SECOND)) == 0
    assert due(await b.reserve((("dingtalk", "robot"), PER_SECOND)), 20, since)


# what is stored ---------------------------------------------------------------------------------------


async def test_only_digests_of_keys_are_stored(limiters: Callable[..., PgRateLimiter], pg_url: str) -> None:
    a = limiters()
    wecom = ("wecom", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robotS3cret")
    await a.reserve((SLACK_HOOK, PER_SECOND))
    a.defer(wecom, 10)
    assert await a.flush()
    stored = rows(pg_url)
    assert sorted(key for key, _ in stored) == sorted([bucket_digest(SLACK_HOOK), bucket_digest(wecom)])
    assert all(re.fullmatch(r"[0-9a-f]{64}", key) for key, _ in stored)
    assert "s3cret" not in repr(stored).lower() and "hooks.slack.com" not in repr(stored)


def test_digests_are_stable_and_tell_keys_apart() -> None:
    assert bucket_digest(("a", 1)) != bucket_digest(("a", "1"))
    assert bucket_digest(("a", 1)) != bucket_digest(["a", 1])
    assert bucket_digest(frozenset({"x", "y", "z"})) == bucket_digest(frozenset({"z", "y", "x"}))
    assert bucket_digest(("a", ("b", None))) == bucket_digest(("a", ("b", None)))


# failures ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_database_that_is_down_falls_back_to_local_limits(
    limiters: Callable[..., PgRateLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cmtyflow.ratelimit")
    down = limiters(f"postgresql://cmtyflow:pw-s3cret@127.0.0.1:{free_port()}/x", timeout=1.0, retry_after=60)
    since = time.monotonic()
    waits = [await down.reserve((SLACK_HOOK, PER_SECOND)) for _ in range(3)]  # no exception
    assert all(due(w, slot, since) for w, slot in zip(waits, [0, 1, 2], strict=True)), waits
    assert down.fallbacks == 3
    since = time.monotonic()
    down.defer(SLACK_HOOK, 30)  # still applies here
    assert due(await down.reserve((SLACK_HOOK, PER_SECOND)), 30, since)
    assert not await down.flush()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "unavailable" in warnings[0]  # once per outage, not per send
    assert "cmtyflow:***@127.0.0.1" in warnings[0]
    assert "pw-s3cret" not in caplog.text and "s3cretHookToken" not in caplog.text and "hooks.slack" not in caplog.text


async def test_a_dropped_connection_falls_back_then_shares_again(
    limiters: Callable[..., PgRateLimiter], postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cmtyflow.ratelimit")
    a, b = limiters(retry_after=0), limiters()
    await warm(a, b)
    since = time.monotonic()
    assert await a.reserve((SLACK_HOOK, PER_SECOND)) == 0
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (a._conn.info.backend_pid,))  # noqa: SLF001
    # The local limiter mirrors the shared bucket: the fallback still waits for it.
    assert due(await a.reserve((SLACK_HOOK, PER_SECOND)), 1, since)
    assert a.fallbacks == 1
    # Reconnected (retry_after=0): shared again; the shared bucket had not seen the fallback's token.
    assert due(await a.reserve((SLACK_HOOK, PER_SECOND)), 1, since)
    assert a.fallbacks == 1
    assert due(await b.reserve((SLACK_HOOK, PER_SECOND)), 2, since)
    assert [m for m in caplog.messages if "unavailable" in m] and [m for m in caplog.messages if "is back" in m]


async def test_a_bucket_locked_too_long_falls_back_within_the_timeout(
    limiters: Callable[..., PgRateLimiter], pg_url: str
) -> None:
    a = limiters(timeout=0.5)
    await warm(a)
    since = time.monotonic()
    assert await a.reserve((SLACK_HOOK, PER_SECOND)) == 0
    url, schema = split_schema(pg_url)
    with psycopg.connect(url) as stuck:  # a process stopped while holding the row
        stuck.execute(f"SELECT 1 FROM {schema}.rate_buckets WHERE key = %s FOR UPDATE", (bucket_digest(SLACK_HOOK),))
        started = time.monotonic()
        wait = await a.reserve((SLACK_HOOK, PER_SECOND))
        assert 0.5 <= time.monotonic() - started < 2.0  # gave up after the timeout
        assert a.fallbacks == 1
        assert due(wait, 1, since)  # the mirrored bucket, locally
        stuck.rollback()


def test_one_limiter_serves_successive_event_loops(pg_url: str) -> None:
    a = PgRateLimiter(pg_url)
    since = time.monotonic()
    try:
        assert asyncio.run(a.reserve((SLACK_HOOK, PER_SECOND))) == 0
        assert due(asyncio.run(a.reserve((SLACK_HOOK, PER_SECOND))), 1, since)  # a new connection, same bucket
        assert a.fallbacks == 0
    finally:
        asyncio.run(a.aclose())


# the process default and the adapters -------------------------------------------------------------------


async def test_acquire_sleeps_the_returned_wait(limiters: Callable[..., PgRateLimiter]) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    a = limiters(sleep=sleep)
    await warm(a)
    since = time.monotonic()
    assert await a.acquire((("k",), Limit.per(1, 3.0))) == 0
    wait = await a.acquire((("k",), Limit.per(1, 3.0)))
    assert due(wait, 3, since) and slept == [wait]


async def test_an_installed_default_is_what_adapters_use(
    limiters: Callable[..., PgRateLimiter], aiohttp_server: Any
) -> None:
    from cmtyflow.adapters.wecom import WecomAdapter

    received: list[Any] = []

    async def robot(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", robot)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url("/cgi-bin/webhook/send?key=robotS3cret"))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    adapters = []
    try:
        for _ in range(2):  # two "processes": each installs its own shared limiter
            set_default_limiter(limiters(sleep=sleep))
            adapter = WecomAdapter(WecomAdapter.Settings.model_validate({"webhook_url": url}))
            adapter.max_wait = 30.0  # each send waits for its slot here (not put off)
            assert adapter.limiter is default_limiter()
            await adapter.open()
            adapters.append(adapter)
    finally:
        set_default_limiter(None)
    assert isinstance(default_limiter(), RateLimiter)
    for adapter in adapters:
        await adapter.limiter.reserve((("warm-up", id(adapter)), PER_SECOND))
    since = time.monotonic()
    try:
        for i in range(4):
            await adapters[i % 2].send(OutboundMessage(key=f"m{i}", channel="wecom", text=f"hi {i}"))
    finally:
        for adapter in adapters:
            await adapter.close()
    assert len(received) == 4
    assert len(slept) == 3  # the robot's 20/min across both: 3 s apart
    assert all(due(w, slot, since) for w, slot in zip(slept, [3.0, 6.0, 9.0], strict=True)), slept


ROBOT_PLAYBOOK = """
cmtyflow: 1
name: robots
timezone: UTC
channels:
  robot: {adapter: wecom, webhook_url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"}
triggers:
  - {id: joined, event: member.joined, flow: hello}
flows:
  hello:
    - id: hi
      send: {channel: robot, text: "hi"}
"""


async def test_channels_opened_for_the_runner_get_the_installed_default(
    limiters: Callable[..., PgRateLimiter], tmp_path: Path
) -> None:
    from cmtyflow.runtime.channels import ChannelSet
    from cmtyflow.runtime.prepare import load_programs

    (tmp_path / "pb.yaml").write_text(ROBOT_PLAYBOOK, encoding="utf-8")
    _, programs = load_programs([tmp_path / "pb.yaml"])
    shared = limiters()
    set_default_limiter(shared)
    try:
        channels = ChannelSet(programs, {})
    finally:
        set_default_limiter(None)
    assert [opened.adapter.limiter for opened in channels.all()] == [shared]


# real processes ------------------------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys, time
from cmtyflow.adapters.ratelimit import Limit
from cmtyflow.store.pg_ratelimit import PgRateLimiter, bucket_digest

async def main(url, n):
    limiter = PgRateLimiter(url)
    await limiter.reserve((("warm-up", time.time()), Limit.per(1, 1.0)))
    print("ready", flush=True)
    sys.stdin.readline()
    sends = []
    for _ in range(n):
        asked = time.time()
        wait = await limiter.reserve((("shared", "hook"), Limit.per(1, 1.0)))
        sends.append((asked, time.time(), wait))
    await limiter.aclose()
    print(json.dumps({"sends": sends, "digest": bucket_digest(("shared", "hook")), "fallbacks": limiter.fallbacks}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_processes_share_one_bucket(pg_url: str) -> None:
    n = 4
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, pg_url, str(n)], cwd=ROOT, env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
        outputs = [child.communicate("go\n", timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    results = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert {r["digest"] for r in results} == {bucket_digest(("shared", "hook"))}  # same in every process
    assert [r["fallbacks"] for r in results] == [0, 0]
    # When each send may go, on one timeline (the database's now was between asked and
    # answered): one per second in total, whichever process sent it.
    slots = sorted(((asked + answered) / 2 + wait, (answered - asked) / 2)
                   for r in results for asked, answered, wait in r["sends"])
    assert len(slots) == 2 * n
    for (earlier, e_err), (later, l_err) in zip(slots, slots[1:], strict=False):
        assert abs(later - earlier - 1.0) <= e_err + l_err + 1e-3, slots
