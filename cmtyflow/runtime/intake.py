"""The HTTP event intake served by ``cmtyflow run --listen HOST:PORT`` (SPEC 3, 6): the
aiohttp application (``make_app``); ``listen.py`` serves it, with the connection limit.

Rules:
- Routes: ``POST /events`` takes one event object, an array of them or
  ``{"events": [...]}`` (SPEC 3: ``{"id", "type", "at", "member", "data"}``);
  ``GET /healthz`` answers ``{"ok": true}`` without authentication and says nothing else.
- Nothing is served without authentication: ``Authorization: Bearer <token>`` or a
  request signed like the webhook adapter's (``X-Cmtyflow-Timestamp`` and
  ``X-Cmtyflow-Signature``: HMAC-SHA256 of "<timestamp>." + raw body), the timestamp
  within ``max_skew`` seconds of ``now``. Either configured method suffices.
- Checks run in this order, so that only an authenticated caller learns anything about
  its body: credentials (401; a signature is checked once the body is read), content
  encoding (415), size (413, read at most ``max_body + 1`` bytes, before and after
  decoding), Content-Type (415), JSON (400), count (413), each event (400 with its
  ``index``). ``Expect: 100-continue`` is answered once the checks before the body
  pass. A request answered before all of its body has arrived (refused) has its
  connection closed after the answer: the rest of its body is not read.
- Content-Encoding is decoded here, not by aiohttp (which answered br and zstd with a
  plain-text 400 naming packages the server lacks, before the credentials).
- A batch is all-or-nothing: one bad event and nothing is stored.
- An event without ``at`` happens at ``now()`` (one instant for the whole batch) and
  must then carry an ``id``; an event with ``at`` but no ``id`` gets one derived from
  its content, so a retried body is idempotent (as ``events import`` is).
- Every error answer is ``{"error": "..."}``; no traceback, token, secret or signature
  ever appears in an answer or in the log.
- A body must arrive within ``read_timeout`` seconds of its headers (408 after), and a
  client that goes away while sending it is not an error of the intake's. On stop, the
  requests in flight get ``shutdown_timeout`` seconds.
- A request's headers must arrive within ``header_timeout`` seconds of its connection
  opening or of the answer before it on the connection (aiohttp's keep-alive timeout,
  which otherwise let a client dribble headers for an hour); the connection is closed
  after. At most ``max_connections`` connections are open at once (and at most a
  quarter of the process's file descriptors): one more is answered 503 and closed.
  Each held a descriptor, and with none left asyncio logged every failed accept.
- Tokens and secrets are at least ``MIN_SECRET`` characters (``from_env``): a
  one-character token was guessed in 24 tries.
- With the runner's ``log``, the intake's warnings go there (one line each, JSON with
  ``--log-format json``), as do aiohttp's own reports of requests it could not parse,
  reduced to what failed: the bytes it quotes may hold a token. Refusals of one kind
  (401 say) are logged once, then counted (``Repeats``: ``repeated=N`` at most once a
  minute): 3,000 guesses at the token made 3,000 lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import ClientPayloadError, EofStream, HttpVersion11, web
from aiohttp.typedefs import Handler

from ..adapters._http import read_upto
from ..adapters.base import one_line
from ..adapters.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from ..engine.model import Event
from ..errors import UserError
from .inputs import DuplicateKey, SameIds, json_value, parse_event, quoted
from .logs import Repeats

log = logging.getLogger("cmtyflow.intake")

TOKEN_ENV = "CMTYFLOW_INTAKE_TOKEN"
SECRET_ENV = "CMTYFLOW_INTAKE_SECRET"
DEFAULT_HOST = "127.0.0.1"
MIN_SECRET = 12  # characters of a token or secret
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'

Accept = Callable[[list[Event]], tuple[int, int] | Awaitable[tuple[int, int]]]
Report = Callable[..., None]  # ``report(event, **fields)``: the runner's log, or ``logging``


def store_accept(store: Any) -> Accept:
    """How the runner's intake stores a batch: ``store.add_events``, on a thread of its
    own for a store that takes calls from any thread (``thread_safe``, as SQLite's):
    such a store may be busy on the dispatcher's thread (a claim or a group commit holds
    it for tens of milliseconds), and the batch then waits there, not on the event
    loop, where it would stop every send meanwhile. Any other store is called inline."""
    add_events = store.add_events
    if getattr(store, "thread_safe", False) is not True:
        return add_events  # type: ignore[no-any-return]

    async def accept(events: list[Event]) -> tuple[int, int]:
        return await asyncio.to_thread(add_events, events)

    return accept


@dataclass
class IntakeConfig:
    token: str | None = None
    hmac_secret: str | None = None
    max_body: int = 1_048_576  # bytes
    max_events: int = 10_000  # per request
    max_skew: float = 300.0  # seconds between X-Cmtyflow-Timestamp and now
    read_timeout: float = 30.0  # seconds for a body to arrive once its headers have
    header_timeout: float = 10.0  # seconds for a request's headers, from its connection or the answer before
    max_connections: int = 256  # open at once

    def __repr__(self) -> str:
        # Secrets are masked in every printed form (as apprise does for its channels).
        def mask(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"IntakeConfig(token={mask(self.token)}, hmac_secret={mask(self.hmac_secret)}, "
            f"max_body={self.max_body}, max_events={self.max_events}, max_skew={self.max_skew}, "
            f"read_timeout={self.read_timeout}, header_timeout={self.header_timeout}, "
            f"max_connections={self.max_connections})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **limits: Any) -> IntakeConfig:
        """The token and the secret from the environment, each refused when it is shorter
        than ``MIN_SECRET`` characters (``cmtyflow run --listen`` does not start)."""

        def read(name: str) -> str | None:
            value = environ.get(name, "").strip()
            if value and len(value) < MIN_SECRET:
                raise UserError(
                    f"{name} is too short ({len(value)} of the {MIN_SECRET} characters the event intake takes at "
                    f"least, so that it cannot be guessed); make one with: {MAKE_SECRET}"
                )
            return value or None

        return cls(token=read(TOKEN_ENV), hmac_secret=read(SECRET_ENV), **limits)

    def check(self) -> None:
        """Refuse a configuration that would serve events to anyone."""
        if not self.token and not self.hmac_secret:
            raise UserError(
                f"the event intake needs authentication: set {TOKEN_ENV} (bearer token) "
                f"or {SECRET_ENV} (HMAC signing secret)"
            )
        for name in ("max_body", "max_events", "max_skew", "read_timeout", "header_timeout", "max_connections"):
            if getattr(self, name) <= 0:
                raise UserError(f"intake {name} must be positive, not {getattr(self, name)}")


# --- answers -------------------------------------------------------------------------------


def _error(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


# Content-Encodings the intake reads (decoded here: aiohttp's own decoding is off); the
# body is size-checked as sent and as decoded, and signed as decoded.
_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})


class _BadData(Exception):
    """A body that is not valid data of its Content-Encoding."""


def _decoded(body: bytes, encoding: str, limit: int) -> bytes | None:
    """``body`` decoded from gzip (members one after the other, as aiohttp reads them) or
    deflate (zlib's wrapping or none); None when it decodes to more than ``limit`` bytes
    (only ``limit + 1`` are ever decoded: a gzip bomb costs nothing)."""
    if encoding in ("", "identity"):
        return body
    gzip = encoding != "deflate"
    wbits = 31 if gzip else (15 if body[:1] and body[0] & 0x0F == 8 else -15)
    out = bytearray()
    data = body
    try:
        while True:
            decoder = zlib.decompressobj(wbits)
            out += decoder.decompress(data, limit + 1 - len(out))
            if len(out) > limit or decoder.unconsumed_tail:
                return None
            if not decoder.eof:
                raise _BadData  # cut short
            data = decoder.unused_data
            if not data:
                return bytes(out)
            if not gzip:
                raise _BadData  # bytes after the end of the data
    except zlib.error:
        raise _BadData from None

class _Refused(Exception):
    """A request answered with an error; raised inside the handler, answered once."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _digest(value: str) -> bytes:
    # Comparing digests keeps the comparison constant-time in the length as well.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(_digest(given), _digest(expected))


# --- the application -----------------------------------------------------------------------


class _Intake:
    def __init__(
        self,
        accept: Accept,
        config: IntakeConfig,
        default_tz: ZoneInfo,
        now: Callable[[], datetime],
        wake: Callable[[], None] | None,
        report: Report,
    ) -> None:
        self.accept = accept
        self.config = config
        self.default_tz = default_tz
        self.now = now
        self.wake = wake
        self.report = report

    # -- authentication --

    def _unauthorized(self, message: str) -> _Refused:
        headers = {"WWW-Authenticate": "Bearer"} if self.config.token else None
        return _Refused(_error(401, message, headers))

    def _bearer_ok(self, request: web.Request) -> bool | None:
        """True: a valid token; False: a token that is wrong; None: none offered."""
        header = request.headers.get("Authorization")
        if header is None or not self.config.token:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        return _same(value.strip(), self.config.token)

    def _missing_credentials(self) -> str:
        ways = []
        if self.config.token:
            ways.append("Authorization: Bearer <token>")
        if self.config.hmac_secret:
            ways.append(f"a signed request ({TIMESTAMP_HEADER} and {SIGNATURE_HEADER})")
        return "authentication required: send " + " or ".join(ways)

    def _check_timestamp(self, request: web.Request) -> str | None:
        """The signing timestamp if a signature is offered and its window is right."""
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        if not self.config.hmac_secret or timestamp is None or signature is None:
            return None
        if not re.fullmatch(r"[0-9]{1,12}", timestamp.strip()):
            raise self._unauthorized(f"{TIMESTAMP_HEADER} must be a time in unix seconds")
        skew = abs(self.now().timestamp() - int(timestamp))
        if skew > self.config.max_skew:
            raise self._unauthorized(
                f"the {TIMESTAMP_HEADER} timestamp is outside the allowed window of "
                f"{self.config.max_skew:g} seconds; check the sender's clock"
            )
        return timestamp.strip()

    def _credentials(self, request: web.Request) -> str | None:
        """Check what can be checked before the body: None for a valid bearer token, else
        the signing timestamp (its signature is checked once the body is in)."""
        bearer = self._bearer_ok(request)
        if bearer:
            return None
        timestamp = self._check_timestamp(request)
        if timestamp is None:
            if bearer is False:
                raise self._unauthorized("the bearer token is not valid")
            raise self._unauthorized(self._missing_credentials())
        return timestamp

    def _before_body(self, request: web.Request) -> tuple[str | None, str]:
        """Credentials, content encoding and a Content-Length over the limit: what is
        refused before a byte of the body is read. (The timestamp, the encoding.)"""
        timestamp = self._credentials(request)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            message = f"Content-Encoding {encoding} is not accepted: send the body as is, or as gzip or deflate"
            raise _Refused(_error(415, message[:300]))
        if request.content_length is not None and request.content_length > self.config.max_body:
            raise self._too_large()
        return timestamp, encoding

    def _refused(self, request: web.Request, response: web.Response) -> web.Response:
        if response.status in (401, 408):
            self.report("intake_refused", remote=request.remote, status=response.status)
        return response

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the go-ahead only for a request that passes the checks
        before the body; the others get their answer at once, and are closed (aiohttp's
        own handler said 100 Continue to anyone, and then read the body to refuse it)."""
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").strip().lower() != "100-continue":
            refused = _error(417, "the only Expect taken is 100-continue")
            refused.force_close()
            return refused
        try:
            self._before_body(request)
        except _Refused as refused:
            refused.response.force_close()
            return self._refused(request, refused.response)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return None

    # -- the body --

    def _too_large(self) -> _Refused:
        return _Refused(
            _error(413, f"the body is larger than the limit of {self.config.max_body} bytes")
        )

    async def _read_body(self, request: web.Request, encoding: str) -> bytes:
        limit = self.config.max_body
        # Without Content-Length (chunked), read at most limit + 1 bytes: enough to know.
        # A body that stalls is given up (it held the connection, and the runner's stop).
        try:
            async with asyncio.timeout(self.config.read_timeout):
                body = await read_upto(request.content, limit)
        except TimeoutError:
            message = f"the body did not arrive within {self.config.read_timeout:g} seconds"
            raise _Refused(_error(408, message)) from None
        except web.RequestPayloadError:
            # Its framing is broken (a chunk size that is not one): a client's mistake. The
            # connection closes after the answer: the rest of the body cannot be read.
            refused = _error(400, "the body cannot be read: its chunked framing is broken")
            refused.force_close()
            request.content.feed_eof()  # nothing more to read
            raise _Refused(refused) from None
        except (ConnectionError, EofStream, ClientPayloadError) as exc:
            raise _Gone(type(exc).__name__) from None
        if len(body) > limit:
            raise self._too_large()
        try:
            decoded = _decoded(body, encoding, limit)
        except _BadData:
            # Not what its Content-Encoding says (a client's mistake, not ours).
            refused = _error(400, f"the body cannot be read as {encoding}: it is not valid {encoding} data")
            refused.force_close()
            raise _Refused(refused) from None
        if decoded is None:
            raise self._too_large()
        return decoded

    def _check_content_type(self, request: web.Request) -> None:
        if request.content_type != "application/json":
            raise _Refused(_error(415, "the body must be sent as Content-Type: application/json"))
        charset = request.charset
        if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise _Refused(_error(415, f"the body must be UTF-8, not {charset}"))

    def _decode(self, body: bytes) -> list[Any]:
        try:
            text = body.decode("utf-8-sig")  # a byte order mark is read past, as events import does
        except UnicodeDecodeError:
            raise _Refused(_error(400, "the body is not valid UTF-8")) from None

        try:
            value = json_value(text, strict=True)
        except DuplicateKey as exc:
            raise _Refused(_error(400, f"the body is refused: {exc}")) from None
        except json.JSONDecodeError as exc:
            # Some of Python's messages end in "at" themselves ("Invalid control character at").
            message = f"the body is not JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}"
            raise _Refused(_error(400, message)) from None
        except ValueError as exc:
            raise _Refused(_error(400, f"the body is not JSON: {exc}")) from None
        if isinstance(value, dict) and "events" in value:
            if set(value) != {"events"} or not isinstance(value["events"], list):
                message = 'a batch object must be {"events": [...]} and nothing else'
                raise _Refused(_error(400, message))
            value = value["events"]
        items = value if isinstance(value, list) else [value]
        if len(items) > self.config.max_events:
            message = f"{len(items)} events is more than the limit of {self.config.max_events} per request"
            raise _Refused(_error(413, message))
        return items

    def _events(self, items: list[Any]) -> list[Event]:
        at = self.now().isoformat()
        events = []
        same_ids = SameIds()
        for index, raw in enumerate(items):
            try:
                event = parse_event(_with_defaults(raw, at), self.default_tz)
                earlier = same_ids.earlier(event, index)
                if earlier is not None:
                    raise ValueError(f"id '{quoted(event.id)}' is also the id of events[{earlier}], an event with "
                                     "other content; give each event an id of its own")
            except (ValueError, TypeError) as exc:
                raise _Refused(_error(400, f"events[{index}]: {exc}", index=index)) from None
            events.append(event)
        return events

    # -- handlers --

    async def post_events(self, request: web.Request) -> web.Response:
        try:
            timestamp, encoding = self._before_body(request)
            body = await self._read_body(request, encoding)
            if timestamp is not None and self.config.hmac_secret:
                expected = sign(self.config.hmac_secret, timestamp, body)
                if not _same(request.headers.get(SIGNATURE_HEADER, "").strip(), expected):
                    raise self._unauthorized("the signature does not match the body")
            self._check_content_type(request)
            events = self._events(self._decode(body))
        except _Refused as refused:
            return self._refused(request, refused.response)
        except _Gone as gone:  # nobody is left to answer
            self.report("intake_client_gone", remote=request.remote, error=str(gone))
            return _error(400, "the body was cut short")
        if not events:
            return web.json_response({"accepted": 0, "duplicates": 0}, status=202)
        try:
            result = self.accept(events)
            accepted, duplicates = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            # The body may hold members' data: log what failed, never what was posted.
            self.report("intake_store_failed", events=len(events), error=_what(exc))
            return _error(503, "the event store is unavailable; retry")
        if accepted and self.wake is not None:
            try:
                self.wake()
            except Exception as exc:
                self.report("intake_wake_failed", error=_what(exc), detail="the events are stored")
        log.info("intake: %d event(s) accepted, %d duplicate(s)", accepted, duplicates)
        return web.json_response({"accepted": accepted, "duplicates": duplicates}, status=202)


def _with_defaults(raw: Any, at: str) -> Any:
    """Fill a missing ``at`` with now, for events that carry an ``id``. An event with
    neither is refused: an id derived from its content would make tomorrow's identical
    check-in a duplicate of today's, and one derived after filling ``at`` would make a
    client's retry a second event."""
    if not isinstance(raw, dict) or raw.get("at") is not None:
        return raw
    if raw.get("id") is None:
        raise ValueError("give the event an id (so that a retry is taken once) or an at")
    return {**raw, "at": at}


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _json_errors(report: Report) -> Any:
    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own answers (404, 405) as JSON too; a bug answers 500 without details."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return _error(exc.status, exc.reason.lower(), headers)
        except Exception as exc:
            report("intake_internal_error", method=request.method, path=request.path, error=_what(exc))
            return _error(500, "internal error")

    return json_errors


def _what(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")[:300]


class _Gone(Exception):
    """The client went away while its body was being read."""


# How the intake's reports read through ``logging`` when the runner gives no ``log``.
_LOGGED = {
    "intake_refused": (logging.WARNING, "intake: refused a request from {remote} ({status})"),
    "intake_client_gone": (logging.INFO, "intake: {remote} went away while sending its body ({error})"),
    "intake_store_failed": (logging.ERROR, "intake: could not store a batch of {events} event(s): {error}"),
    "intake_wake_failed": (logging.ERROR, "intake: waking the runner failed (the events are stored): {error}"),
    "intake_internal_error": (logging.ERROR, "intake: internal error on {method} {path}: {error}"),
    "intake_bad_request": (logging.WARNING, "intake: refused a request it could not read ({error})"),
    "intake_busy": (logging.WARNING, "intake: refused a connection: {connections} are open, the most it takes"),
}


def _logging_report(event: str, /, **fields: Any) -> None:
    level, message = _LOGGED[event]
    repeated = fields.get("repeated")
    log.log(level, message.format(**fields) + (f" (and {repeated} more like it)" if repeated else ""))


# The reports said once and then counted, and the fields that make one of a kind.
_COUNTED = {"intake_refused": ("status",), "intake_bad_request": ("error",), "intake_busy": ()}


class _Counted:
    """The intake's reports with refusals of one kind said once, then counted (``Repeats``):
    a client guessing the token made a line of the log a guess."""

    def __init__(self, report: Report, clock: Callable[[], float]) -> None:
        self.report = report
        self.repeats = Repeats(60.0, clock)

    def __call__(self, event: str, /, **fields: Any) -> None:
        keys = _COUNTED.get(event)
        if keys is None:
            self.report(event, **fields)
            return
        self._write(self.repeats.seen((event, *(fields.get(k) for k in keys)), fields))

    def flush(self) -> None:
        self._write(self.repeats.flush())

    def _write(self, lines: list[tuple[Hashable, dict[str, Any], int]]) -> None:
        for kind, fields, repeated in lines:
            assert isinstance(kind, tuple)
            self.report(kind[0], **fields, **({"repeated": repeated} if repeated else {}))


_REPORT: web.AppKey[Report] = web.AppKey("report")
_CONFIG: web.AppKey[IntakeConfig] = web.AppKey("config")


def make_app(
    accept: Accept,
    config: IntakeConfig,
    *,
    default_tz: ZoneInfo,
    now: Callable[[], datetime],
    wake: Callable[[], None] | None = None,
    log: Report | None = None,
) -> web.Application:
    """The intake as an aiohttp application. ``accept`` stores a batch in one transaction
    and returns (accepted, duplicates), or an awaitable of them (``store_accept``); it is
    called on the event loop. ``wake`` is called after a batch that stored something new.
    ``log`` is the runner's (``log(event, **fields)``); without it, ``logging``'s."""
    config.check()
    counted = _Counted(log or _logging_report, lambda: now().timestamp())
    report: Report = counted
    intake = _Intake(accept, config, default_tz, now, wake, report)
    app = web.Application(
        middlewares=[_json_errors(report)],
        client_max_size=config.max_body,
        # aiohttp's keep-alive timeout closes a connection whose next request's headers
        # are not in within that time of its opening or of the answer before (it was an
        # hour). Without lingering, a connection whose body has not all arrived when it
        # is answered (a refused one) is closed after the answer: aiohttp read and
        # dropped the rest for 10 s (5 GB of an endless body). Content-Encoding is
        # decoded by the intake (see _decoded).
        handler_args={"keepalive_timeout": config.header_timeout, "lingering_time": 0, "auto_decompress": False},
    )
    app[_REPORT] = report
    app[_CONFIG] = config

    async def flush(app: web.Application) -> None:
        counted.flush()

    app.on_cleanup.append(flush)
    app.router.add_post("/events", intake.post_events, expect_handler=intake.expect)
    app.router.add_get("/healthz", _healthz)
    return app
