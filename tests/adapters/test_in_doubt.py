"""A send that fails after its request was written is in doubt (SPEC 5.2): the
platform may have the message. Told apart from a failure before anything was written
(no connection, a refused one, no free connection within the timeout), which is an
ordinary transient failure. Against loopback servers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cmtyflow.adapters.base import (
    InDoubtDeliveryError,
    OutboundMessage,
    Recipient,
    TransientDeliveryError,
)
from cmtyflow.adapters.ratelimit import RateLimiter
from cmtyflow.adapters.telegram import TelegramAdapter, TelegramSettings
from cmtyflow.adapters.webhook import WebhookAdapter, WebhookSettings

TOKEN = "123456:" + "t" * 35


def message(key: str = "k1") -> OutboundMessage:
    return OutboundMessage(key, "dm", "你好", "plain", Recipient("u1", None, {"telegram": "42"}), False, None, {}, "pb")


class Platform:
    """Records each request it read whole, then answers, hangs or drops the connection."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.mode = "answer"
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.got.append(await request.read())
        if self.mode == "hang":
            await self.release.wait()
        elif self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            await self.release.wait()
        return web.json_response({"ok": True, "result": {"message_id": len(self.got)}})


@pytest.fixture
async def platform(aiohttp_server: Any) -> Any:
    fake = Platform()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield fake
    fake.release.set()


def telegram(base: str, **kw: Any) -> TelegramAdapter:
    return TelegramAdapter(TelegramSettings(token=TOKEN, api_base=base), timeout=0.3, limiter=RateLimiter(), **kw)


@pytest.mark.parametrize("mode", ["hang", "drop"])
async def test_no_answer_after_the_request_was_written_is_in_doubt(platform: Any, mode: str) -> None:
    platform.mode = mode
    adapter = telegram(platform.base)
    await adapter.open()
    try:
        with pytest.raises(InDoubtDeliveryError, match=r"after the message was sent.*; it may have arrived"):
            await adapter.send(message())
    finally:
        await adapter.close()
    assert len(platform.got) == 1  # the platform did get it


async def test_a_refused_connection_is_an_ordinary_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = telegram(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(TransientDeliveryError, match="cannot reach 127.0.0.1") as caught:
            await adapter.send(message())
    finally:
        await adapter.close()
    assert not isinstance(caught.value, InDoubtDeliveryError)


async def test_a_timeout_before_anything_was_written_is_an_ordinary_failure(platform: Any) -> None:
    """One connection for the session, held by a send that hangs: the second send's
    timeout passes while it waits for a connection, before it writes anything."""
    platform.mode = "hang"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    first = TelegramAdapter(TelegramSettings(token=TOKEN, api_base=platform.base), timeout=2.0,
                            limiter=RateLimiter(), session=session)
    second = telegram(platform.base, session=session)
    try:
        hanging = asyncio.ensure_future(first.send(message("k1")))
        while not platform.got:  # the first holds the only connection
            await asyncio.sleep(0.01)
        with pytest.raises(TransientDeliveryError, match="did not answer within 0.3s$") as caught:
            await second.send(message("k2"))
        platform.release.set()
        await hanging
    finally:
        await session.close()
    assert not isinstance(caught.value, InDoubtDeliveryError)
    assert len(platform.got) == 1


async def test_an_adapter_that_deduplicates_is_never_in_doubt(platform: Any) -> None:
    platform.mode = "hang"
    adapter = WebhookAdapter(WebhookSettings(url=f"{platform.base}/hook"), timeout=0.3)
    await adapter.open()
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await adapter.send(message())
    finally:
        await adapter.close()
    assert not isinstance(caught.value, InDoubtDeliveryError)
