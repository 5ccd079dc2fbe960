"""One ``Case`` per HTTP adapter configuration: how to point it at its fake, what the
exact request for a message must be, and how to tell that member data stayed inert."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from platform_fakes import (
    DingtalkFake,
    DiscordFake,
    FakePlatform,
    FeishuFake,
    Recorded,
    SlackFake,
    TelegramFake,
    WebhookReceiver,
    WecomFake,
    dingtalk_sign,
    feishu_sign,
    telegram_parse,
)

from cmtyflow.adapters.base import OutboundMessage, Recipient

# The member names a community manager does not control.
HOSTILE = (
    "@everyone <b>x</b> *y*",
    '<!channel> <@U123> <at user_id="all">all</at> [link](http://evil.example) _z_ `c` ||s|| @here',
)

JSON = "application/json; charset=utf-8"


def message(
    text: str = "Hello, 世界",
    *,
    member: bool = False,
    fmt: str = "plain",
    key: str = "pb/run1/s1/0/u1",
    handles: dict[str, str] | None = None,
    **kw: Any,
) -> OutboundMessage:
    recipient = Recipient("u1", "Ann", handles or {}) if member else None
    return OutboundMessage(
        key=key, channel="chan", text=text, format=fmt, recipient=recipient, playbook="pb", **kw
    )


@dataclass
class Case:
    id: str
    adapter: str
    fake: Callable[[], FakePlatform]
    settings: Callable[[str, FakePlatform], dict[str, Any]]
    secrets: Callable[[FakePlatform], list[str]]
    expect: Callable[[Recorded, OutboundMessage, FakePlatform], None]  # the exact request
    receipt: str | None  # platform id of the first successful send
    inert: Callable[[Recorded, str, str], None]  # (request, format, hostile name)
    handles: dict[str, str] = field(default_factory=dict)  # member handles; set -> member message
    # (responder factory, error class name, retry_after) for the platform's own error conventions
    body_errors: Callable[[FakePlatform], list[tuple[Any, str, float | None]]] = lambda f: []

    def message(self, text: str = "Hello, 世界", **kw: Any) -> OutboundMessage:
        if self.handles:
            return message(text, member=True, handles=self.handles, **kw)
        return message(text, **kw)


# ------------------------------------------------------------------ inertness checks


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def html_shows(markup: str) -> tuple[list[str], str]:
    parser = _Tags()
    parser.feed(markup)
    parser.close()
    return parser.tags, "".join(parser.text)


def unescape_backslashes(text: str) -> tuple[str, str]:
    """(text with escaped pairs removed, text as displayed)."""
    return re.sub(r"\\.", "", text, flags=re.S), re.sub(r"\\(.)", r"\1", text, flags=re.S)


def shown(name: str) -> str:
    return f"Hi {name}!"


def inert_webhook(rec: Recorded, fmt: str, name: str) -> None:
    body = rec.json
    assert body["format"] == fmt
    if fmt == "html":
        tags, text = html_shows(body["text"])
        assert tags == [] and text == shown(name)
    elif fmt == "markdown":
        bare, text = unescape_backslashes(body["text"])
        assert not set("*_[]`<>") & set(bare) and html.unescape(text) == shown(name)
    else:
        assert body["text"] == shown(name)


def inert_slack(rec: Recorded, fmt: str, name: str) -> None:
    body = rec.json
    text = body["text"]
    assert "<" not in text and ">" not in text  # no <!everyone>, <@U1>, <url|label>
    if fmt == "plain":
        assert body["mrkdwn"] is False
        assert text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == shown(name)
    else:
        assert body["mrkdwn"] is True
        assert not re.search(r"[*_~`](?!\u200b)\S", text)  # no emphasis can open


def inert_discord(rec: Recorded, fmt: str, name: str) -> None:
    body = rec.json
    assert body["allowed_mentions"] == {"parse": []}
    bare, text = unescape_backslashes(body["content"])
    assert not set("*_~`|<>@#[]()") & set(bare) and text == shown(name)


def inert_telegram(rec: Recorded, fmt: str, name: str) -> None:
    body = rec.json
    mode = body.get("parse_mode")
    assert mode == {"html": "HTML", "markdown": "MarkdownV2"}.get(fmt, mode)
    assert telegram_parse(body["text"], mode) == shown(name)
    if mode == "HTML":
        assert html_shows(body["text"])[0] == []


def inert_robot(
    content_of: Callable[[dict[str, Any]], tuple[str, str]],
) -> Callable[[Recorded, str, str], None]:
    def check(rec: Recorded, fmt: str, name: str) -> None:
        body = rec.json
        msgtype, content = content_of(body)
        assert "mentioned_list" not in str(body) and "atMobiles" not in str(body)
        if fmt == "plain":
            assert msgtype == "text" and content == shown(name)
        else:
            assert msgtype == "markdown"
            bare, _ = unescape_backslashes(content)
            assert not set("*_[]`<") & set(bare)

    return check


def wecom_content(body: dict[str, Any]) -> tuple[str, str]:
    return body["msgtype"], body[body["msgtype"]]["content"]


def dingtalk_content(body: dict[str, Any]) -> tuple[str, str]:
    assert body["at"] == {"isAtAll": False}
    if body["msgtype"] == "markdown":
        return "markdown", body["markdown"]["text"]
    return "text", body["text"]["content"]


def inert_feishu(rec: Recorded, fmt: str, name: str) -> None:
    body = rec.json
    assert body["msg_type"] == "text"
    text = body["content"]["text"]
    assert not re.search(r"<\s*at\b", text, re.I)
    assert text.replace("\u200b", "") == shown(name)


# ------------------------------------------------------------------ exact requests


def recent(ts: str, unit: float = 1.0) -> bool:
    return abs(time.time() - int(ts) / unit) < 60


def expect_webhook(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == ("POST", "/hooks/cmtyflow", "")
    assert rec.headers["Content-Type"] == JSON
    assert rec.headers["Idempotency-Key"] == msg.key
    assert rec.headers["X-Team"] == "reading"
    ts = rec.headers["X-Cmtyflow-Timestamp"]
    assert recent(ts)
    mac = hmac.new(b"whsec-secret-0006", ts.encode() + b"." + rec.body, hashlib.sha256).hexdigest()
    assert rec.headers["X-Cmtyflow-Signature"] == f"sha256={mac}"
    assert rec.json == {
        "key": msg.key,
        "channel": "chan",
        "playbook": "pb",
        "member": None,
        "text": "Hello, 世界",
        "format": "plain",
        "urgent": False,
    }


def expect_slack_webhook(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == ("POST", fake.hook_path, "")
    assert rec.headers["Content-Type"] == JSON and "Authorization" not in rec.headers
    assert rec.json == {"text": "Hello, 世界", "mrkdwn": False}


def expect_slack_dm(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == ("POST", "/api/chat.postMessage", "")
    assert rec.headers["Authorization"] == f"Bearer {fake.bot_token}"
    assert rec.headers["Content-Type"] == JSON
    assert rec.json == {"channel": "U0123ABC", "text": "Hello, 世界", "mrkdwn": False}


def expect_discord_webhook(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == (
        "POST",
        f"/api/webhooks/{fake.webhook_id}/{fake.webhook_token}",
        "wait=true",
    )
    assert rec.headers["Content-Type"] == JSON and "Authorization" not in rec.headers
    assert rec.json == {
        "content": "Hello, 世界",
        "allowed_mentions": {"parse": []},
        "username": "Club",
    }


def expect_discord_dm(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    opened, sent = fake.requests[-2], rec
    assert (opened.method, opened.path) == ("POST", "/api/v10/users/@me/channels")
    assert opened.json == {"recipient_id": "42"}
    assert (sent.method, sent.path, sent.raw_query) == (
        "POST",
        "/api/v10/channels/742/messages",
        "",
    )
    for r in (opened, sent):
        assert r.headers["Authorization"] == f"Bot {fake.bot_token}"
        assert r.headers["User-Agent"].startswith("DiscordBot (")
    nonce = hashlib.sha256(msg.key.encode()).hexdigest()[:25]
    assert sent.json == {
        "content": "Hello, 世界",
        "allowed_mentions": {"parse": []},
        "nonce": nonce,
        "enforce_nonce": True,
    }


def expect_telegram(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == ("POST", f"/bot{fake.token}/sendMessage", "")
    assert rec.headers["Content-Type"] == JSON
    assert rec.json == {"chat_id": 98765, "text": "Hello, 世界", "parse_mode": "HTML"}


def expect_telegram_group(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path) == ("POST", f"/bot{fake.token}/sendMessage")
    assert rec.json == {
        "chat_id": -1001234,
        "text": "Hello, 世界",
        "parse_mode": "MarkdownV2",
        "link_preview_options": {"is_disabled": True},
    }


def expect_wecom(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == (
        "POST",
        "/cgi-bin/webhook/send",
        f"key={fake.key}",
    )
    assert rec.headers["Content-Type"] == JSON
    assert rec.json == {"msgtype": "text", "text": {"content": "Hello, 世界"}}


def expect_dingtalk(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path) == ("POST", "/robot/send")
    assert list(rec.query) == ["access_token", "timestamp", "sign"]
    assert rec.query["access_token"] == fake.access_token
    ts = rec.query["timestamp"]
    assert recent(ts, 1000.0)
    assert rec.query["sign"] == dingtalk_sign(fake.secret, ts)
    # URL-encoded: base64 "+", "/" and "=" must not reach the server raw.
    raw_sign = rec.raw_query.split("sign=", 1)[1]
    assert not set("+/=") & set(raw_sign)
    assert rec.json == {
        "msgtype": "text",
        "text": {"content": "Hello, 世界"},
        "at": {"isAtAll": False},
    }


def expect_feishu(rec: Recorded, msg: OutboundMessage, fake: Any) -> None:
    assert (rec.method, rec.path, rec.raw_query) == (
        "POST",
        f"/open-apis/bot/v2/hook/{fake.hook_id}",
        "",
    )
    assert rec.headers["Content-Type"] == JSON
    body = rec.json
    assert recent(body["timestamp"])
    assert body == {
        "timestamp": body["timestamp"],
        "sign": feishu_sign(fake.secret, body["timestamp"]),
        "msg_type": "text",
        "content": {"text": "Hello, 世界"},
    }


CASES = [
    Case(
        "webhook",
        "webhook",
        lambda: WebhookReceiver(secret="whsec-secret-0006"),
        lambda base, f: {
            "url": base + "/hooks/cmtyflow",
            "secret": "whsec-secret-0006",
            "headers": {"X-Team": "reading"},
        },
        lambda f: ["whsec-secret-0006"],
        expect_webhook,
        "evt-1",
        inert_webhook,
    ),
    Case(
        "slack-webhook",
        "slack",
        SlackFake,
        lambda base, f: {"webhook_url": base + f.hook_path},
        lambda f: ["hooksecret123"],
        expect_slack_webhook,
        None,
        inert_slack,
    ),
    Case(
        "slack-dm",
        "slack",
        SlackFake,
        lambda base, f: {
            "webhook_url": base + f.hook_path,
            "bot_token": f.bot_token,
            "api_base": base + "/api",
        },
        lambda f: ["hooksecret123", f.bot_token],
        expect_slack_dm,
        "1700000000.000001",
        inert_slack,
        handles={"slack": "U0123ABC"},
        body_errors=lambda f: [
            (f.api_error("channel_not_found"), "Permanent", None),
            (f.api_error("not_in_channel"), "Permanent", None),
            (f.api_error("internal_error"), "Transient", None),
        ],
    ),
    Case(
        "discord-webhook",
        "discord",
        DiscordFake,
        lambda base, f: {
            "webhook_url": f"{base}/api/webhooks/{f.webhook_id}/{f.webhook_token}",
            "username": "Club",
        },
        lambda f: [f.webhook_token],
        expect_discord_webhook,
        "900001",
        inert_discord,
    ),
    Case(
        "discord-dm",
        "discord",
        DiscordFake,
        lambda base, f: {"bot_token": f.bot_token, "api_base": base + "/api/v10"},
        lambda f: [f.bot_token],
        expect_discord_dm,
        "900001",
        inert_discord,
        handles={"discord": "42"},
    ),
    Case(
        "telegram-dm",
        "telegram",
        TelegramFake,
        lambda base, f: {"token": f.token, "api_base": base},
        lambda f: [f.token],
        expect_telegram,
        "1",
        inert_telegram,
        handles={"telegram": "98765"},
    ),
    Case(
        "telegram-group",
        "telegram",
        TelegramFake,
        lambda base, f: {
            "token": f.token,
            "api_base": base,
            "chat_id": "-1001234",
            "parse_mode": "MarkdownV2",
            "disable_link_preview": True,
        },
        lambda f: [f.token],
        expect_telegram_group,
        "1",
        inert_telegram,
    ),
    Case(
        "wecom",
        "wecom",
        WecomFake,
        lambda base, f: {"webhook_url": f"{base}/cgi-bin/webhook/send?key={f.key}"},
        lambda f: [f.key],
        expect_wecom,
        None,
        inert_robot(wecom_content),
        body_errors=lambda f: [
            (f.code(45009, "api freq out of limit"), "Transient", 60.0),
            (f.code(-1, "system busy"), "Transient", None),
            (f.code(93000, "invalid webhook url"), "Permanent", None),
        ],
    ),
    Case(
        "dingtalk",
        "dingtalk",
        DingtalkFake,
        lambda base, f: {
            "webhook_url": f"{base}/robot/send?access_token={f.access_token}",
            "secret": f.secret,
        },
        lambda f: [f.access_token, f.secret],
        expect_dingtalk,
        None,
        inert_robot(dingtalk_content),
        body_errors=lambda f: [
            (f.code(130101, "send too fast, exceed 20 times per minute"), "Transient", 600.0),
            (f.code(310000, "keywords not in content"), "Permanent", None),
        ],
    ),
    Case(
        "feishu",
        "feishu",
        FeishuFake,
        lambda base, f: {
            "webhook_url": f"{base}/open-apis/bot/v2/hook/{f.hook_id}",
            "secret": f.secret,
        },
        lambda f: [f.hook_id, f.secret],
        expect_feishu,
        None,
        inert_feishu,
        body_errors=lambda f: [
            (f.code(11232, "frequency limited psm"), "Transient", 60.0),  # no wait given: a minute
            (f.code(9499, "Bad Request"), "Permanent", None),
            (f.code(19021, "sign match fail"), "Permanent", None),
        ],
    ),
]
