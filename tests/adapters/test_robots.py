"""The robots' and Slack's rate-limit answers, against their loopback fakes: a DingTalk
redirect is not a rate limit (it costs an attempt and names where it points, never
its query); a Feishu 11232 or a Slack ``rate_limited`` without a wait holds the
destination for a default; DingTalk and Feishu sign after the rate-limit wait, so a
long wait never makes a stale timestamp. The limiter's clock is a fake one."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from platform_fakes import DingtalkFake, FakeClock, FeishuFake, SlackFake

from cmtyflow.adapters.base import OutboundMessage, TransientDeliveryError

SECRET_TOKEN = "ding-real-token-0123456789abcdef"


def message() -> OutboundMessage:
    return OutboundMessage(key="k1", channel="chan", text="今晚八点读书会")


def on_the_fake_clock(clock: FakeClock) -> Any:
    """Wall-clock time that moves on when the limiter's fake clock does."""
    start, wall = clock.now, time.time()
    return lambda: wall + (clock.now - start)


# DingTalk redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (f"https://oapi.dingtalk.com/robot/send?access_token={SECRET_TOKEN}", "https://oapi.dingtalk.com"),
        (f"https://sso.corp.example:8443/login?next=/robot/send%3Faccess_token%3D{SECRET_TOKEN}", "https://sso.corp.example:8443"),
        ("/blocked?x=1", "http://127.0.0.1:"),
        (None, "an unnamed place"),
    ],
)
async def test_a_dingtalk_redirect_costs_an_attempt_and_names_only_its_host(
    adapter_for: Any, clock: FakeClock, location: str | None, shown: str
) -> None:
    fake = DingtalkFake(secret=None)
    adapter = await adapter_for(
        "dingtalk", fake, lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}"}
    )
    headers = {"Location": location} if location is not None else {}
    fake.then(lambda rec: web.Response(status=301, headers=headers))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(message())
    error = str(caught.value)
    assert not caught.value.rate_limited and caught.value.retry_after == 600.0
    assert error.startswith(f"dingtalk: HTTP 301 redirect to {shown}")
    assert error.endswith("; check webhook_url if this lasts")
    assert SECRET_TOKEN not in error and "access_token" not in error and "?" not in error
    await adapter.send(message())  # the robot is not held for a redirect
    assert len(fake.requests) == 2 and sum(clock.slept) <= 3.0


# a rate limit without a wait ---------------------------------------------------------------------


async def test_feishu_11232_without_a_wait_holds_the_bot_a_minute(adapter_for: Any, clock: FakeClock) -> None:
    fake = FeishuFake(secret=None)
    adapter = await adapter_for("feishu", fake, lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}"})
    fake.then(fake.code(11232, "frequency limited psm"))
    with pytest.raises(TransientDeliveryError, match="11232") as caught:
        await adapter.send(message())
    assert caught.value.rate_limited and caught.value.retry_after == 60.0
    with pytest.raises(TransientDeliveryError, match="waiting for 127.0.0.1's rate limit, 60s"):
        await adapter.send(message())
    assert len(fake.requests) == 1
    clock.now += 60
    await adapter.send(message())
    assert len(fake.requests) == 2


async def test_slack_rate_limited_without_retry_after_holds_the_channel(adapter_for: Any, clock: FakeClock) -> None:
    fake = SlackFake()
    adapter = await adapter_for(
        "slack", fake, lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api", "channel_id": "C1"}
    )
    fake.then(fake.api_error("rate_limited"))  # HTTP 200, no Retry-After
    with pytest.raises(TransientDeliveryError, match="rate_limited") as caught:
        await adapter.send(message())
    assert caught.value.rate_limited and caught.value.retry_after == 30.0
    with pytest.raises(TransientDeliveryError, match="waiting for 127.0.0.1's rate limit, 30s"):
        await adapter.send(message())
    assert len(fake.requests) == 1


# signing after the wait --------------------------------------------------------------------------


async def test_dingtalk_signs_after_the_rate_limit_wait(adapter_for: Any, clock: FakeClock) -> None:
    fake = DingtalkFake()
    adapter = await adapter_for(
        "dingtalk",
        fake,
        lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}", "secret": f.secret},
        clock=on_the_fake_clock(clock),
    )
    await adapter.send(message())
    await adapter.send(message())  # 3 s later (20 a minute), waited on the fake clock
    first, second = (int(r.query["timestamp"]) for r in fake.requests)
    assert clock.slept == [3.0] and second - first >= 2900


async def test_feishu_signs_after_the_rate_limit_wait(adapter_for: Any, clock: FakeClock) -> None:
    fake = FeishuFake()
    adapter = await adapter_for(
        "feishu",
        fake,
        lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}", "secret": f.secret},
        clock=on_the_fake_clock(clock),
    )
    before = time.time()
    adapter.limiter.defer(("feishu", adapter.settings.webhook_url.get_secret_value(), "minute"), 4.0)
    await adapter.send(message())
    (sent,) = fake.requests
    assert clock.slept == [4.0] and int(sent.json["timestamp"]) >= int(before) + 3
