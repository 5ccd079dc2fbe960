"""``email``: SMTP with STARTTLS (or implicit TLS), one message per member.

The address is ``member.email``; a message to the channel itself goes to ``to_address``.
Each message is ``multipart/alternative``: a text/plain part and a text/html part.
When the message has no HTML alternative the HTML is the plain text autoescaped,
so member data never becomes markup. Headers: ``Message-ID`` derived from the
message key (a resend carries the same ID, so clients and list software can
collapse duplicates), ``Date``, ``Auto-Submitted: auto-generated``, and, with the
``unsubscribe`` setting, ``List-Unsubscribe: <url>`` (RFC 2369), plus
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` when the URL is https (RFC 8058:
one-click needs HTTPS). ``{member}`` in it is the member's id, URL-encoded; a message to
the channel's own address (a list) gets the header only when the URL does not name a
member.

smtplib runs in a thread of the process's SMTP pool (``SMTP_THREADS``; not asyncio's
default executor, where aiohttp resolves host names: stuck SMTP sends there left every
HTTP adapter without DNS). Its socket timeout bounds every step, and the whole send
must end within ``SEND_STEPS`` times that: when it does not (a server that trickles its
lines, a tarpit), its connection is shut from the event loop, which ends the thread's
wait, and the send is a transient failure. SMTP replies 4xx are transient and 5xx
permanent; a refused or dropped connection or a timeout is transient; a server without
STARTTLS, or a certificate that does not verify, is a configuration error and
permanent. A connection that drops, or a timeout, after the message itself was
written (after the server's 354) and before the server's answer to it is
``InDoubtDeliveryError``: the server may have taken it (RFC 5321 6.1), and the
dispatcher holds it rather than send it twice. One that ends after the server
accepted the message (a slow QUIT) is delivered. A login without TLS (neither
``starttls`` nor ``tls``) is refused in the settings unless the server is on this
machine (loopback): the password would cross the network in clear text.

The subject: a message whose text starts with a line ``Subject: ...`` (or ``主题：``)
has that subject, and the line (with the blank line after it) is not part of the
body, so each template and each variant of an A/B test may carry its own; otherwise
the channel's ``subject`` setting; otherwise the first line of the text, which stays
in the body too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import re
import smtplib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import aiohttp
from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    ENV_REF,
    AdapterSettings,
    Capabilities,
    DeliveryError,
    InDoubtDeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
    about_to_write,
    masked,
    redact,
    secret_values,
)
from .text import escape_html, html_to_text, plain_to_html

_ADDRESS = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+")

# Threads for SMTP sends, shared by the process's email channels (smtplib blocks).
SMTP_THREADS = 8
# A send (connection, greeting, TLS, login, message, quit) ends within this many times
# the adapter's timeout, which smtplib applies to each step: a healthy server answers
# each in well under a second, and a whole send in a few; a server that sends its lines
# slowly keeps each step under the timeout and the send going for ever.
SEND_STEPS = 3

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def smtp_pool() -> ThreadPoolExecutor:
    """The process's threads for SMTP sends (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(SMTP_THREADS, thread_name_prefix="cmtyflow-smtp")
        return _pool


def is_loopback(host: str) -> bool:
    """``host`` is this machine: ``localhost`` or a loopback address."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_address(value: str) -> str:
    if ENV_REF.search(value) or _ADDRESS.fullmatch(value):
        return value
    raise PydanticCustomError("email", "expected an email address such as club@example.org")


Address = Annotated[str, AfterValidator(_check_address)]


def _unsubscribe_url(value: str) -> str:
    if ENV_REF.search(value):  # checked once resolved, when a run opens the channel
        return value
    scheme = value.split(":", 1)[0].lower()
    if scheme not in ("https", "mailto") or len(value) <= len(scheme) + 3:
        raise PydanticCustomError(
            "unsubscribe_url",
            "unsubscribe must be an https:// URL (one-click unsubscribe needs HTTPS) or a "
            "mailto: address",
        )
    if any(c.isspace() or c in "<>" for c in value):
        raise PydanticCustomError("unsubscribe_url", "unsubscribe may not hold spaces, < or >")
    return value


class EmailSettings(AdapterSettings):
    host: str = Field(description="SMTP server host name")
    port: int = Field(587, ge=1, le=65535, description="SMTP port: 587 with STARTTLS, 465 with tls (its default then)")
    starttls: bool = Field(True, description="upgrade the connection with STARTTLS before sending")
    tls: bool = Field(False, description="connect with implicit TLS (usually port 465) instead")
    username: str | None = Field(None, description="SMTP login name, when the server needs one")
    password: SecretStr | None = Field(None, description="SMTP password")
    from_address: Address = Field(description="sender address, e.g. club@example.org")
    from_name: str | None = Field(None, description="sender display name")
    reply_to: Address | None = Field(None, description="Reply-To address")
    to_address: Address | None = Field(
        None, description="address for messages to the channel itself, e.g. a mailing list"
    )
    subject: str | None = Field(
        None, description="subject of a message whose text does not start with a 'Subject: ...' line (else its first line is used)"
    )
    list_id: str | None = Field(
        None, description="List-Id header, e.g. 'Reading club <reading.example.org>'"
    )
    ca_file: str | None = Field(
        None, description="CA certificates (PEM) to verify the server with, for private CAs"
    )
    unsubscribe: Annotated[str, AfterValidator(_unsubscribe_url)] | None = Field(
        None,
        description=(
            "List-Unsubscribe link: an https URL ({member} is the member's id), which mail "
            "clients POST 'List-Unsubscribe=One-Click' to, or a mailto: address"
        ),
    )

    @model_validator(mode="after")
    def _one_tls(self) -> EmailSettings:
        if self.tls and self.starttls:
            raise ValueError(
                "choose one of tls (implicit TLS) and starttls; set starttls: false with tls"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password is used with username")
        if (
            self.username is not None
            and not (self.tls or self.starttls)
            and not ENV_REF.search(self.host)  # checked again once resolved
            and not is_loopback(self.host)
        ):
            # RFC 8314: the login would cross the network in clear text.
            raise ValueError(
                "username and password need TLS: set starttls: true (port 587) or tls: true (port 465); "
                "a login without TLS is allowed only to a server on this machine (localhost)"
            )
        # Ports that fix the kind of TLS (RFC 8314): a mismatch never connects, and each
        # message would go through its whole retry schedule before being dead-lettered.
        if self.tls and "port" not in self.model_fields_set:
            self.port = 465
        elif self.tls and self.port == 587:
            raise ValueError("port 587 takes STARTTLS, not implicit TLS: set port: 465 with tls (or starttls without it)")
        elif self.starttls and self.port == 465:
            raise ValueError("port 465 takes implicit TLS: set tls: true and starttls: false (or use port 587)")
        return self


def message_id(key: str, from_address: str) -> str:
    domain = from_address.rsplit("@", 1)[-1] or "cmtyflow.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}.cmtyflow@{domain}>"


_SUBJECT_LINE = re.compile(r"\A\s*(?:subject|主题)\s*[:：][ \t]*([^\r\n]*)\r?\n?(?:[ \t]*\r?\n)?", re.IGNORECASE)


def split_subject(text: str) -> tuple[str | None, str]:
    """(the subject of a first line ``Subject: ...``, the text without it and the blank
    line after it); (None, text) when the text does not start so."""
    found = _SUBJECT_LINE.match(text)
    if found is None or not found.group(1).strip():
        return None, text
    return found.group(1).strip(), text[found.end():]


def own_subject(message: OutboundMessage) -> OutboundMessage:
    """``message`` with the subject its text names (``split_subject``) in ``subject``
    and the line taken out of its text and its plain alternative."""
    if message.subject:
        return message
    subject, text = split_subject(message.text)
    if subject is None:
        return message
    alternatives = dict(message.alternatives)
    if "plain" in alternatives:
        alternatives["plain"] = split_subject(alternatives["plain"])[1]
    return replace(message, text=text, subject=subject, alternatives=alternatives)


def _one_line(value: str, limit: int = 150) -> str:
    value = re.sub(r"\s+", " ", value).strip()
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


_DOCUMENT = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
    "<body>\n{body}\n</body></html>\n"
)


class EmailAdapter:
    name: ClassVar[str] = "email"
    description: ClassVar[str] = "SMTP with STARTTLS: multipart text + HTML, one-click unsubscribe"
    Settings: ClassVar[type[EmailSettings]] = EmailSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        formats=("html", "plain"), needs_handle="email"
    )
    marks_writes: ClassVar[bool] = True  # ``send`` awaits ``about_to_write``

    def __init__(
        self,
        settings: EmailSettings,
        channel: str = "email",
        *,
        session: aiohttp.ClientSession | None = None,  # unused: SMTP, not HTTP
        timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.timeout = timeout
        self._secrets = secret_values(settings)

    @classmethod
    def escape(cls, value: str, fmt: str) -> str:
        return escape_html(value) if fmt == "html" else value

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "channel": self.channel, **masked(self.settings)}

    def redact(self, text: str) -> str:
        """``text`` (an SMTP server's error) without this channel's password."""
        return redact(text, self._secrets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()!r}>"

    async def send(self, message: OutboundMessage) -> Receipt:
        address = self._address(message)
        try:
            mail = self.build(message, address)
        except (ValueError, TypeError) as exc:
            raise PermanentDeliveryError(f"email: cannot build the message: {exc}") from exc
        await about_to_write()
        deadline = _Deadline()
        total = SEND_STEPS * self.timeout
        work = asyncio.get_running_loop().run_in_executor(smtp_pool(), self._deliver, mail, address, deadline)
        try:
            await asyncio.wait_for(work, total)
        except TimeoutError:
            deadline.expire()  # the thread's wait ends; a send not started never starts
            if deadline.accepted:  # the server took it; only its QUIT was slow
                return Receipt(platform_id=str(mail["Message-ID"]))
            late = f"email: {self.settings.host} did not finish the send within {total:g}s"
            if deadline.written:
                raise InDoubtDeliveryError(f"{late} after the message was sent; it may have arrived") from None
            raise TransientDeliveryError(late) from None
        except BaseException:
            deadline.expire()  # cancelled (the runner stopping): the thread ends too
            raise
        return Receipt(platform_id=str(mail["Message-ID"]))

    def _address(self, message: OutboundMessage) -> str:
        if message.recipient is not None:
            address = message.recipient.handles.get("email")
            if not address:
                raise PermanentDeliveryError(
                    f"email: member {message.recipient.member_id} has no email"
                )
        elif self.settings.to_address:
            address = self.settings.to_address
        else:
            raise PermanentDeliveryError(f"email channel '{self.channel}' has no to_address")
        if not _ADDRESS.fullmatch(address):
            raise PermanentDeliveryError(f"email: '{address}' is not an email address")
        return address

    def bodies(self, message: OutboundMessage) -> tuple[str, str]:
        """(plain, html) for ``message``; HTML made from autoescaped plain text if need be."""
        message = own_subject(message)
        alt = message.alternatives
        if message.format == "plain":
            plain = message.text
        elif "plain" in alt:
            plain = alt["plain"]
        elif message.format == "html":
            plain = html_to_text(message.text)
        else:
            plain = message.text
        if message.format == "html":
            html = message.text
        elif "html" in alt:
            html = alt["html"]
        else:
            html = _DOCUMENT.format(
                title=escape_html(self._subject(message, plain)), body=plain_to_html(plain)
            )
        return plain, html

    def _subject(self, message: OutboundMessage, plain: str) -> str:
        if message.subject:
            return _one_line(message.subject)
        if self.settings.subject:
            return _one_line(self.settings.subject)
        first = next((line for line in plain.splitlines() if line.strip()), self.channel)
        return _one_line(first, 78)

    def _unsubscribe(self, message: OutboundMessage) -> str | None:
        """The ``unsubscribe`` setting for this message: ``{member}`` filled in, or None
        for a message to the channel's own address when the link names a member."""
        url = self.settings.unsubscribe
        if not url or "{member}" not in url:
            return url
        if message.recipient is None:
            return None
        return url.replace("{member}", quote(message.recipient.member_id, safe=""))

    def build(self, message: OutboundMessage, address: str) -> EmailMessage:
        s = self.settings
        plain, html = self.bodies(message)
        mail = EmailMessage()
        mail["From"] = formataddr((s.from_name, s.from_address)) if s.from_name else s.from_address
        mail["To"] = address
        mail["Subject"] = self._subject(own_subject(message), plain)
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id(message.key, s.from_address)
        mail["Auto-Submitted"] = "auto-generated"
        if s.reply_to:
            mail["Reply-To"] = s.reply_to
        if s.list_id:
            mail["List-Id"] = s.list_id
        unsubscribe = message.unsubscribe_url or self._unsubscribe(message)
        if unsubscribe:
            mail["List-Unsubscribe"] = f"<{unsubscribe}>"
            if unsubscribe.lower().startswith("https://"):
                mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        mail.set_content(plain)
        mail.add_alternative(html, subtype="html")
        return mail

    # ------------------------------------------------------------ SMTP (worker thread)

    def _deliver(self, mail: EmailMessage, address: str, deadline: _Deadline | None = None) -> None:
        s = self.settings
        deadline = deadline or _Deadline()
        context = ssl.create_default_context(cafile=s.ca_file)
        try:
            smtp: smtplib.SMTP
            if s.tls:
                smtp = _SmtpSsl(deadline, s.host, s.port, timeout=self.timeout, context=context)
            else:
                smtp = _Smtp(deadline, s.host, s.port, timeout=self.timeout)
            try:
                smtp.ehlo()
                if s.starttls:
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if s.username:
                    smtp.login(s.username, s.password.get_secret_value() if s.password else "")
                smtp.send_message(mail, from_addr=s.from_address, to_addrs=[address])
                deadline.accepted = True
            finally:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()
        except DeliveryError:
            raise
        except Exception as exc:
            if deadline.accepted:  # only the QUIT after it failed
                return
            error = smtp_error(exc, s.host)
            if deadline.written and not isinstance(exc, smtplib.SMTPResponseException):
                # No answer to the message itself: the server may have taken it.
                raise InDoubtDeliveryError(f"{error} (after the message was sent; it may have arrived)") from exc
            raise error from exc
        finally:
            deadline.close()


class _Deadline:
    """Shuts a send's connection from the event loop's thread when its time is up:
    smtplib's timeout bounds each read, not the send. The send's thread hands over
    each connection as it opens (``adopt``); a copy of it is kept (the TLS layer
    takes the original over) and shut down, which ends a read in progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self.written = False  # the message itself began to be written (after the 354)
        self.accepted = False  # the server answered the message with success

    def adopt(self, sock: socket.socket) -> socket.socket:
        """In the send's thread, as the connection opens (refused once expired)."""
        copy: socket.socket | None = sock.dup()
        with self._lock:
            if not self._expired:
                self._sock, copy = copy, None
        if copy is not None:
            copy.close()
            sock.close()
            raise TimeoutError("the send's time was up")
        return sock

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            if self._sock is not None:
                with contextlib.suppress(OSError):  # already closed by the peer
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """In the send's thread, when it ends."""
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()


class _Watched(smtplib.SMTP):
    """Notes, on its ``_Deadline``, when the message itself begins to be written:
    ``data`` sends the DATA command, then (after the 354) the message, each through
    ``send``."""

    _deadline: _Deadline
    _data_sends: int | None = None

    def data(self, msg: Any) -> tuple[int, bytes]:
        self._data_sends = 0
        try:
            return super().data(msg)
        finally:
            self._data_sends = None

    def send(self, s: Any) -> None:
        if self._data_sends is not None:
            self._data_sends += 1
            if self._data_sends > 1:
                self._deadline.written = True
        super().send(s)


class _Smtp(_Watched):
    def __init__(self, deadline: _Deadline, host: str, port: int, *, timeout: float) -> None:
        self._deadline = deadline
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        return self._deadline.adopt(sock)


class _SmtpSsl(_Watched, smtplib.SMTP_SSL):
    def __init__(self, deadline: _Deadline, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        self._deadline = deadline
        smtplib.SMTP_SSL.__init__(self, host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # SMTP_SSL's own, with the plain connection adopted before it is wrapped.
        plain: socket.socket = smtplib.SMTP._get_socket(self, host, port, timeout)  # type: ignore[attr-defined]
        self._deadline.adopt(plain)
        return self.context.wrap_socket(plain, server_hostname=self._host)  # type: ignore[attr-defined]


def smtp_error(exc: Exception, host: str) -> DeliveryError:
    """The delivery error an smtplib/ssl/socket exception means."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()), (550, b"refused"))
        return _by_code(code, text, "recipient refused")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError(f"email: {host} does not support {exc}; check starttls/tls")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, exc.smtp_error, type(exc).__name__)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError(
            f"email: certificate of {host} does not verify: {exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        # TLS spoken to a port that answers in plain text: the settings, not the network.
        return PermanentDeliveryError(f"email: {host} does not speak TLS on this port; check port and tls/starttls")
    if isinstance(exc, socket.gaierror):
        # Transient: a resolver that is down answers "no such name" too (offline, a
        # container's DNS); the message says what to check if it lasts.
        return TransientDeliveryError(f"email: cannot resolve {host} ({exc.strerror or exc}); check host if this lasts")
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError | smtplib.SMTPException):
        return TransientDeliveryError(f"email: {host}: {type(exc).__name__}: {exc}")
    return PermanentDeliveryError(f"email: {type(exc).__name__}: {exc}")


def _by_code(code: int, text: bytes | str, what: str) -> DeliveryError:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    detail = f"email: {what}: {code} {said}"
    if 400 <= code < 500:
        return TransientDeliveryError(detail)
    return PermanentDeliveryError(detail)
