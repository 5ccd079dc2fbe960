"""How much of a reply an HTTP adapter reads (``adapters._http``): a receipt or an
error detail is small; a URL that answers with megabytes, or a stream that never ends,
must cost neither the runner's memory nor the whole timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from cmtyflow.adapters import _http
from cmtyflow.adapters.base import (
    OutboundMessage,
    PermanentDeliveryError,
    Recipient,
    redact,
    secret_values,
)
from cmtyflow.adapters.webhook import WebhookAdapter, WebhookSettings

CAP = 64 * 1024


async def endless(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse()  # chunked, no length
    await resp.prepare(request)
    while True:
        await resp.write(b"x" * 8192)
        await asyncio.sleep(0)


async def large(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"id": "big", "pad": "' + b"x" * (4 * CAP) + b'"}', content_type="application/json")


GARBLED = "错误：\n令牌无效\r\n\x1b[31mRED\x1b[0m 第二行\t tab"


async def forbidden_gbk(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=403, body=GARBLED.encode("gbk"), headers={"Content-Type": "text/plain; charset=gbk"})


async def echo_token(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"error": f"bad token {request.query.get('token')} for {request.path}"}, status=401)


async def small(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "r-1"})


@pytest.fixture
async def base(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(_http, "MAX_REPLY", CAP, raising=False)
    app = web.Application()
    app.router.add_post("/endless", endless)
    app.router.add_post("/large", large)
    app.router.add_post("/small", small)
    app.router.add_post("/gbk", forbidden_gbk)
    app.router.add_post("/T0001/B0002/xoxbSecretPathPart123456", echo_token)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


def message(key: str) -> OutboundMessage:
    return OutboundMessage(key, "hook", "hi", "plain", Recipient("u1"), False, None, {}, "pb")


async def test_a_reply_past_the_cap_is_cut_at_it_and_a_stream_that_never_ends_returns(base: str) -> None:
    adapter = WebhookAdapter(WebhookSettings.model_validate({"url": f"{base}/endless"}), timeout=30.0)
    await adapter.open()
    try:
        reply = await asyncio.wait_for(adapter.request("POST", f"{base}/endless", body=b"{}"), 10)
        assert (reply.status, len(reply.body)) == (200, CAP)
        reply = await adapter.request("POST", f"{base}/large", body=b"{}")
        assert len(reply.body) == CAP and reply.json() is None  # cut short: not JSON any more
        # The connection cut short is not reused; the next request goes on a new one.
        reply = await adapter.request("POST", f"{base}/small", body=b"{}")
        assert (reply.status, reply.json()) == (200, {"id": "r-1"})
        small_adapter = WebhookAdapter(WebhookSettings.model_validate({"url": f"{base}/small"}))
        small_adapter._session = adapter._session
        assert (await small_adapter.send(message("k1"))).platform_id == "r-1"
        big = WebhookAdapter(WebhookSettings.model_validate({"url": f"{base}/large"}))
        big._session = adapter._session
        assert (await big.send(message("k2"))).platform_id is None  # delivered (2xx); no receipt read
    finally:
        await adapter.close()


async def test_an_error_reply_is_read_in_its_charset_on_one_line_without_control_characters(base: str) -> None:
    """A 403 whose body is GBK with line breaks, a tab and a terminal escape: the error is
    read as GBK, and kept on one line without the escape (it is shown in the log and in
    `cmtyflow outbox`'s table)."""
    adapter = WebhookAdapter(WebhookSettings.model_validate({"url": f"{base}/gbk"}))
    await adapter.open()
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await adapter.send(message("k-gbk"))
    finally:
        await adapter.close()
    assert str(caught.value) == "webhook: HTTP 403: 错误： 令牌无效 [31mRED [0m 第二行 tab"


async def test_a_platform_echoing_the_channels_token_does_not_put_it_in_the_log(base: str) -> None:
    """The token in the URL's query, and a long path part (a Slack-style webhook key),
    come back in the platform's error text: the dispatcher keeps and logs the error
    without them."""
    from datetime import UTC, datetime

    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.runtime.channels import OpenChannel
    from cmtyflow.runtime.dispatch import Dispatcher
    from cmtyflow.store.memory import MemoryStore

    url = f"{base}/T0001/B0002/xoxbSecretPathPart123456?token=sekrit-HOOK-789"
    adapter = WebhookAdapter(WebhookSettings.model_validate({"url": url}))
    opened = OpenChannel("hook", "webhook", adapter, adapter.capabilities)

    class Channels:
        def adapter_for(self, playbook: str, channel: str) -> OpenChannel:
            return opened

    now = datetime(2026, 12, 1, tzinfo=UTC)
    store = MemoryStore()
    store.apply(Decision(messages=[QueuedMessage("k1", "pb", "r1", "f", "s", 1, "hook", "webhook", None, "channel",
                                                 "hi", "plain", None, False, now, now)]))
    logged: list[str] = []
    await adapter.open()
    try:
        stats = await Dispatcher(store, Channels(), lambda: now, policies={},  # type: ignore[arg-type]
                                 log=lambda event, **fields: logged.append(str(fields))).run_due(now)
    finally:
        await adapter.close()
    assert stats.dead == 1
    (row,) = list(store.outbox())
    assert row.last_error == 'webhook: HTTP 401: {"error": "bad token ******** for /T0001/B0002/********"}'
    assert not any("sekrit" in line or "xoxbSecret" in line for line in logged)


def test_a_secret_webhook_urls_key_and_path_are_redacted_too() -> None:
    """Slack, Discord and WeCom webhook URLs are secret settings: a platform (or a proxy's
    error page) echoing only their path token or ``key=`` was kept as it was; only the
    whole URL was hidden."""
    from cmtyflow.adapters.slack import SlackSettings
    from cmtyflow.adapters.wecom import WecomSettings

    slack = SlackSettings.model_validate({"webhook_url": "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"})
    wecom = WecomSettings.model_validate({"webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"})
    assert redact("no_service: XXXXXXXXXXXXXXXXXXXXXXXX", secret_values(slack)) == "no_service: ********"
    assert redact("invalid webhook url, key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa", secret_values(wecom)) == (
        "invalid webhook url, key=********"
    )
