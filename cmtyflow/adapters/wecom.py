"""``wecom``: 企业微信 (WeCom) group robot webhook.

Request: ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=<key>`` with
``{"msgtype": "text", "text": {"content"}}`` or
``{"msgtype": "markdown", "markdown": {"content"}}``. The answer is always JSON
``{"errcode", "errmsg"}``; ``errcode`` 0 is success, 45009 is the per-robot
frequency limit (20 messages per minute) and -1 is "system busy": both transient.
Any other code is permanent (93000 invalid webhook URL, ...).

Limits count UTF-8 bytes: text content 2048, markdown content 4096. A robot has one
destination, its group: a message to a member is posted there. Text messages are not
parsed for markup, and only ``mentioned_list`` (never sent) mentions anyone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp
from pydantic import Field

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
from .ratelimit import WECOM_PER_ROBOT, RateLimiter
from .text import escape_markdown, fit_parts, pick

TEXT_BYTES = 2048
MARKDOWN_BYTES = 4096
RATE_LIMITED = 45009
BUSY = -1


class WecomSettings(AdapterSettings):
    webhook_url: SecretUrlSetting = Field(
        description="group robot webhook URL (https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...)"
    )


class WecomAdapter(HttpAdapter):
    name: ClassVar[str] = "wecom"
    description: ClassVar[str] = "企业微信 (WeCom) group robot: text and markdown messages"
    Settings: ClassVar[type[WecomSettings]] = WecomSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("markdown", "plain"),
        max_bytes=TEXT_BYTES,
        rate_per_second=WECOM_PER_ROBOT.rate,
        group_only=True,
    )
    settings: WecomSettings

    def __init__(
        self,
        settings: WecomSettings,
        channel: str = "wecom",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        return escape_markdown(value) if fmt == "markdown" else value

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        if fmt == "markdown":
            msgtype = "markdown"
            parts = fit_parts(
                text, max_length=None, max_bytes=MARKDOWN_BYTES, markup=True, platform=self.name
            )
        else:
            msgtype = "text"
            parts = fit_parts(text, max_length=None, max_bytes=TEXT_BYTES, platform=self.name)
        url = self.settings.webhook_url.get_secret_value()
        bucket = ("wecom", url)

        async def one(index: int, part: str) -> str | None:
            payload: dict[str, Any] = {"msgtype": msgtype, msgtype: {"content": part}}
            reply = await self.request(
                "POST", url, body=dumps(payload), buckets=((bucket, WECOM_PER_ROBOT),)
            )
            self._check(reply, bucket)
            return None

        return await self.send_parts(message, parts, one)

    def _check(self, reply: Reply, bucket: Any) -> None:
        data = reply.json()
        detail = None
        if isinstance(data, dict) and "errmsg" in data:
            detail = f"{data.get('errmsg')} (errcode {data.get('errcode')})"
        self.check_status(reply, detail, defer=bucket)
        if not isinstance(data, dict) or not isinstance(data.get("errcode"), int):
            raise TransientDeliveryError(f"wecom: unexpected answer (HTTP {reply.status})")
        code = data["errcode"]
        if code == 0:
            return
        if code == RATE_LIMITED:
            # The robot's window is one minute; wait for it rather than hammer it.
            self.limiter.defer(bucket, 60.0)
            raise TransientDeliveryError(f"wecom: {detail}", retry_after=60.0, rate_limited=True)
        if code == BUSY:
            raise TransientDeliveryError(f"wecom: {detail}")
        raise PermanentDeliveryError(f"wecom: {detail}")
