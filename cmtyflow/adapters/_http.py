"""What every HTTP adapter shares: the aiohttp session, timeouts, rate limits, and the
mapping of transport failures and HTTP statuses to delivery errors (SPEC 5.4).

Rules:
- The runner passes one shared ``aiohttp.ClientSession``; an adapter given none makes
  its own in ``open()`` and closes only that one.
- A request waits for its rate-limit tokens in the caller's task for at most
  ``MAX_WAIT_IN_WORKER`` seconds; a longer wait raises a rate-limited
  ``TransientDeliveryError`` with the wait, taking no token, so that the dispatcher
  puts the message off (no attempt counted) and its worker takes the next one.
- Every request has a total timeout. A timeout, a refused or dropped connection, a
  429, a 408 and any 5xx are transient; any other 4xx is permanent; a redirect is
  permanent (an API endpoint never legitimately redirects a POST) unless an adapter
  knows better. Platform conventions inside a 2xx body are mapped by each adapter.
- For an adapter that cannot deduplicate, a timeout or a dropped connection after the
  body began to be written is ``InDoubtDeliveryError`` (the platform may have the
  message); before that (no connection, a refused one, none free in time) it is an
  ordinary transient failure. The body is handed to aiohttp as a payload that notes
  when its write begins: aiohttp writes a body only through its payload, and a
  platform cannot act on a request whose body it did not get whole (its length is
  sent first). A write that began and failed at once counts as in doubt too.
- Error messages name the host, never the URL: webhook URLs carry credentials.
- A message split in parts remembers how many parts went out, so a retry in the same
  process resumes after them instead of repeating them.
- A reply is read up to ``MAX_REPLY`` (1 MiB; receipts and error details are small):
  a larger or endless one is cut there and its connection closed.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import BaseModel
from yarl import URL

from .base import (
    BEFORE_WRITE,
    Capabilities,
    InDoubtDeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
    masked,
    one_line,
    redact,
    secret_values,
)
from .ratelimit import Bucket, Limiter, RateLimiter, WaitTooLong, default_limiter


class Reply(NamedTuple):
    """An HTTP reply (immutable; a named tuple, made once per request)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as text, in the charset its Content-Type names (else UTF-8)."""
        found = _CHARSET.search(self.headers.get("Content-Type", ""))
        if found:
            try:  # a name Python does not know, or not a text encoding ("base64"): UTF-8
                return self.body.decode(found.group(1).strip("\"'"), errors="replace")
            except LookupError:
                pass
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (as ``json.loads`` reads it)."""
        body = self.body
        if body[:1] in _OPENERS:  # the usual reply: a UTF-8 object or array, read directly
            try:
                text = body.decode("utf-8")
                value, end = _scan(text, 0)
                if end == len(text) or not text[end:].strip(" \t\n\r"):
                    return value
            except (ValueError, StopIteration):
                pass  # json.loads decides (other encodings, errors)
        try:
            return json.loads(body)
        except ValueError:
            return None


_OPENERS = (b"{", b"[")
_CHARSET = re.compile(r"charset\s*=\s*([\"']?[\w.:-]+[\"']?)", re.IGNORECASE)
# The most of a reply read (receipts and error details are small); the rest is dropped.
MAX_REPLY = 1 << 20
JSON_TYPE = "application/json; charset=utf-8"
MAX_DETAIL = 300  # characters of a platform's error text kept in the error
# The longest a request waits for its rate-limit tokens inside the send (the
# dispatcher's worker). A longer wait (a robot blocked for 10 minutes, a flood wait,
# a row of messages to one group at 20 a minute) is raised as a rate limit, which the
# dispatcher retries after that wait without counting an attempt, and the worker takes
# the next message: asleep, each such message held one of the ``--concurrency``
# workers, and enough of them every other channel and the runner's next pass.
# 5 s lets a robot's sends go 3 s apart (20 a minute) in place, and is as long as the
# runner's send pass (``runner.SEND_PASS_SECONDS``).
MAX_WAIT_IN_WORKER = 5.0
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


async def read_upto(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a body: all of it when it is within ``limit``,
    else one byte more, enough to know (a body that never ends is not read to its end).
    The intake reads a request this way too."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """At most ``MAX_REPLY`` bytes of a reply without a length, or with a larger one:
    a URL that answers with a page of megabytes, or a stream that never ends, costs
    a megabyte and not the runner's memory or the whole timeout. A reply cut short
    closes its connection (the rest is never read)."""
    body = await read_upto(resp.content, MAX_REPLY)
    if len(body) > MAX_REPLY:
        resp.close()
    return body[:MAX_REPLY]


class _Body(aiohttp.BytesPayload):
    """A request body that notes when aiohttp begins to write it (``written``)."""

    written = False

    async def write(self, writer: Any) -> None:
        self.written = True
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        self.written = True
        await super().write_with_length(writer, content_length)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (RFC 9110 10.2.3); None
    for anything else (``inf`` and ``nan`` too). Not capped here: the dispatcher and
    the limiter cap it, and the dispatcher counts an attempt for a wait past its cap."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, number) if math.isfinite(number) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def host_of(url: str | URL) -> str:
    parts = urlsplit(str(url))
    return parts.hostname or "?"


class HttpAdapter:
    """Base of the HTTP adapters; subclasses define ``name``, ``Settings``,
    ``capabilities``, ``description`` and ``send``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities]
    marks_writes: ClassVar[bool] = True  # ``request`` awaits ``about_to_write``

    def __init__(
        self,
        settings: Any,
        channel: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.channel = channel or self.name
        self.timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)  # one object for every request
        self.limiter: Limiter = limiter if limiter is not None else default_limiter()
        self.max_wait = MAX_WAIT_IN_WORKER  # seconds a request may wait for its tokens
        self._session = session
        self._own_session = False
        self._parts_sent: dict[str, list[str | None]] = {}
        self._secrets = secret_values(settings) if isinstance(settings, BaseModel) else []

    def redact(self, text: str) -> str:
        """``text`` (an error, often the platform's own words) without this channel's
        secrets: a platform that echoes its token back must not put it in the log."""
        return redact(text, self._secrets)

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        from .text import escape

        return escape(value, fmt)

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        if self._own_session:
            self._session = None
            self._own_session = False

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "channel": self.channel, **masked(self.settings)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()!r}>"

    # ------------------------------------------------------------ requests

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        buckets: tuple[Bucket, ...] = (),
        prepare: Callable[[], tuple[str | URL, bytes | None]] | None = None,
    ) -> Reply:
        """One request, after its rate-limit tokens. ``prepare``, when given, is called
        after the wait for the URL and body to send (a signature whose timestamp must
        be fresh); ``url`` then names the host in errors."""
        session = self._session
        if session is None or session.closed:
            await self.open()
            session = self._session
        assert session is not None
        if buckets:
            try:
                await self.limiter.acquire(*buckets, most=self.max_wait)
            except WaitTooLong as exc:
                # Pacing, not a failure: the text is what `cmtyflow outbox` shows meanwhile.
                raise TransientDeliveryError(
                    f"{self.name}: waiting for {host_of(url)}'s rate limit, {math.ceil(exc.wait)}s",
                    retry_after=exc.wait,
                    rate_limited=True,
                    paced=True,
                ) from None
        hook = BEFORE_WRITE.get()  # ``about_to_write()``, inline: one call less per request
        if hook is not None:
            await hook()
        if prepare is not None:
            url, body = prepare()
        if body is not None and (headers is None or "Content-Type" not in headers):
            headers = {**headers, "Content-Type": JSON_TYPE} if headers else {"Content-Type": JSON_TYPE}
        watched = _Body(body) if body is not None and not self.capabilities.idempotent else None
        try:
            async with session.request(
                method,
                url,
                data=watched if watched is not None else body,
                headers=headers,
                params=params,
                timeout=self._client_timeout,
                allow_redirects=False,
            ) as resp:
                length = resp.content_length
                if length is not None and length <= MAX_REPLY:
                    return Reply(resp.status, resp.headers, await resp.read())  # the usual reply
                return Reply(resp.status, resp.headers, await _read_capped(resp))
        except TimeoutError as exc:
            if watched is not None and watched.written:
                raise InDoubtDeliveryError(
                    f"{self.name}: {host_of(url)} did not answer within {self.timeout:g}s "
                    "after the message was sent; it may have arrived"
                ) from exc
            raise TransientDeliveryError(
                f"{self.name}: {host_of(url)} did not answer within {self.timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            if watched is not None and watched.written:
                raise InDoubtDeliveryError(
                    f"{self.name}: {host_of(url)} dropped the connection after the message was sent "
                    f"({type(exc).__name__}); it may have arrived"
                ) from exc
            raise TransientDeliveryError(
                f"{self.name}: cannot reach {host_of(url)} ({type(exc).__name__})"
            ) from exc

    def check_status(
        self,
        reply: Reply,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        defer: Hashable | None = None,
    ) -> None:
        """Raise the delivery error an unsuccessful HTTP status means; no-op on 2xx."""
        status = reply.status
        if 200 <= status < 300:
            return
        # Redacted before it is cut: a secret cut in two no longer matches.
        detail = self.redact(one_line(detail or reply.text))[:MAX_DETAIL] or reply_reason(status)
        if status == 429:
            wait = (
                retry_after
                if retry_after is not None
                else parse_retry_after(reply.headers.get("Retry-After"))
            )
            if defer is not None and wait:
                self.limiter.defer(defer, wait)
            raise TransientDeliveryError(
                f"{self.name}: rate limited: {detail}", retry_after=wait, rate_limited=True
            )
        if status >= 500 or status == 408:
            raise TransientDeliveryError(
                f"{self.name}: HTTP {status}: {detail}",
                retry_after=parse_retry_after(reply.headers.get("Retry-After")),
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(f"{self.name}: unexpected redirect (HTTP {status})")
        raise PermanentDeliveryError(f"{self.name}: HTTP {status}: {detail}")

    # ------------------------------------------------------------ split messages

    async def send_parts(
        self,
        message: OutboundMessage,
        parts: list[str],
        send_one: Callable[[int, str], Awaitable[str | None]],
    ) -> Receipt:
        """Send ``parts`` in order; a retry of the same key skips parts already sent."""
        done = self._parts_sent.setdefault(message.key, [])
        for index in range(len(done), len(parts)):
            done.append(await send_one(index, parts[index]))
        ids = self._parts_sent.pop(message.key)
        detail: dict[str, Any] = {"parts": len(parts)} if len(parts) > 1 else {}
        if len(parts) > 1:
            detail["ids"] = ids
        return Receipt(platform_id=ids[0] if ids else None, detail=detail)


def reply_reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"
