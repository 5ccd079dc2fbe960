"""Secrets a platform echoes back stay out of the outbox and the log
(docs/adapters.md): the token of a header value such as ``Bearer <token>``, a
Telegram token's secret half, and a secret that an error's cut to 300 characters
would otherwise split in two. Against loopback servers."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from cmtyflow.adapters.base import (
    DeliveryError,
    OutboundMessage,
    Recipient,
    one_line,
    redact,
    secret_values,
)
from cmtyflow.adapters.telegram import TelegramAdapter, TelegramSettings
from cmtyflow.adapters.webhook import WebhookAdapter, WebhookSettings

TOKEN = "tok_live_9f8e7d6c5b4a39281706"
BOT = "123456789:AAHk0-abcdefghijklmnopqrstuvwxyz012"


def message() -> OutboundMessage:
    return OutboundMessage("k1", "c", "hi", "plain", Recipient("u1", None, {"telegram": "42"}), False, None, {}, "pb")


async def failure(adapter: Any) -> tuple[str, str]:
    """(the error as raised, as the dispatcher keeps it: one line, redacted)."""
    await adapter.open()
    try:
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(message())
    finally:
        await adapter.close()
    raised = str(caught.value)
    return raised, adapter.redact(one_line(raised))


@pytest.fixture
async def base(aiohttp_server: Any) -> str:
    async def echo_bare_token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=401, text=f"invalid bearer token {TOKEN}")

    async def echo_late(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400, text="x" * 285 + f" token={TOKEN} rejected")

    async def proxy_page(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=502, text="y" * 250 + f" upstream error for {request.path}")

    app = web.Application()
    app.router.add_post("/bare", echo_bare_token)
    app.router.add_post("/late", echo_late)
    app.router.add_route("*", "/{tail:bot.*}", proxy_page)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def test_a_headers_token_echoed_without_its_scheme_is_redacted(base: str) -> None:
    adapter = WebhookAdapter(WebhookSettings(url=f"{base}/bare", headers={"Authorization": f"Bearer {TOKEN}"}))
    _, kept = await failure(adapter)
    assert TOKEN not in kept and kept == "webhook: HTTP 401: invalid bearer token ********"


async def test_a_secret_near_the_cut_is_redacted_before_the_error_is_cut(base: str) -> None:
    adapter = WebhookAdapter(WebhookSettings(url=f"{base}/late", headers={"X-Api-Key": TOKEN}))
    raised, kept = await failure(adapter)
    assert "tok_live" not in raised and "tok_live" not in kept
    assert raised.endswith(" token=********")  # redacted, then cut at 300 characters


async def test_a_telegram_token_quoted_in_a_proxy_page_is_redacted_before_the_cut(base: str) -> None:
    adapter = TelegramAdapter(TelegramSettings(token=BOT, chat_id="42", api_base=base))
    raised, kept = await failure(adapter)
    assert "AAHk0" not in raised and "AAHk0" not in kept
    assert raised.endswith("upstream error for /bot********/sendMessage")


def test_secret_values_hold_the_pieces_of_header_values_and_tokens() -> None:
    hook = WebhookSettings(
        url="https://example.org/hook",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Basic": "Basic dXNlcjpodW50ZXIy", "X-Short": "Bot abc"},
    )
    secrets = secret_values(hook)
    assert TOKEN in secrets and "dXNlcjpodW50ZXIy" in secrets
    assert "Bearer" not in secrets and "Basic" not in secrets and "abc" not in secrets
    telegram = secret_values(TelegramSettings(token=BOT))
    secret_half = BOT.split(":", 1)[1]
    assert redact(f"unauthorized: {secret_half}", telegram) == "unauthorized: ********"
