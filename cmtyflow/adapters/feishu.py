"""``feishu``: 飞书 (Feishu / Lark) custom bot webhook, with optional signature check.

Request: ``POST https://open.feishu.cn/open-apis/bot/v2/hook/<id>`` with
``{"msg_type": "text", "content": {"text"}}``; with ``secret`` set, the body also
holds ``timestamp`` (seconds, as a string) and ``sign`` =
base64(HMAC-SHA256(key=timestamp + "\\n" + secret, msg=b"")). Note the unusual
shape: the joined string is the HMAC *key* and the message is empty.

The answer is ``{"code", "msg", "data"}`` (older deployments also send
``StatusCode``/``StatusMessage``). ``code`` 0 is success. 11232 is the bot's
frequency limit (100 per minute and 5 per second per bot), and 99991400 the Open
Platform's (with HTTP 400 and ``x-ogw-ratelimit-reset``, seconds): both rate limits,
which hold the bot for that long, or ``NO_WAIT_HOLD`` (a minute) when no wait is given.
9499 is "Bad Request" (malformed body, or over the 20 KB body limit) and 19021
(signature or timestamp) are permanent, as is any other code. HTTP 429 is transient.

The body limit counts the text as it is sent, JSON-escaped (a line break is two bytes
there, a control character six), so a long text is cut by that measure.

Text messages turn ``<at user_id="all">`` into a mention of everyone, so that
tag is defused in every message; nothing else in text is parsed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, SecretStr

from ._http import HttpAdapter, Reply, dumps, parse_retry_after
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    SecretUrlSetting,
    TransientDeliveryError,
)
from .ratelimit import FEISHU_PER_MINUTE, FEISHU_PER_SECOND, RateLimiter
from .text import defuse_feishu_at, pick, split_text

# The request body may not exceed 20 KB; this leaves room for the JSON around the text,
# measured as the text is in the body (``body_len``).
MAX_BYTES = 18000
RATE_LIMITED = frozenset({11232, 99991400})
# 11232 (and 9499 "too many request") say neither which of the bot's two windows was
# hit nor for how long: the bot is then held for the longer window, a minute, so that
# the other messages of the pass do not go into the limit too.
NO_WAIT_HOLD = 60.0
# 9499 is the gateway's general refusal ("Bad Request", a body too large), and also what
# a custom bot answers, with HTTP 400, when it is sent to too fast: {"code": 9499, "msg":
# "too many request"}. Only the latter waits and goes again.
TOO_MANY = 9499


def rate_limited(code: Any, data: Any) -> bool:
    if code in RATE_LIMITED:
        return True
    return code == TOO_MANY and "too many request" in str(data.get("msg") or "").lower()


def body_len(text: str) -> int:
    """The UTF-8 bytes ``text`` takes in the request body (``dumps``, as it is sent):
    JSON-escaped, quotes included."""
    return len(dumps(defuse_feishu_at(text)))


def sign(secret: str, timestamp: str) -> str:
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


class FeishuSettings(AdapterSettings):
    webhook_url: SecretUrlSetting = Field(
        description="custom bot webhook URL (https://open.feishu.cn/open-apis/bot/v2/hook/...)"
    )
    secret: SecretStr | None = Field(None, description="signing secret when 签名校验 is enabled")


class FeishuAdapter(HttpAdapter):
    name: ClassVar[str] = "feishu"
    description: ClassVar[str] = (
        "飞书 (Feishu/Lark) custom bot with optional signing: text messages"
    )
    Settings: ClassVar[type[FeishuSettings]] = FeishuSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("plain",),
        max_bytes=MAX_BYTES,
        rate_per_second=FEISHU_PER_MINUTE.rate,
        group_only=True,
    )
    settings: FeishuSettings

    def __init__(
        self,
        settings: FeishuSettings,
        channel: str = "feishu",
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
        return defuse_feishu_at(value)

    async def send(self, message: OutboundMessage) -> Receipt:
        _, text = pick(message, self.capabilities.formats)
        parts = split_text(text, MAX_BYTES, measure=body_len)
        url = self.settings.webhook_url.get_secret_value()
        buckets = (
            (("feishu", url, "minute"), FEISHU_PER_MINUTE),
            (("feishu", url, "second"), FEISHU_PER_SECOND),
        )

        async def one(index: int, part: str) -> str | None:
            payload: dict[str, Any] = {
                "msg_type": "text",
                "content": {"text": defuse_feishu_at(part)},
            }

            def signed() -> tuple[str, bytes | None]:
                # After the rate-limit wait: the timestamp must be fresh (19021 otherwise).
                secret = self.settings.secret
                if secret is None:
                    return url, dumps(payload)
                timestamp = str(int(self._clock()))
                return url, dumps({"timestamp": timestamp, "sign": sign(secret.get_secret_value(), timestamp), **payload})

            reply = await self.request("POST", url, buckets=buckets, prepare=signed)
            self._check(reply, buckets[0][0])
            return None

        return await self.send_parts(message, parts, one)

    def _check(self, reply: Reply, bucket: Any) -> None:
        data = reply.json()
        code = None
        if isinstance(data, dict):
            code = data.get("code", data.get("StatusCode"))
        detail = None
        if isinstance(data, dict) and code is not None:
            detail = f"{data.get('msg') or data.get('StatusMessage')} (code {code})"
        # Seconds until the limit resets, when said (a value that is not one is ignored).
        wait = parse_retry_after(reply.headers.get("x-ogw-ratelimit-reset"))
        if reply.status == 429:
            self.check_status(reply, detail, retry_after=wait, defer=bucket)
        if isinstance(code, int) and rate_limited(code, data):
            # The bot's limit does not say which of its two windows was hit, nor for how long.
            wait = wait or NO_WAIT_HOLD
            self.limiter.defer(bucket, wait)
            raise TransientDeliveryError(f"feishu: {detail}", retry_after=wait, rate_limited=True)
        self.check_status(reply, detail, defer=bucket)
        if not isinstance(code, int):
            raise TransientDeliveryError(f"feishu: unexpected answer (HTTP {reply.status})")
        if code != 0:
            raise PermanentDeliveryError(f"feishu: {detail}")
