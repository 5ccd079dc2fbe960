"""The adapter contract (SPEC 5.2, 5.4).

Rules:
- One adapter class per file. It describes itself: ``name``, a pydantic ``Settings``
  model (secrets as ``SecretStr``, every field described), and ``capabilities``.
- ``send(message)`` (the message is read, never changed) returns a ``Receipt`` or
  raises ``TransientDeliveryError`` (retry later, optionally after ``retry_after`` seconds) or
  ``PermanentDeliveryError`` (dead-letter now). It never returns False. A transient
  failure after the platform may have seen the message is ``InDoubtDeliveryError``.
- ``describe()`` never shows a secret.
- An adapter that sends to a platform awaits ``about_to_write()`` just before the
  platform can first see the message (after any wait for a rate limit), and says so
  with ``marks_writes = True``; the dispatcher then records, durably, that the call
  began (SPEC 5.2: only such a message is in doubt after a crash), and may cancel the
  message there (``SendCancelled``: its member opted out while it waited). For an
  adapter without it, the dispatcher records that before calling ``send``.
- Optionally, ``escape(value, format)`` (a classmethod) makes member data inert in
  that format's markup on this platform; the renderer uses it as the autoescape for
  member values (``escape_value`` falls back to a generic escaper).
- Settings are validated twice with the same model: by ``cmtyflow validate`` on the
  text the playbook holds (``${env:NAME}`` references unresolved), and when the
  channel is opened, after ``resolve_env`` has put the values in.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr
from pydantic_core import PydanticCustomError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

FORMATS = ("plain", "markdown", "html")
# Template file extension for each format (SPEC 2: templates/NAME.<locale>.<ext>.j2).
FORMAT_EXT = {"plain": "txt", "markdown": "md", "html": "html"}


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: str) -> str:
    """A platform's error text as one line without control characters: what a reply
    says is shown in the log, `cmtyflow outbox` and reports, where its line breaks
    would break the table and its escape sequences would reach the terminal."""
    return " ".join(_CONTROLS.sub(" ", text).split())


class DeliveryError(Exception):
    """Base of the two errors an adapter may raise."""


class TransientDeliveryError(DeliveryError):
    """Try again later; ``retry_after`` (seconds) is the platform's own hint if it gave one.
    ``rate_limited``: the platform refused for rate (HTTP 429 or its own equivalent);
    the runner waits as told and does not count it as a failed attempt. ``paced``: no
    request was made, the channel's own rate limit put the message off (it is queued
    again, not failed)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, rate_limited: bool = False, paced: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.paced = paced


class InDoubtDeliveryError(TransientDeliveryError):
    """The request was written and no answer came (a timeout, a dropped connection):
    the platform may have the message (SPEC 5.2, in doubt). The dispatcher resends it
    only where that is harmless or asked for (the adapter deduplicates by key, the
    send is urgent, ``policies.in_doubt: resend``), and otherwise holds it for
    ``cmtyflow outbox``."""


class PermanentDeliveryError(DeliveryError):
    """This message will never go through as it is (bad request, forbidden, unknown chat)."""


class SendCancelled(Exception):
    """Raised by ``about_to_write()``: the message must not go (its member opted out)."""


# What ``about_to_write`` runs: set by the dispatcher around one ``send`` (its task's own).
BEFORE_WRITE: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("cmtyflow_before_write", default=None)


async def about_to_write() -> None:
    """The platform is about to see the message (see the rules above)."""
    hook = BEFORE_WRITE.get()
    if hook is not None:
        await hook()


class MissingSecretError(Exception):
    """A ``${env:NAME}`` reference names an unset variable; the name is shown, never a value."""

    def __init__(self, channel: str, name: str) -> None:
        super().__init__(f"channel '{channel}': environment variable {name} is not set")
        self.channel = channel
        self.name = name


@dataclass(frozen=True, slots=True)
class Capabilities:
    formats: tuple[str, ...] = ("plain",)  # in order of preference
    max_length: int | None = None  # characters per message; longer text is split or refused
    split: bool = True  # split past max_length (False: PermanentDeliveryError)
    idempotent: bool = False  # the platform deduplicates by our key (SPEC 5.2 in-doubt resend)
    rate_per_second: float | None = None  # documented default per destination
    rate_burst: int = 1
    needs_handle: str | None = None  # member field used as the address, e.g. "telegram"
    max_bytes: int | None = None  # UTF-8 bytes per message, for platforms that count bytes
    group_only: bool = False  # one destination, a group (a robot): a send to a member is posted there


# The three records of a send are built for every message (the dispatcher's hot path),
# so they are plain slotted dataclasses: a frozen one sets each field through
# ``object.__setattr__``, about twice the cost. Adapters treat them as read-only.


@dataclass(slots=True)
class Recipient:
    member_id: str
    name: str | None = None
    handles: Mapping[str, str] = field(default_factory=dict)  # email, telegram, slack, discord, ...


@dataclass(slots=True)
class OutboundMessage:
    key: str  # stable idempotency key (SPEC 5.2)
    channel: str
    text: str  # rendered in ``format``
    format: str = "plain"
    recipient: Recipient | None = None  # None: the channel's own destination
    urgent: bool = False
    subject: str | None = None
    alternatives: Mapping[str, str] = field(default_factory=dict)  # other formats rendered
    playbook: str | None = None
    unsubscribe_url: str | None = None


@dataclass(slots=True)
class Receipt:
    platform_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class AdapterSettings(BaseModel):
    # Settings hold credentials: a validation error must not echo the value it refused.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


def _check_url(value: str) -> str:
    # SPEC 1: the playbook text may hold ``${env:NAME}``; the resolved value is checked
    # again when the channel is opened, with the same model.
    if ENV_REF.search(value):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url", "expected an http(s) URL or a ${env:NAME} reference")
    return value


def _check_secret_url(value: SecretStr) -> SecretStr:
    _check_url(value.get_secret_value())  # its message never carries the value
    return value


# An http(s) URL setting that may also be written as a ``${env:NAME}`` reference.
UrlSetting = Annotated[str, AfterValidator(_check_url)]
# The same for a URL that is itself a credential (a webhook URL with its token inside).
SecretUrlSetting = Annotated[SecretStr, AfterValidator(_check_secret_url)]


@runtime_checkable
class Adapter(Protocol):
    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities]
    description: ClassVar[str]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: OutboundMessage) -> Receipt: ...

    def describe(self) -> dict[str, Any]: ...


def escape_value(adapter: Any, fmt: str, value: str) -> str:
    """``value`` made inert in ``fmt`` for ``adapter`` (its own ``escape`` when it has one)."""
    own = getattr(adapter, "escape", None)
    if callable(own):
        return str(own(value, fmt))
    from .text import escape

    return escape(value, fmt)


def masked(settings: BaseModel) -> dict[str, Any]:
    """Settings as a dict with every secret, and every credential inside a URL, masked."""
    out: dict[str, Any] = {}
    for key, value in settings:
        if isinstance(value, SecretStr):
            out[key] = "********" if value.get_secret_value() else ""
        elif isinstance(value, str):
            out[key] = mask_url(value)
        elif isinstance(value, Mapping):
            out[key] = {k: "********" for k in value}
        else:
            out[key] = value
    return out


_URL_CRED = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^/@\s]+)@", re.I)
_QUERY_SECRET = re.compile(r"([?&](?:key|token|access_token|secret|sign|password)=)[^&#\s]+", re.I)


# The pieces of a secret value that are secrets on their own: a header's token after
# its scheme (``Bearer <token>``, ``Bot <token>``, ``Basic <base64>``), a Telegram
# token's secret half after ``<bot id>:``. Shorter pieces (a scheme's name) are not.
_SECRET_PIECES = re.compile(r"[\s:]+")
_HEADER_PIECES = re.compile(r"\s+")
PIECE_MIN = 8


def _pieces(value: str, between: re.Pattern[str]) -> list[str]:
    return [value, *(piece for piece in between.split(value) if len(piece) >= PIECE_MIN)]


def secret_values(settings: BaseModel) -> list[str]:
    """The values in ``settings`` that ``masked`` hides, with their pieces of at least
    ``PIECE_MIN`` characters (the token of ``Bearer <token>``, the part of a Telegram
    token after its ``:``), and the long parts of its URLs (a webhook URL's path or
    query often is the credential): what must not be shown when a platform echoes it
    back in an error. Longest first, for ``redact``."""
    found: set[str] = set()
    for _, value in settings:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
            found.update(_pieces(value, _SECRET_PIECES))
        if isinstance(value, Mapping):
            for v in value.values():
                found.update(_pieces(str(v), _HEADER_PIECES))
        elif isinstance(value, str) and "://" in value:
            # A secret URL too (a Slack, Discord or WeCom webhook): the platform may echo
            # its key or path without the rest of it.
            parts = urlsplit(value)
            if parts.password:
                found.add(parts.password)
            found.update(m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(value))
            pieces = re.split(r"[/?&=#]", f"{parts.path}?{parts.query}")
            found.update(piece for piece in pieces if len(piece) >= 16)
    return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, "********")
    return text


def mask_url(text: str) -> str:
    text = _URL_CRED.sub(r"\g<scheme>********@", text)
    return _QUERY_SECRET.sub(r"\1********", text)


def resolve_env(channel: str, settings: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Put ``${env:NAME}`` values in; raise ``MissingSecretError`` naming an unset one."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            def sub(m: re.Match[str]) -> str:
                name = m.group(1)
                if name not in environ:
                    raise MissingSecretError(channel, name)
                return environ[name]

            return ENV_REF.sub(sub, value)
        if isinstance(value, Mapping):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return {k: resolve(v) for k, v in settings.items()}
