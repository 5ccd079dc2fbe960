"""What each platform does beyond the common conformance checks."""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import quote

import pytest
from adapter_cases import message
from aiohttp import web
from platform_fakes import (
    DingtalkFake,
    DiscordFake,
    FakeClock,
    FeishuFake,
    SlackFake,
    TelegramFake,
    WebhookReceiver,
    WecomFake,
    as_json,
    dingtalk_sign,
    telegram_parse,
)

from cmtyflow.adapters.base import PermanentDeliveryError, TransientDeliveryError, resolve_env
from cmtyflow.adapters.text import TextTooLong, utf8_len

# ------------------------------------------------------------------ webhook


async def test_webhook_resend_with_same_key_is_deduplicated_by_receiver(adapter_for: Any) -> None:
    fake = WebhookReceiver()
    adapter = await adapter_for("webhook", fake, lambda b, f: {"url": b + f.path})
    first = await adapter.send(message(key="k1", member=True))
    again = await adapter.send(message(key="k1", member=True))
    other = await adapter.send(message(key="k2"))
    assert first.platform_id == again.platform_id == "evt-1" and other.platform_id == "evt-2"
    assert [r.headers["Idempotency-Key"] for r in fake.requests] == ["k1", "k1", "k2"]
    assert fake.requests[0].json["member"] == "u1"
    assert "X-Cmtyflow-Signature" not in fake.requests[0].headers  # no secret, no signature


async def test_webhook_409_means_in_progress_and_is_transient(adapter_for: Any) -> None:
    fake = WebhookReceiver()
    adapter = await adapter_for("webhook", fake, lambda b, f: {"url": b + f.path})
    fake.then(lambda rec: web.Response(status=409, text="in progress"))
    with pytest.raises(TransientDeliveryError, match="still being processed"):
        await adapter.send(message())


async def test_webhook_headers_take_env_references(adapter_for: Any) -> None:
    fake = WebhookReceiver()

    def settings(base: str, f: Any) -> dict[str, Any]:
        raw = {"url": "${env:HOOK_URL}", "headers": {"Authorization": "Bearer ${env:HOOK_TOKEN}"}}
        env = {"HOOK_URL": base + f.path, "HOOK_TOKEN": "tok-0007"}
        return resolve_env("chan", raw, env)

    adapter = await adapter_for("webhook", fake, settings)
    await adapter.send(message())
    assert fake.requests[0].headers["Authorization"] == "Bearer tok-0007"
    assert "tok-0007" not in repr(adapter)


# ------------------------------------------------------------------ slack


async def test_slack_member_without_handle_is_permanent(adapter_for: Any) -> None:
    fake = SlackFake()
    adapter = await adapter_for(
        "slack",
        fake,
        lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api", "channel_id": "C1"},
    )
    with pytest.raises(PermanentDeliveryError, match="member u1 has no slack handle"):
        await adapter.send(message(member=True))
    assert fake.requests == []
    await adapter.send(message())
    assert fake.requests[0].json["channel"] == "C1"


async def test_slack_webhook_only_posts_member_messages_in_its_channel(adapter_for: Any) -> None:
    fake = SlackFake()
    adapter = await adapter_for("slack", fake, lambda b, f: {"webhook_url": b + f.hook_path})
    await adapter.send(message(member=True, handles={"slack": "U1"}))
    assert fake.requests[0].path == fake.hook_path


async def test_slack_rate_limit_holds_later_sends_back(adapter_for: Any, clock: FakeClock) -> None:
    fake = SlackFake()
    adapter = await adapter_for(
        "slack",
        fake,
        lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api", "channel_id": "C1"},
    )
    fake.then(fake.rate_limited(30))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(message())
    assert caught.value.retry_after == 30
    # The next send is put off for the rest of the hold (no request, no sleep in the
    # send), then goes.
    with pytest.raises(TransientDeliveryError, match="waiting for 127.0.0.1's rate limit, 30s") as held:
        await adapter.send(message())
    assert held.value.rate_limited and held.value.retry_after == pytest.approx(30)
    assert len(fake.requests) == 1
    clock.now += 30
    await adapter.send(message())
    assert clock.slept == [] and len(fake.requests) == 2


async def test_slack_posting_limit_rate_limited_is_retried_not_dead(adapter_for: Any) -> None:
    """chat.postMessage's own limit answers HTTP 200 ``{"ok": false, "error":
    "rate_limited"}`` ("Application has posted too many messages"): a rate limit, not a
    refusal (it was dead-lettered)."""
    fake = SlackFake()
    adapter = await adapter_for(
        "slack",
        fake,
        lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api", "channel_id": "C1"},
    )
    fake.then(fake.api_error("rate_limited"))
    with pytest.raises(TransientDeliveryError, match="rate_limited") as caught:
        await adapter.send(message())
    assert caught.value.rate_limited


def test_slack_settings_need_a_destination() -> None:
    from cmtyflow.adapters.slack import SlackSettings

    with pytest.raises(ValueError, match="set webhook_url, bot_token, or both"):
        SlackSettings.model_validate({})


# ------------------------------------------------------------------ discord


async def test_discord_retry_after_a_lost_answer_reuses_nonce_and_gets_the_same_message(
    adapter_for: Any,
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for(
        "discord",
        fake,
        lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api/v10", "channel_id": "55"},
    )

    def created_then_lost(rec: Any) -> web.Response:
        fake._message("55", rec.json)  # Discord created it, then the answer was lost
        return web.Response(status=502, text="bad gateway")

    fake.then(created_then_lost)
    with pytest.raises(TransientDeliveryError):
        await adapter.send(message(key="k-retry"))
    receipt = await adapter.send(message(key="k-retry"))
    nonces = [r.json["nonce"] for r in fake.requests]
    assert nonces == [hashlib.sha256(b"k-retry").hexdigest()[:25]] * 2
    assert receipt.platform_id == "900001" and len(fake.nonces) == 1


async def test_discord_dm_channel_is_opened_once(adapter_for: Any) -> None:
    fake = DiscordFake()
    adapter = await adapter_for(
        "discord", fake, lambda b, f: {"bot_token": f.bot_token, "api_base": b + "/api/v10"}
    )
    for key in ("a", "b"):
        await adapter.send(message(key=key, member=True, handles={"discord": "42"}))
    assert [r.path for r in fake.requests] == [
        "/api/v10/users/@me/channels",
        "/api/v10/channels/742/messages",
        "/api/v10/channels/742/messages",
    ]


async def test_discord_depleted_bucket_waits_for_reset(adapter_for: Any, clock: FakeClock) -> None:
    fake = DiscordFake()
    adapter = await adapter_for(
        "discord",
        fake,
        lambda b, f: {"webhook_url": f"{b}/api/webhooks/{f.webhook_id}/{f.webhook_token}"},
    )
    fake.then(
        lambda rec: as_json(
            {"id": "1"}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.75"}
        )
    )
    await adapter.send(message(key="a"))
    await adapter.send(message(key="b"))
    assert clock.slept == [1.75]


async def test_discord_long_plain_text_is_split_within_2000_after_escaping(
    adapter_for: Any,
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for(
        "discord",
        fake,
        lambda b, f: {"webhook_url": f"{b}/api/webhooks/{f.webhook_id}/{f.webhook_token}"},
    )
    text = "*emphasis* and_more. " * 200  # 4200 characters, much longer once escaped
    receipt = await adapter.send(message(text))
    contents = [r.json["content"] for r in fake.requests]
    assert len(contents) == receipt.detail["parts"] > 2
    assert all(len(c) <= 2000 for c in contents)
    shown = " ".join(c.replace("\\", "") for c in contents)
    assert shown.split() == text.split()


# ------------------------------------------------------------------ telegram


@pytest.mark.parametrize(("chat", "gap"), [("98765", 1.0), ("-1001234", 3.0)])
async def test_telegram_splits_and_spaces_parts_per_chat_kind(
    adapter_for: Any, clock: FakeClock, chat: str, gap: float
) -> None:
    fake = TelegramFake()
    adapter = await adapter_for(
        "telegram", fake, lambda b, f: {"token": f.token, "api_base": b, "chat_id": chat}
    )
    text = ("word " * 1000).strip() + " <&>"  # 5004 characters of plain text
    receipt = await adapter.send(message(text))
    shown = [telegram_parse(r.json["text"], r.json["parse_mode"]) for r in fake.requests]
    assert len(shown) == 2 and all(len(s) <= 4096 for s in shown)
    assert " ".join(shown) == text
    assert receipt.platform_id == "1" and receipt.detail == {"parts": 2, "ids": ["1", "2"]}
    assert clock.slept == [gap]


async def test_telegram_retry_resumes_after_parts_already_sent(adapter_for: Any) -> None:
    fake = TelegramFake()
    adapter = await adapter_for(
        "telegram", fake, lambda b, f: {"token": f.token, "api_base": b, "chat_id": "1"}
    )
    text = "a " * 3000
    fake.then(lambda rec: fake.respond(rec), fake.error(502))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(message(text, key="k-parts"))
    await adapter.send(message(text, key="k-parts"))
    sent = [r.json["text"] for r in fake.requests]
    assert len(sent) == 3 and sent[1] == sent[2] and sent[0] != sent[1]


async def test_telegram_markup_line_too_long_is_permanent_and_nothing_is_sent(
    adapter_for: Any,
) -> None:
    fake = TelegramFake()
    adapter = await adapter_for(
        "telegram", fake, lambda b, f: {"token": f.token, "api_base": b, "chat_id": "1"}
    )
    with pytest.raises(TextTooLong, match="cannot be split"):
        await adapter.send(message("<b>" + "x" * 5000 + "</b>", fmt="html"))
    assert fake.requests == []


async def test_telegram_migrated_group_is_permanent_and_names_the_new_chat(
    adapter_for: Any,
) -> None:
    fake = TelegramFake()
    adapter = await adapter_for(
        "telegram", fake, lambda b, f: {"token": f.token, "api_base": b, "chat_id": "-5"}
    )
    fake.then(
        lambda rec: as_json(
            {
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: group chat was upgraded to a supergroup chat",
                "parameters": {"migrate_to_chat_id": -1009},
            },
            400,
        )
    )
    with pytest.raises(PermanentDeliveryError, match="now chat -1009"):
        await adapter.send(message())


async def test_telegram_channel_message_without_chat_id_is_permanent(adapter_for: Any) -> None:
    fake = TelegramFake()
    adapter = await adapter_for("telegram", fake, lambda b, f: {"token": f.token, "api_base": b})
    with pytest.raises(PermanentDeliveryError, match="no chat_id"):
        await adapter.send(message())


# ------------------------------------------------------------------ wecom


async def test_wecom_counts_bytes_and_keeps_to_20_per_minute(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = WecomFake()
    adapter = await adapter_for(
        "wecom", fake, lambda b, f: {"webhook_url": f"{b}/cgi-bin/webhook/send?key={f.key}"}
    )
    text = "读书打卡第一天。" * 130  # 1040 characters, 3120 bytes
    await adapter.send(message(text))
    parts = [r.json["text"]["content"] for r in fake.requests]
    assert len(parts) == 2 and all(utf8_len(p) <= 2048 for p in parts) and "".join(parts) == text
    assert clock.slept == [3.0]


async def test_wecom_frequency_limit_holds_the_robot_for_a_minute(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = WecomFake()
    adapter = await adapter_for(
        "wecom", fake, lambda b, f: {"webhook_url": f"{b}/cgi-bin/webhook/send?key={f.key}"}
    )
    fake.then(fake.code(45009, "api freq out of limit"))
    with pytest.raises(TransientDeliveryError, match="45009"):
        await adapter.send(message())
    with pytest.raises(TransientDeliveryError, match="waiting for 127.0.0.1's rate limit, 60s") as held:
        await adapter.send(message())
    assert held.value.rate_limited and held.value.retry_after == pytest.approx(60)
    clock.now += 60
    await adapter.send(message())
    assert clock.slept == [] and len(fake.requests) == 2


async def test_wecom_markdown_uses_markdown_msgtype_and_its_larger_limit(adapter_for: Any) -> None:
    fake = WecomFake()
    adapter = await adapter_for(
        "wecom", fake, lambda b, f: {"webhook_url": f"{b}/cgi-bin/webhook/send?key={f.key}"}
    )
    text = "\n".join(f"**打卡** 第{i}天" for i in range(180))
    assert 2048 < utf8_len(text) <= 4096
    await adapter.send(message(text, fmt="markdown"))
    assert [r.json["msgtype"] for r in fake.requests] == ["markdown"]


async def test_wecom_markdown_paragraph_over_the_limit_is_sent_in_parts(adapter_for: Any) -> None:
    """One Chinese paragraph of 1,600 characters (4,800 bytes) as markdown: two
    messages, cut after a sentence; it was dead-lettered (a line longer than 4,096
    bytes could not be split)."""
    fake = WecomFake()
    adapter = await adapter_for(
        "wecom", fake, lambda b, f: {"webhook_url": f"{b}/cgi-bin/webhook/send?key={f.key}"}
    )
    text = "本周读书会改到周六晚上八点，地点不变，请大家相互转告。" * 60
    assert "\n" not in text and utf8_len(text) > 4096
    await adapter.send(message(text, fmt="markdown"))
    parts = [r.json["markdown"]["content"] for r in fake.requests]
    assert len(parts) == 2 and all(utf8_len(p) <= 4096 and p.endswith("。") for p in parts) and "".join(parts) == text


# ------------------------------------------------------------------ dingtalk


async def test_dingtalk_without_secret_sends_no_signature(adapter_for: Any) -> None:
    fake = DingtalkFake(secret=None)
    adapter = await adapter_for(
        "dingtalk",
        fake,
        lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}"},
    )
    await adapter.send(message("## 周报\n- 打卡", fmt="markdown", subject="本周打卡"))
    rec = fake.requests[0]
    assert rec.raw_query == f"access_token={fake.access_token}"
    assert rec.json == {
        "msgtype": "markdown",
        "markdown": {"title": "本周打卡", "text": "## 周报\n- 打卡"},
        "at": {"isAtAll": False},
    }


async def test_dingtalk_signature_is_percent_encoded(adapter_for: Any) -> None:
    fake = DingtalkFake()
    assert fake.secret is not None
    now_ms = int(time.time() * 1000)
    # A timestamp whose signature holds "+", "/" and "=", the characters that need encoding.
    ts = next(
        t
        for t in range(now_ms, now_ms + 100_000)
        if set("+/=") <= set(dingtalk_sign(fake.secret, str(t)))
    )
    adapter = await adapter_for(
        "dingtalk",
        fake,
        lambda b, f: {
            "webhook_url": f"{b}/robot/send?access_token={f.access_token}",
            "secret": f.secret,
        },
        clock=lambda: ts / 1000,
    )
    await adapter.send(message())
    expected = quote(dingtalk_sign(fake.secret, str(ts)), safe="")
    assert (
        fake.requests[0].raw_query
        == f"access_token={fake.access_token}&timestamp={ts}&sign={expected}"
    )


async def test_dingtalk_wrong_secret_is_refused_by_the_platform(adapter_for: Any) -> None:
    fake = DingtalkFake()
    adapter = await adapter_for(
        "dingtalk",
        fake,
        lambda b, f: {
            "webhook_url": f"{b}/robot/send?access_token={f.access_token}",
            "secret": "SECwrong",
        },
    )
    with pytest.raises(PermanentDeliveryError, match="sign not match"):
        await adapter.send(message())


async def test_dingtalk_redirect_while_throttled_is_transient(adapter_for: Any) -> None:
    fake = DingtalkFake(secret=None)
    adapter = await adapter_for(
        "dingtalk",
        fake,
        lambda b, f: {"webhook_url": f"{b}/robot/send?access_token={f.access_token}"},
    )
    fake.then(lambda rec: web.Response(status=302, headers={"Location": "/blocked"}))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(message())
    assert caught.value.retry_after == 600.0


# ------------------------------------------------------------------ feishu


async def test_feishu_without_secret_and_at_all_in_template_text(adapter_for: Any) -> None:
    fake = FeishuFake(secret=None)
    adapter = await adapter_for(
        "feishu", fake, lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}"}
    )
    await adapter.send(message('hi <at user_id="all">所有人</at>'))
    body = fake.requests[0].json
    assert set(body) == {"msg_type", "content"}
    assert body["content"]["text"] == 'hi <\u200bat user_id="all">所有人</at>'


async def test_feishu_long_text_is_cut_by_its_size_in_the_json_body(adapter_for: Any) -> None:
    """Line breaks and quotes take two bytes each once JSON-escaped: a text of 17,000
    UTF-8 bytes made a body over 20 KB, which Feishu refuses (9499, permanent). It is
    cut so that each body fits, nothing lost."""
    fake = FeishuFake()
    adapter = await adapter_for(
        "feishu",
        fake,
        lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}", "secret": f.secret},
    )
    line = '"打卡" day\n'
    text = line * (17000 // utf8_len(line))
    assert 16000 < utf8_len(text) < 18000
    receipt = await adapter.send(message(text))
    assert receipt.detail["parts"] == len(fake.requests) == 2
    assert all(len(r.body) <= 20 * 1024 for r in fake.requests)
    sent = [r.json["content"]["text"] for r in fake.requests]
    assert "\n".join(sent) == text


async def test_feishu_open_platform_rate_limit_waits_as_told(adapter_for: Any, clock: FakeClock) -> None:
    """99991400 with HTTP 400 and ``x-ogw-ratelimit-reset``: a rate limit for that long,
    not a refusal; a header that is not a number is ignored, not a crash."""
    fake = FeishuFake()
    adapter = await adapter_for(
        "feishu",
        fake,
        lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}", "secret": f.secret},
    )
    limited = {"code": 99991400, "msg": "request trigger frequency limit", "data": {}}
    fake.then(lambda rec: as_json(limited, 400, {"x-ogw-ratelimit-reset": "12"}))
    with pytest.raises(TransientDeliveryError, match="99991400") as caught:
        await adapter.send(message())
    assert caught.value.rate_limited and caught.value.retry_after == 12
    clock.now += 12  # the bot's bucket was held that long
    fake.then(lambda rec: as_json({"code": 9499, "msg": "Too Many Requests"}, 429, {"x-ogw-ratelimit-reset": "soon"}))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(message())
    assert caught.value.rate_limited and caught.value.retry_after is None


async def test_feishu_bot_sent_to_too_fast_waits_and_goes_again(adapter_for: Any, clock: FakeClock) -> None:
    """A custom bot over its 5 a second or 100 a minute answers HTTP 400 with 9499 "too
    many request": a rate limit (it was dead-lettered as a refusal). 9499 otherwise is
    the gateway's refusal of the request, and stays one."""
    fake = FeishuFake()
    adapter = await adapter_for(
        "feishu",
        fake,
        lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}", "secret": f.secret},
    )
    fake.then(lambda rec: as_json({"code": 9499, "msg": "too many request", "data": {}}, 400))
    with pytest.raises(TransientDeliveryError, match="too many request") as caught:
        await adapter.send(message())
    assert caught.value.rate_limited and caught.value.retry_after == 60.0  # no wait given: a minute
    clock.now += 60
    fake.then(lambda rec: as_json({"code": 9499, "msg": "Bad Request", "data": {}}, 400))
    with pytest.raises(PermanentDeliveryError, match="Bad Request"):
        await adapter.send(message())


async def test_feishu_wrong_secret_is_refused_by_the_platform(adapter_for: Any) -> None:
    fake = FeishuFake()
    adapter = await adapter_for(
        "feishu",
        fake,
        lambda b, f: {"webhook_url": f"{b}/open-apis/bot/v2/hook/{f.hook_id}", "secret": "nope"},
    )
    with pytest.raises(PermanentDeliveryError, match="19021"):
        await adapter.send(message())
