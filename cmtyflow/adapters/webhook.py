"""``webhook``: POSTs each message as JSON to a URL of your own (SPEC 5.2).

Request: ``POST url`` with ``Content-Type: application/json`` and body
``{"key", "channel", "playbook", "member", "text", "format", "urgent"}``.
``Idempotency-Key: <key>`` is always sent, so a receiver that honours it makes an
in-doubt resend harmless (capabilities ``idempotent=True``).

With ``secret`` set, ``X-Cmtyflow-Timestamp: <unix seconds>`` and
``X-Cmtyflow-Signature: sha256=<hex>`` are added, where the hex is
HMAC-SHA256(secret, "<timestamp>." + raw body): the timestamp is inside what is signed,
so a receiver can refuse replays older than a few minutes.

Answers: 2xx delivered (``id`` from a JSON body is the receipt); 409 means a request
with the same key is still being processed (retry later); 429 with ``Retry-After``,
408 and 5xx retry; other 4xx fail.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from json.encoder import encode_basestring as _str  # a str as JSON, non-ASCII as is (as dumps)
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, SecretStr

from ._http import JSON_TYPE, HttpAdapter, dumps
from .base import (
    AdapterSettings,
    Capabilities,
    OutboundMessage,
    Receipt,
    TransientDeliveryError,
    UrlSetting,
)
from .ratelimit import RateLimiter
from .text import pick

SIGNATURE_HEADER = "X-Cmtyflow-Signature"
TIMESTAMP_HEADER = "X-Cmtyflow-Timestamp"


def body_of(
    key: str, channel: str, playbook: str | None, member: str | None, text: str, fmt: str, urgent: bool
) -> bytes:
    """The request body: ``_http.dumps`` of the payload, byte for byte (the fields in
    this order, compact, UTF-8 as is), written out directly when every value is a
    str (or None, or a bool for ``urgent``), as the dispatcher's always are."""
    if urgent is True or urgent is False:
        try:  # encode_basestring refuses anything but a str (TypeError)
            return (
                f'{{"key":{_str(key)},"channel":{_str(channel)},'
                f'"playbook":{"null" if playbook is None else _str(playbook)},'
                f'"member":{"null" if member is None else _str(member)},'
                f'"text":{_str(text)},"format":{_str(fmt)},"urgent":{"true" if urgent else "false"}}}'
            ).encode()
        except TypeError:
            pass
    payload = {
        "key": key, "channel": channel, "playbook": playbook, "member": member,
        "text": text, "format": fmt, "urgent": urgent,
    }
    return dumps(payload)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookSettings(AdapterSettings):
    url: UrlSetting = Field(description="http(s) URL that receives each message as a JSON POST")
    secret: SecretStr | None = Field(
        None,
        description="shared secret; signs each request with HMAC-SHA256 in X-Cmtyflow-Signature",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra request headers, e.g. Authorization; values may be ${env:NAME}",
    )


class WebhookAdapter(HttpAdapter):
    name: ClassVar[str] = "webhook"
    description: ClassVar[str] = "POST each message as JSON to your own URL, signed and idempotent"
    Settings: ClassVar[type[WebhookSettings]] = WebhookSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("plain", "markdown", "html"), idempotent=True
    )
    settings: WebhookSettings

    def __init__(
        self,
        settings: WebhookSettings,
        channel: str = "webhook",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, channel, session=session, timeout=timeout, limiter=limiter)
        self._clock = clock
        # The headers every request carries, in the order they are sent: the settings'
        # own, then the content type (which replaces one of the same spelling).
        self._headers = {**settings.headers, "Content-Type": JSON_TYPE}

    async def send(self, message: OutboundMessage) -> Receipt:
        fmt, text = pick(message, self.capabilities.formats)
        recipient = message.recipient
        key = message.key
        body = body_of(
            key, message.channel, message.playbook,
            recipient.member_id if recipient is not None else None, text, fmt, message.urgent,
        )
        headers = self._headers.copy()
        headers["Idempotency-Key"] = key
        secret = self.settings.secret
        if secret is not None:
            timestamp = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret.get_secret_value(), timestamp, body)
        reply = await self.request("POST", self.settings.url, body=body, headers=headers)
        if not 200 <= reply.status < 300:
            if reply.status == 409:
                raise TransientDeliveryError(
                    f"{self.name}: a request with key {key} is still being processed"
                )
            self.check_status(reply)
        data: Any = reply.json()
        platform_id = data.get("id") if data.__class__ is dict else None
        return Receipt(None if platform_id is None else str(platform_id), {})
