"""``discord``: channel posts through a webhook; with a bot token, posts to a channel
ID and direct messages to ``member.discord`` (a user ID).

Execute Webhook: ``POST <webhook_url>?wait=true`` with ``{"content",
"allowed_mentions": {"parse": []}, "username"?}``; ``wait=true`` makes Discord answer
with the created message (its ``id`` is the receipt) and report errors.

Bot: ``POST /channels/{id}/messages`` with ``Authorization: Bot <token>`` and
``{"content", "allowed_mentions", "nonce", "enforce_nonce": true}``. The nonce is
derived from the message key: Discord then returns the message already created
with that nonce instead of creating another, for the few minutes it remembers
nonces. That covers a quick retry after a timeout, but not a resend after a long
outage, so ``idempotent`` stays False. Execute Webhook takes no nonce at all.
A direct message first opens the DM channel (``POST /users/@me/channels``).

``allowed_mentions: {"parse": []}`` is always sent: nothing in the text can ping
@everyone, @here, a role or a user. Plain text is also backslash-escaped so member
data renders literally, except inside URLs: Discord does not unescape in a link.
Content is limited to 2000 characters.

Errors: 429 with JSON ``retry_after`` (seconds, fractional) and ``global``; also
``X-RateLimit-Reset-After`` and ``Retry-After`` headers. A 429 holds back the route's
bucket; a global one (``"global": true``, or ``X-RateLimit-Global: true``) holds back
every request of the adapter, which all take a token from one bucket (the bot's, or
for a webhook-only channel its webhook's). A rate-limit header that is not a number
of seconds is ignored. Other 4xx carry ``{"code", "message"}``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, SecretStr, field_validator, model_validator

import cmtyflow

from ._http import HttpAdapter, Reply, dumps
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    SecretUrlSetting,
    UrlSetting,
)
from .ratelimit import (
    DISCORD_PER_BOT,
    DISCORD_PER_CHANNEL,
    DISCORD_PER_WEBHOOK,
    Bucket,
    RateLimiter,
)
from .text import escape_discord, escape_discord_text, fit_escaped, fit_parts, pick

NO_MENTIONS: dict[str, list[str]] = {"parse": []}
USER_AGENT = f"DiscordBot (https://pypi.org/project/cmtyflow/, {cmtyflow.__version__})"


def nonce_for(key: str, index: int = 0) -> str:
    """At most 25 characters, stable for a message key (and part)."""
    seed = key if index == 0 else f"{key}#{index}"
    return hashlib.sha256(seed.encode()).hexdigest()[:25]


def seconds(value: object) -> float | None:
    """A wait from a rate-limit header or JSON field: a finite number of seconds, not
    negative; anything else (a malformed header) is None, and is ignored."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


class DiscordSettings(AdapterSettings):
    webhook_url: SecretUrlSetting | None = Field(
        None,
        description="webhook URL (https://discord.com/api/webhooks/ID/TOKEN) for channel posts",
    )
    bot_token: SecretStr | None = Field(
        None, description="bot token, for direct messages to member.discord and posts to channel_id"
    )
    channel_id: str | None = Field(
        None, description="channel ID the bot posts to when there is no webhook_url"
    )
    username: str | None = Field(
        None, description="name shown on webhook posts instead of the webhook's"
    )
    api_base: UrlSetting = Field("https://discord.com/api/v10", description="Discord API base URL")

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        # Discord refuses every post (400) with a webhook name it does not allow.
        if value is None:
            return value
        if not 1 <= len(value.strip()) <= 80:
            raise ValueError("username must be 1 to 80 characters (Discord's limit for webhook names)")
        for word in ("discord", "clyde"):
            if word in value.lower():
                raise ValueError(f"username may not contain '{word}' (Discord refuses such webhook names)")
        return value

    @model_validator(mode="after")
    def _destination(self) -> DiscordSettings:
        if self.webhook_url is None and self.bot_token is None:
            raise ValueError("set webhook_url, bot_token, or both")
        if self.channel_id is not None and self.bot_token is None:
            raise ValueError("channel_id is used with bot_token")
        return self


class DiscordAdapter(HttpAdapter):
    name: ClassVar[str] = "discord"
    description: ClassVar[str] = "Discord: webhook for the channel, bot token for direct messages"
    Settings: ClassVar[type[DiscordSettings]] = DiscordSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("markdown", "plain"),
        max_length=2000,
        rate_per_second=DISCORD_PER_WEBHOOK.rate,
        needs_handle="discord",
    )
    settings: DiscordSettings

    def __init__(
        self,
        settings: DiscordSettings,
        channel: str = "discord",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)
        self._dm_channels: dict[str, str] = {}  # user ID -> DM channel ID

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        return escape_discord(value) if fmt == "markdown" else value

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        limit = self.capabilities.max_length
        if fmt == "plain":
            parts = fit_escaped(text, escape_discord_text, max_length=limit, platform=self.name)
        else:
            parts = fit_parts(text, max_length=limit, markup=True, platform=self.name)
        dm_user = self._dm_user(message)

        async def one(index: int, part: str) -> str | None:
            if dm_user is not None:
                channel_id = await self._dm_channel(dm_user)
                return await self._create_message(channel_id, part, nonce_for(message.key, index))
            if self.settings.webhook_url is not None:
                return await self._execute_webhook(part)
            if self.settings.channel_id is not None:
                return await self._create_message(
                    self.settings.channel_id, part, nonce_for(message.key, index)
                )
            raise PermanentDeliveryError(
                f"discord channel '{self.channel}' has no channel destination: "
                "set webhook_url or channel_id"
            )

        return await self.send_parts(message, parts, one)

    def _dm_user(self, message: OutboundMessage) -> str | None:
        if message.recipient is None or self.settings.bot_token is None:
            return None
        handle = message.recipient.handles.get("discord")
        if not handle:
            raise PermanentDeliveryError(
                f"discord: member {message.recipient.member_id} has no discord handle (user ID)"
            )
        return handle

    # ------------------------------------------------------------ calls

    def _bot_headers(self) -> dict[str, str]:
        assert self.settings.bot_token is not None
        return {
            "Authorization": "Bot " + self.settings.bot_token.get_secret_value(),
            "User-Agent": USER_AGENT,
        }

    def _api(self, path: str) -> str:
        return self.settings.api_base.rstrip("/") + path

    async def _execute_webhook(self, content: str) -> str | None:
        assert self.settings.webhook_url is not None
        url = self.settings.webhook_url.get_secret_value()
        payload: dict[str, Any] = {"content": content, "allowed_mentions": NO_MENTIONS}
        if self.settings.username:
            payload["username"] = self.settings.username
        bucket = ("discord", "webhook", url)
        reply = await self.request(
            "POST",
            url,
            body=dumps(payload),
            params={"wait": "true"},
            buckets=((bucket, DISCORD_PER_WEBHOOK), self._global_bucket()),
        )
        return self._message_id(reply, bucket)

    async def _create_message(self, channel_id: str, content: str, nonce: str) -> str | None:
        payload = {
            "content": content,
            "allowed_mentions": NO_MENTIONS,
            "nonce": nonce,
            "enforce_nonce": True,
        }
        bucket = ("discord", "channel", channel_id)
        reply = await self.request(
            "POST",
            self._api(f"/channels/{channel_id}/messages"),
            body=dumps(payload),
            headers=self._bot_headers(),
            buckets=((bucket, DISCORD_PER_CHANNEL), self._global_bucket()),
        )
        return self._message_id(reply, bucket)

    def _bot_bucket(self) -> tuple[str, str, str]:
        assert self.settings.bot_token is not None
        token = self.settings.bot_token.get_secret_value()
        return ("discord", "bot", hashlib.sha256(token.encode()).hexdigest())

    def _global_bucket(self) -> Bucket:
        """The bucket every request of this adapter takes a token from, so that a global
        429 holds them all back: the bot's (50 requests/s, Discord's global limit), or a
        webhook-only channel's own."""
        if self.settings.bot_token is not None:
            return (self._bot_bucket(), DISCORD_PER_BOT)
        assert self.settings.webhook_url is not None
        url = self.settings.webhook_url.get_secret_value()
        return (("discord", "global", url), DISCORD_PER_BOT)

    async def _dm_channel(self, user_id: str) -> str:
        if user_id in self._dm_channels:
            return self._dm_channels[user_id]
        reply = await self.request(
            "POST",
            self._api("/users/@me/channels"),
            body=dumps({"recipient_id": user_id}),
            headers=self._bot_headers(),
            buckets=(self._global_bucket(),),
        )
        channel_id = self._message_id(reply, None)
        if channel_id is None:
            raise PermanentDeliveryError("discord: opening the DM channel returned no id")
        self._dm_channels[user_id] = channel_id
        return channel_id

    def _message_id(self, reply: Reply, bucket: Hashable | None) -> str | None:
        """The ``id`` of a 2xx answer; a 429 holds back ``bucket`` (the route's), or every
        request of the adapter when the limit hit is the global one."""
        data = reply.json()
        if reply.status == 429:
            body: dict[str, Any] = data if isinstance(data, dict) else {}
            wait = seconds(body.get("retry_after"))
            if wait is None:
                wait = seconds(reply.headers.get("X-RateLimit-Reset-After"))
            hit_global = (
                body.get("global") is True
                or reply.headers.get("X-RateLimit-Global", "").strip().lower() == "true"
            )
            message = body.get("message")
            scope = " (global)" if hit_global else ""
            self.check_status(
                reply,
                f"{message or 'too many requests'}{scope}",
                retry_after=wait,
                defer=self._global_bucket()[0] if hit_global else bucket,
            )
        detail = None
        if isinstance(data, dict) and "message" in data:
            detail = f"{data['message']} (code {data.get('code')})"
        self.check_status(reply, detail, defer=bucket)
        if bucket is not None and reply.headers.get("X-RateLimit-Remaining") == "0":
            reset = seconds(reply.headers.get("X-RateLimit-Reset-After"))
            if reset:
                self.limiter.defer(bucket, reset)
        if isinstance(data, dict) and data.get("id") is not None:
            return str(data["id"])
        return None
