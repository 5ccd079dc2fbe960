"""Loopback fakes of each platform's API, answering as its documentation says.

Each fake records every request, checks it the way the platform would (tokens,
signatures, sizes, markup) and answers in the platform's own format. A test can
queue what the next requests get instead: ``fake.then(fake.rate_limited(3))``,
``fake.then(fake.error(500))``, ``fake.then("hang")`` (no answer until released).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web
from multidict import MultiDict

Responder = Callable[["Recorded"], web.Response]


@dataclass
class Recorded:
    method: str
    path: str
    query: MultiDict[str]
    raw_query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def as_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


@dataclass
class FakePlatform:
    requests: list[Recorded] = field(default_factory=list)
    queued: list[Responder | str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def then(self, *responders: Responder | str) -> None:
        self.queued.extend(responders)

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Recorded(
            request.method,
            request.path,
            MultiDict(request.query),
            request.rel_url.raw_query_string,
            dict(request.headers),
            await request.read(),
        )
        self.requests.append(rec)
        if self.queued:
            action = self.queued.pop(0)
            if action == "hang":
                await self.release.wait()
                return web.Response(status=204)
            assert callable(action)
            return action(rec)
        return self.respond(rec)

    def respond(self, rec: Recorded) -> web.Response:
        raise NotImplementedError

    # Builders tests use; each platform overrides with its own format.
    def rate_limited(self, retry_after: float) -> Responder:
        return lambda rec: web.Response(
            status=429, text="rate limited", headers={"Retry-After": f"{retry_after:g}"}
        )

    def error(self, status: int) -> Responder:
        return lambda rec: web.Response(status=status, text=f"error {status}")


class FakeClock:
    """Monotonic time that only moves when something sleeps on it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# ------------------------------------------------------------------ webhook


@dataclass
class WebhookReceiver(FakePlatform):
    path: str = "/hooks/cmtyflow"
    secret: str | None = None
    seen: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> id

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path != self.path:
            return web.Response(status=404, text="no such hook")
        if self.secret is not None:
            ts = rec.headers.get("X-Cmtyflow-Timestamp", "")
            mac = hmac.new(self.secret.encode(), ts.encode() + b"." + rec.body, hashlib.sha256)
            if rec.headers.get("X-Cmtyflow-Signature") != "sha256=" + mac.hexdigest():
                return web.Response(status=401, text="bad signature")
            if abs(time.time() - int(ts)) > 300:
                return web.Response(status=401, text="stale timestamp")
        key = rec.headers.get("Idempotency-Key")
        if not key:
            return web.Response(status=400, text="Idempotency-Key required")
        if key not in self.seen:
            self.seen[key] = f"evt-{next(self.ids)}"
        return as_json({"id": self.seen[key]}, status=202)


# ------------------------------------------------------------------ slack


@dataclass
class SlackFake(FakePlatform):
    hook_path: str = "/services/T000/B000/hooksecret123"
    bot_token: str = "xoxb-bot-secret-456"

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path == "/api/chat.postMessage":
            if rec.headers.get("Authorization") != f"Bearer {self.bot_token}":
                return as_json({"ok": False, "error": "invalid_auth"})
            body = rec.json
            if not body.get("channel"):
                return as_json({"ok": False, "error": "channel_not_found"})
            if not body.get("text"):
                return as_json({"ok": False, "error": "no_text"})
            ts = f"1700000000.{next(self.ids):06d}"
            return as_json(
                {
                    "ok": True,
                    "channel": body["channel"],
                    "ts": ts,
                    "message": {"text": body["text"]},
                }
            )
        if rec.path != self.hook_path:
            return web.Response(status=404, text="no_service")
        try:
            body = rec.json
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not body.get("text"):
            return web.Response(status=400, text="no_text")
        return web.Response(text="ok")

    def rate_limited(self, retry_after: float) -> Responder:
        def respond(rec: Recorded) -> web.Response:
            headers = {"Retry-After": f"{retry_after:g}"}
            if rec.path.startswith("/api/"):
                return as_json({"ok": False, "error": "ratelimited"}, 429, headers)
            return web.Response(status=429, text="rate_limited", headers=headers)

        return respond

    TEXTS = {
        400: "invalid_payload",
        403: "action_prohibited",
        404: "channel_not_found",
        410: "channel_is_archived",
    }

    def error(self, status: int) -> Responder:
        return lambda rec: web.Response(status=status, text=self.TEXTS.get(status, "rollup_error"))

    @staticmethod
    def api_error(error: str) -> Responder:
        return lambda rec: as_json({"ok": False, "error": error})


# ------------------------------------------------------------------ discord


@dataclass
class DiscordFake(FakePlatform):
    webhook_id: str = "111222333"
    webhook_token: str = "hookTokenSecret789"
    bot_token: str = "bot.secret.token"
    nonces: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _message(self, channel_id: str, body: dict[str, Any]) -> web.Response:
        content = body.get("content") or ""
        if len(content) > 2000:
            return as_json(
                {
                    "code": 50035,
                    "message": "Invalid Form Body",
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}},
                },
                400,
            )
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and nonce in self.nonces:
            return as_json(self.nonces[nonce])
        message = {"id": str(900000 + next(self.ids)), "channel_id": channel_id, "content": content}
        if nonce is not None:
            self.nonces[nonce] = message
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.5",
        }
        return as_json(message, headers=headers)

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path == f"/api/webhooks/{self.webhook_id}/{self.webhook_token}":
            response = self._message("555", rec.json)
            if rec.query.get("wait") != "true" and response.status == 200:
                return web.Response(status=204)
            return response
        if rec.path.startswith("/api/webhooks/"):
            return as_json({"message": "Unknown Webhook", "code": 10015}, 404)
        if rec.headers.get("Authorization") != f"Bot {self.bot_token}":
            return as_json({"message": "401: Unauthorized", "code": 0}, 401)
        if rec.path == "/api/v10/users/@me/channels":
            return as_json({"id": "7" + rec.json["recipient_id"], "type": 1})
        match = re.fullmatch(r"/api/v10/channels/(\d+)/messages", rec.path)
        if match:
            return self._message(match.group(1), rec.json)
        return as_json({"message": "404: Not Found", "code": 0}, 404)

    def rate_limited(self, retry_after: float) -> Responder:
        return lambda rec: as_json(
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
            429,
            {
                "Retry-After": str(int(retry_after) + 1),
                "X-RateLimit-Reset-After": f"{retry_after:g}",
                "X-RateLimit-Scope": "user",
                "X-RateLimit-Remaining": "0",
            },
        )

    MESSAGES = {
        400: (50035, "Invalid Form Body"),
        403: (50013, "Missing Permissions"),
        404: (10015, "Unknown Webhook"),
    }

    def error(self, status: int) -> Responder:
        if status in self.MESSAGES:
            code, message = self.MESSAGES[status]
            return lambda rec: as_json({"code": code, "message": message}, status)
        return lambda rec: web.Response(status=status, text="upstream connect error")


# ------------------------------------------------------------------ telegram

_TG_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "span",
    "tg-spoiler",
    "blockquote",
    "tg-emoji",
}


class _TelegramHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.bad: str | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in _TG_TAGS:
            self.bad = f'Unsupported start tag "{tag}"'

    def handle_data(self, data: str) -> None:
        self.text.append(data)


_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")


def telegram_parse(text: str, mode: str | None) -> str:
    """The text Telegram would display, or ValueError like its 'can't parse entities'."""
    if mode == "HTML":
        if re.search(r"&(?!(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)", text):
            raise ValueError("Can't parse entities: unsupported entity")
        parser = _TelegramHtml()
        parser.feed(text)
        if parser.bad:
            raise ValueError(f"Can't parse entities: {parser.bad}")
        return "".join(parser.text)
    if mode == "MarkdownV2":
        out, i = [], 0
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
                continue
            if ch in _MDV2_RESERVED:
                raise ValueError(
                    f"Can't parse entities: character '{ch}' is reserved and must be escaped with the preceding '\\'"
                )
            out.append(ch)
            i += 1
        return "".join(out)
    return text


@dataclass
class TelegramFake(FakePlatform):
    token: str = "123456:telegram-secret-ABC"

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path != f"/bot{self.token}/sendMessage":
            return as_json(
                {
                    "ok": False,
                    "error_code": 401 if rec.path.startswith("/bot") else 404,
                    "description": "Unauthorized" if rec.path.startswith("/bot") else "Not Found",
                },
                401 if rec.path.startswith("/bot") else 404,
            )
        body = rec.json
        if str(body.get("chat_id")) == "404":
            return self._bad("Bad Request: chat not found")
        try:
            shown = telegram_parse(body.get("text", ""), body.get("parse_mode"))
        except ValueError as exc:
            return self._bad(f"Bad Request: {exc}")
        if not shown.strip():
            return self._bad("Bad Request: message text is empty")
        if len(shown) > 4096:
            return self._bad("Bad Request: message is too long")
        return as_json(
            {
                "ok": True,
                "result": {
                    "message_id": next(self.ids),
                    "date": 1700000000,
                    "chat": {"id": body["chat_id"]},
                    "text": shown,
                },
            }
        )

    @staticmethod
    def _bad(description: str, status: int = 400) -> web.Response:
        return as_json({"ok": False, "error_code": status, "description": description}, status)

    def rate_limited(self, retry_after: float) -> Responder:
        return lambda rec: as_json(
            {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after:g}",
                "parameters": {"retry_after": retry_after},
            },
            429,
        )

    DESCRIPTIONS = {
        400: "Bad Request: chat not found",
        403: "Forbidden: bot was blocked by the user",
        404: "Not Found",
    }

    def error(self, status: int) -> Responder:
        if status in self.DESCRIPTIONS:
            return lambda rec: self._bad(self.DESCRIPTIONS[status], status)
        return lambda rec: web.Response(status=status, text="<html>502 Bad Gateway</html>")


# ------------------------------------------------------------------ wecom / dingtalk / feishu


@dataclass
class WecomFake(FakePlatform):
    key: str = "wecom-key-secret-0001"

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path != "/cgi-bin/webhook/send" or rec.query.get("key") != self.key:
            return as_json({"errcode": 93000, "errmsg": "invalid webhook url"})
        body = rec.json
        msgtype = body.get("msgtype")
        if msgtype not in ("text", "markdown"):
            return as_json({"errcode": 40008, "errmsg": "invalid message type"})
        content = body.get(msgtype, {}).get("content", "")
        if not content:
            return as_json({"errcode": 44004, "errmsg": "empty content"})
        if len(content.encode()) > (2048 if msgtype == "text" else 4096):
            return as_json({"errcode": 40058, "errmsg": "invalid parameter: content too long"})
        return as_json({"errcode": 0, "errmsg": "ok"})

    @staticmethod
    def code(errcode: int, errmsg: str) -> Responder:
        return lambda rec: as_json({"errcode": errcode, "errmsg": errmsg})


def dingtalk_sign(secret: str, timestamp: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class DingtalkFake(FakePlatform):
    access_token: str = "ding-token-secret-0002"
    secret: str | None = "SECdingsigningsecret0003"

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path != "/robot/send" or rec.query.get("access_token") != self.access_token:
            return as_json({"errcode": 300001, "errmsg": "token is not exist"})
        if self.secret is not None:
            ts = rec.query.get("timestamp", "0")
            fresh = abs(time.time() * 1000 - int(ts)) < 3600 * 1000
            if not fresh or rec.query.get("sign") != dingtalk_sign(self.secret, ts):
                return as_json({"errcode": 310000, "errmsg": "sign not match"})
        body = rec.json
        msgtype = body.get("msgtype")
        if msgtype == "text" and body["text"].get("content"):
            return as_json({"errcode": 0, "errmsg": "ok"})
        if msgtype == "markdown" and body["markdown"].get("title") and body["markdown"].get("text"):
            return as_json({"errcode": 0, "errmsg": "ok"})
        return as_json({"errcode": 40035, "errmsg": "缺少参数 json"})

    code = staticmethod(WecomFake.code)


def feishu_sign(secret: str, timestamp: str) -> str:
    mac = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class FeishuFake(FakePlatform):
    hook_id: str = "feishu-hook-secret-0004"
    secret: str | None = "feishusigningsecret0005"

    def respond(self, rec: Recorded) -> web.Response:
        if rec.path != f"/open-apis/bot/v2/hook/{self.hook_id}":
            return as_json(
                {
                    "code": 19001,
                    "msg": "param invalid: incoming webhook access token invalid",
                    "data": {},
                }
            )
        if len(rec.body) > 20 * 1024:
            return as_json({"code": 9499, "msg": "Bad Request", "data": {}})
        body = rec.json
        if self.secret is not None:
            ts = body.get("timestamp", "0")
            if abs(time.time() - int(ts)) > 3600 or body.get("sign") != feishu_sign(
                self.secret, ts
            ):
                return as_json(
                    {
                        "code": 19021,
                        "msg": "sign match fail or timestamp is not within one hour from current time",
                    }
                )
        if body.get("msg_type") != "text" or not body.get("content", {}).get("text"):
            return as_json({"code": 9499, "msg": "Bad Request", "data": {}})
        return as_json({"code": 0, "msg": "success", "data": {}})

    @staticmethod
    def code(code: int, msg: str) -> Responder:
        return lambda rec: as_json({"code": code, "msg": msg, "data": {}})
