"""``telegram``: Bot API ``sendMessage`` to ``member.telegram`` (a chat ID), or to the
configured ``chat_id`` for the channel's own destination (a group or @channel).

Request: ``POST https://api.telegram.org/bot<token>/sendMessage`` with
``{"chat_id", "text", "parse_mode"}``. HTML text goes with ``parse_mode: HTML``,
markdown text is Telegram's MarkdownV2 and goes with ``parse_mode: MarkdownV2``;
plain text is escaped for the configured ``parse_mode`` (HTML entities, or a
backslash before each of ``_*[]()~`>#+-=|{}.!\\``) so nothing in it is parsed.

Answers are ``{"ok": true, "result": {"message_id": ...}}`` or ``{"ok": false,
"error_code", "description", "parameters"?}``; on flood control (429)
``parameters.retry_after`` holds the seconds to wait. 4096 characters per message,
counted after entity parsing: plain text is cut before it is escaped; HTML and
MarkdownV2 are cut between lines (else within one, after a sentence) into parts that
are each well-formed (the elements
open at a cut are closed there and opened again in the next part), counting the
marked-up text, which is never shorter than what Telegram counts.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, SecretStr

from ._http import HttpAdapter, Reply, dumps, parse_retry_after
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
    UrlSetting,
)
from .markup_split import Markup
from .ratelimit import TELEGRAM_PER_BOT, TELEGRAM_PER_CHAT, TELEGRAM_PER_GROUP, Bucket, RateLimiter
from .text import escape_html, escape_markdown_v2, fit_parts, pick

_NUMERIC = re.compile(r"-?\d+")


class TelegramSettings(AdapterSettings):
    token: SecretStr = Field(description="bot token from @BotFather")
    chat_id: str | None = Field(
        None, description="the channel's own destination: a chat ID (-100...) or @channelusername"
    )
    parse_mode: Literal["HTML", "MarkdownV2"] = Field(
        "HTML", description="markup plain text is escaped for and sent with"
    )
    disable_link_preview: bool = Field(False, description="do not show link previews")
    api_base: UrlSetting = Field("https://api.telegram.org", description="Bot API base URL")


class TelegramAdapter(HttpAdapter):
    name: ClassVar[str] = "telegram"
    description: ClassVar[str] = "Telegram Bot API sendMessage to member chats or a group/channel"
    Settings: ClassVar[type[TelegramSettings]] = TelegramSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("html", "markdown", "plain"),
        max_length=4096,
        rate_per_second=TELEGRAM_PER_CHAT.rate,
        needs_handle="telegram",
    )
    settings: TelegramSettings

    def __init__(
        self,
        settings: TelegramSettings,
        channel: str = "telegram",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        if fmt == "html":
            return escape_html(value)
        if fmt == "markdown":
            return escape_markdown_v2(value)
        return value

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        limit = self.capabilities.max_length
        if fmt == "plain":
            mode = self.settings.parse_mode
            escaper = escape_html if mode == "HTML" else escape_markdown_v2
            # The limit counts text after entity parsing: cut the raw text, then escape.
            parts = [escaper(p) for p in fit_parts(text, max_length=limit, platform=self.name)]
        else:
            mode = "HTML" if fmt == "html" else "MarkdownV2"
            # Each part is well-formed: elements open at a cut are closed and reopened.
            syntax: Markup = "html" if fmt == "html" else "markdown_v2"
            parts = fit_parts(text, max_length=limit, markup=syntax, platform=self.name)
        chat = self._chat(message)

        async def one(index: int, part: str) -> str | None:
            payload: dict[str, Any] = {
                "chat_id": int(chat) if _NUMERIC.fullmatch(chat) else chat,
                "text": part,
                "parse_mode": mode,
            }
            if self.settings.disable_link_preview:
                payload["link_preview_options"] = {"is_disabled": True}
            return await self._call("sendMessage", payload, self._buckets(chat))

        return await self.send_parts(message, parts, one)

    def _chat(self, message: OutboundMessage) -> str:
        if message.recipient is not None:
            handle = message.recipient.handles.get("telegram")
            if not handle:
                raise PermanentDeliveryError(
                    f"telegram: member {message.recipient.member_id} has no telegram handle (chat ID)"
                )
            return str(handle)
        if self.settings.chat_id:
            return self.settings.chat_id
        raise PermanentDeliveryError(
            f"telegram channel '{self.channel}' has no chat_id for messages to the channel"
        )

    def _buckets(self, chat: str) -> tuple[Bucket, ...]:
        bot = hashlib.sha256(self.settings.token.get_secret_value().encode()).hexdigest()
        # Group and channel IDs are negative; @names are public groups and channels.
        per_chat = TELEGRAM_PER_GROUP if chat.startswith(("-", "@")) else TELEGRAM_PER_CHAT
        return (("telegram", bot), TELEGRAM_PER_BOT), (("telegram", bot, chat), per_chat)

    async def _call(
        self, method: str, payload: dict[str, Any], buckets: tuple[Bucket, ...]
    ) -> str | None:
        url = f"{self.settings.api_base.rstrip('/')}/bot{self.settings.token.get_secret_value()}/{method}"
        reply = await self.request("POST", url, body=dumps(payload), buckets=buckets)
        return self._result(reply, buckets[-1][0])

    def _result(self, reply: Reply, chat_bucket: Any) -> str | None:
        data = reply.json()
        if not isinstance(data, dict):
            self.check_status(reply)
            raise TransientDeliveryError(f"telegram: answer was not JSON (HTTP {reply.status})")
        if data.get("ok"):
            result = data.get("result")
            if isinstance(result, dict) and result.get("message_id") is not None:
                return str(result["message_id"])
            return None
        description = str(data.get("description") or "request refused")
        raw_params = data.get("parameters")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        raw_code = data.get("error_code")
        code: int = raw_code if isinstance(raw_code, int) else reply.status
        if code == 429 or reply.status == 429:
            hint = params.get("retry_after")
            wait = (
                float(hint)
                if isinstance(hint, int | float)
                else parse_retry_after(reply.headers.get("Retry-After"))
            )
            if wait:
                self.limiter.defer(chat_bucket, wait)
            raise TransientDeliveryError(
                f"telegram: {description}", retry_after=wait, rate_limited=True
            )
        if params.get("migrate_to_chat_id") is not None:
            raise PermanentDeliveryError(
                f"telegram: {description}; the group is now chat {params['migrate_to_chat_id']}"
            )
        if 200 <= reply.status < 300:
            reply = Reply(code if code >= 400 else 400, reply.headers, reply.body)
        self.check_status(reply, description)
        raise PermanentDeliveryError(f"telegram: {description}")
