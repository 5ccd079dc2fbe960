"""``dingtalk``: 钉钉 (DingTalk) custom robot webhook, with optional signing (加签).

Request: ``POST https://oapi.dingtalk.com/robot/send?access_token=<token>`` with
``{"msgtype": "text", "text": {"content"}, "at": {"isAtAll": false}}`` or
``{"msgtype": "markdown", "markdown": {"title", "text"}, "at": {"isAtAll": false}}``.

Signing, when ``secret`` (the ``SEC...`` string) is set: ``timestamp`` is the current
time in milliseconds; ``sign`` is base64(HMAC-SHA256(key=secret,
msg=timestamp + "\\n" + secret)); both are added to the URL's query, URL-encoded.

The answer is ``{"errcode", "errmsg"}``. Each robot may send 20 messages a minute;
past that it answers errcode 130101 ("send too fast") and is blocked for 10
minutes, so that error is transient with ``retry_after`` 600 s. A redirect is
transient too, after 600 s, but costs an attempt (it is not documented as the limit,
and a webhook URL that always redirects must end). -1 ("system busy") is transient; anything else (310000 bad signature, keyword or IP; 300001 bad token;
...) is permanent. ``isAtAll`` is always false and no ``atMobiles`` are sent, so no
text can mention anyone. A robot has one destination, its group.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from pydantic import Field, SecretStr
from yarl import URL

from ._http import HttpAdapter, Reply, dumps
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    SecretUrlSetting,
    TransientDeliveryError,
)
from .ratelimit import DINGTALK_PER_ROBOT, RateLimiter
from .text import escape_markdown, fit_parts, pick

MAX_BYTES = 20000
RATE_LIMITED = frozenset({130101})
BLOCKED_FOR = 600.0
BUSY = -1


def sign(secret: str, timestamp_ms: str) -> str:
    """The base64 signature, before URL-encoding."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def _place(url: str, location: str | None) -> str:
    """Where a redirect points: its scheme and host (with a port), never its path or
    query; a relative one is on the webhook's own host."""
    if not location:
        return "an unnamed place"
    parts = urlsplit(urljoin(url, location.strip()))
    if not parts.hostname:
        return "an unnamed place"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}"


class DingtalkSettings(AdapterSettings):
    webhook_url: SecretUrlSetting = Field(
        description="robot webhook URL (https://oapi.dingtalk.com/robot/send?access_token=...)"
    )
    secret: SecretStr | None = Field(
        None, description="signing secret (SEC...) when 加签 is enabled"
    )
    title: str = Field(
        "通知", description="title of markdown messages when the message has no subject"
    )


class DingtalkAdapter(HttpAdapter):
    name: ClassVar[str] = "dingtalk"
    description: ClassVar[str] = (
        "钉钉 (DingTalk) custom robot with optional signing: text and markdown"
    )
    Settings: ClassVar[type[DingtalkSettings]] = DingtalkSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("markdown", "plain"),
        max_bytes=MAX_BYTES,
        rate_per_second=DINGTALK_PER_ROBOT.rate,
        group_only=True,
    )
    settings: DingtalkSettings

    def __init__(
        self,
        settings: DingtalkSettings,
        channel: str = "dingtalk",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)
        self._clock = clock

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        return escape_markdown(value) if fmt == "markdown" else value

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        markup = fmt == "markdown"
        parts = fit_parts(
            text, max_length=None, max_bytes=MAX_BYTES, markup=markup, platform=self.name
        )
        url = self.settings.webhook_url.get_secret_value()
        bucket = ("dingtalk", url)
        title = message.subject or self.settings.title

        async def one(index: int, part: str) -> str | None:
            payload: dict[str, Any]
            if markup:
                payload = {"msgtype": "markdown", "markdown": {"title": title, "text": part}}
            else:
                payload = {"msgtype": "text", "text": {"content": part}}
            payload["at"] = {"isAtAll": False}
            body = dumps(payload)
            reply = await self.request(
                "POST",
                url,
                buckets=((bucket, DINGTALK_PER_ROBOT),),
                # Signed after the rate-limit wait: the timestamp must be fresh.
                prepare=lambda: (self._signed(url), body),
            )
            self._check(reply, bucket, url)
            return None

        return await self.send_parts(message, parts, one)

    def _signed(self, url: str) -> str | URL:
        if self.settings.secret is None:
            return url
        timestamp = str(round(self._clock() * 1000))
        signature = quote(sign(self.settings.secret.get_secret_value(), timestamp), safe="")
        # Encoded by hand, as documented ("+", "/" and "=" percent-encoded); yarl would
        # leave "/" and "=" as they are.
        base = str(URL(url))
        joined = f"{base}{'&' if '?' in base else '?'}timestamp={timestamp}&sign={signature}"
        return URL(joined, encoded=True)

    def _check(self, reply: Reply, bucket: Any, url: str) -> None:
        data = reply.json()
        detail = None
        if isinstance(data, dict) and "errmsg" in data:
            detail = f"{data.get('errmsg')} (errcode {data.get('errcode')})"
        if reply.status in (301, 302, 303, 307, 308):
            # A blocked robot has been seen to redirect instead of answering, so this is
            # retried after the block's 10 minutes; but nothing documents it as the
            # limit, and a webhook URL that always redirects (moved, http:// upgraded,
            # a proxy's login page) must end: each try counts an attempt. The target's
            # scheme and host only: its query may carry the token.
            raise TransientDeliveryError(
                f"dingtalk: HTTP {reply.status} redirect to {_place(url, reply.headers.get('Location'))}; "
                "check webhook_url if this lasts",
                retry_after=BLOCKED_FOR,
            )
        self.check_status(reply, detail, defer=bucket)
        if not isinstance(data, dict) or not isinstance(data.get("errcode"), int):
            raise TransientDeliveryError(f"dingtalk: unexpected answer (HTTP {reply.status})")
        code = data["errcode"]
        if code == 0:
            return
        if code in RATE_LIMITED:
            self.limiter.defer(bucket, BLOCKED_FOR)
            raise TransientDeliveryError(
                f"dingtalk: {detail}", retry_after=BLOCKED_FOR, rate_limited=True
            )
        if code == BUSY:
            raise TransientDeliveryError(f"dingtalk: {detail}")
        raise PermanentDeliveryError(f"dingtalk: {detail}")
