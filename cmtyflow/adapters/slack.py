"""``slack``: channel posts through an incoming webhook; direct messages (and channel
posts without a webhook) through ``chat.postMessage`` with a bot token.

Incoming webhook: ``POST <webhook_url>`` with ``{"text", "mrkdwn"}``; Slack answers
``200 ok`` as plain text, or an HTTP error whose body names it (``invalid_payload``,
``no_service``, ``channel_not_found``, ``action_prohibited``, ...); 429 carries
``Retry-After``.

Web API: ``POST https://slack.com/api/chat.postMessage`` with
``Authorization: Bearer xoxb-...`` and ``{"channel", "text", "mrkdwn"}``. A member is
addressed by ``member.slack`` (a user ID such as ``U0123ABC``: Slack delivers to the
app's DM with that user). Slack answers HTTP 200 with ``{"ok": true, "ts": ...}`` or
``{"ok": false, "error": "..."}``; a few of those errors are transient.

Plain text goes with ``mrkdwn: false`` and ``& < >`` escaped (Slack's only control
characters), so member data cannot form ``<!everyone>``, ``<@U1>`` or a link.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp
from pydantic import Field, SecretStr, model_validator

from ._http import HttpAdapter, dumps, parse_retry_after
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    SecretUrlSetting,
    TransientDeliveryError,
    UrlSetting,
)
from .ratelimit import SLACK_PER_CHANNEL, RateLimiter
from .text import escape_slack, escape_slack_mrkdwn, fit_parts, pick

# chat.postMessage errors that mean "too many requests": the Web API's own limit
# (``ratelimited``, with HTTP 429) and the limit on posting (``rate_limited``: "Application
# has posted too many messages", with HTTP 200). Retried without costing an attempt.
RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
# How long a ``rate_limited`` (or ``ratelimited``) answer without ``Retry-After`` holds
# the destination: Slack gives no wait with the posting limit, which is about a message
# a second per channel with short bursts, and several hundred a minute per workspace.
# The other messages to the channel wait too, instead of each going into the limit.
NO_WAIT_HOLD = 30.0
# chat.postMessage errors that mean "try again later" rather than "this will never work".
TRANSIENT_ERRORS = RATE_LIMIT_ERRORS | {
    "fatal_error", "internal_error", "service_unavailable", "request_timeout"
}


class SlackSettings(AdapterSettings):
    webhook_url: SecretUrlSetting | None = Field(
        None,
        description="incoming webhook URL (https://hooks.slack.com/services/...) for channel posts",
    )
    bot_token: SecretStr | None = Field(
        None,
        description="bot token (xoxb-...) with chat:write, for direct messages to member.slack",
    )
    channel_id: str | None = Field(
        None, description="channel ID the bot posts to when there is no webhook_url (e.g. C0123ABC)"
    )
    api_base: UrlSetting = Field("https://slack.com/api", description="Slack Web API base URL")

    @model_validator(mode="after")
    def _destination(self) -> SlackSettings:
        if self.webhook_url is None and self.bot_token is None:
            raise ValueError("set webhook_url, bot_token, or both")
        if self.channel_id is not None and self.bot_token is None:
            raise ValueError("channel_id is used with bot_token")
        return self


class SlackAdapter(HttpAdapter):
    name: ClassVar[str] = "slack"
    description: ClassVar[str] = (
        "Slack: incoming webhook for the channel, bot token for direct messages"
    )
    Settings: ClassVar[type[SlackSettings]] = SlackSettings
    # 40,000 characters are accepted; Slack recommends at most 4,000 per message.
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("markdown", "plain"),
        max_length=4000,
        rate_per_second=SLACK_PER_CHANNEL.rate,
        needs_handle="slack",
    )
    settings: SlackSettings

    def __init__(
        self,
        settings: SlackSettings,
        channel: str = "slack",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        # Plain text is escaped as a whole when it is sent.
        return escape_slack_mrkdwn(value) if fmt == "markdown" else value

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        markup = fmt == "markdown"
        parts = fit_parts(
            text, max_length=self.capabilities.max_length, markup=markup, platform=self.name
        )
        if not markup:
            parts = [escape_slack(p) for p in parts]
        target = self._target(message)

        async def one(index: int, part: str) -> str | None:
            payload: dict[str, Any] = {"text": part, "mrkdwn": markup}
            if target is None:
                return await self._post_webhook(payload)
            return await self._post_message(target, payload)

        return await self.send_parts(message, parts, one)

    def _target(self, message: OutboundMessage) -> str | None:
        """None: the incoming webhook; else the channel or user ID for chat.postMessage."""
        s = self.settings
        if message.recipient is not None and s.bot_token is not None:
            handle = message.recipient.handles.get("slack")
            if not handle:
                raise PermanentDeliveryError(
                    f"slack: member {message.recipient.member_id} has no slack handle (user ID)"
                )
            return handle
        if s.webhook_url is not None:
            return None
        if s.channel_id is not None:
            return s.channel_id
        raise PermanentDeliveryError(
            f"slack channel '{self.channel}' has no channel destination: set webhook_url or channel_id"
        )

    async def _post_webhook(self, payload: dict[str, Any]) -> str | None:
        assert self.settings.webhook_url is not None
        url = self.settings.webhook_url.get_secret_value()
        bucket = ("slack", "webhook", url)
        reply = await self.request(
            "POST", url, body=dumps(payload), buckets=((bucket, SLACK_PER_CHANNEL),)
        )
        self.check_status(reply, reply.text.strip() or None, defer=bucket)
        return None

    async def _post_message(self, target: str, payload: dict[str, Any]) -> str | None:
        assert self.settings.bot_token is not None
        bucket = ("slack", "chat", target)
        reply = await self.request(
            "POST",
            self.settings.api_base.rstrip("/") + "/chat.postMessage",
            body=dumps({"channel": target, **payload}),
            headers={"Authorization": "Bearer " + self.settings.bot_token.get_secret_value()},
            buckets=((bucket, SLACK_PER_CHANNEL),),
        )
        data = reply.json()
        error = data.get("error") if isinstance(data, dict) else None
        self.check_status(reply, error, defer=bucket)
        if not isinstance(data, dict):
            raise TransientDeliveryError("slack: chat.postMessage answered without JSON")
        if not data.get("ok"):
            if error in TRANSIENT_ERRORS:
                wait = parse_retry_after(reply.headers.get("Retry-After"))
                limited = error in RATE_LIMIT_ERRORS
                if limited and not wait:
                    wait = NO_WAIT_HOLD
                if wait:
                    self.limiter.defer(bucket, wait)
                raise TransientDeliveryError(f"slack: {error}", retry_after=wait, rate_limited=limited)
            raise PermanentDeliveryError(f"slack: {error or 'request refused'}")
        ts = data.get("ts")
        return str(ts) if ts is not None else None
