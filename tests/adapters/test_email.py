"""The email adapter against a real SMTP server on 127.0.0.1 (aiosmtpd), with STARTTLS
on a certificate made for the test."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from adapter_cases import HOSTILE, html_shows, message
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cmtyflow.adapters.base import (
    OutboundMessage,
    PermanentDeliveryError,
    Recipient,
    TransientDeliveryError,
)
from cmtyflow.adapters.email import EmailAdapter, EmailSettings

PASSWORD = "smtp-pass-secret-0008"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Inbox:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.rcpt_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "tls": session.ssl is not None,
                "authenticated": session.authenticated,
                "message": BytesParser(policy=policy.default).parsebytes(envelope.content),
            }
        )
        return "250 Message accepted for delivery"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == b"club"
        and data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def run(inbox: Inbox, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def smtp(certificate: tuple[Path, Path]) -> Iterator[tuple[Inbox, int]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    inbox = Inbox()
    controller, port = run(
        inbox, tls_context=context, require_starttls=True, authenticator=authenticator
    )
    yield inbox, port
    controller.stop()


def adapter(port: int, certificate: tuple[Path, Path] | None, **overrides: Any) -> EmailAdapter:
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "username": "club",
        "password": PASSWORD,
        "from_address": "club@example.org",
        "from_name": "Reading Club",
        "list_id": "Reading <reading.example.org>",
        "ca_file": str(certificate[0]) if certificate else None,
        **overrides,
    }
    return EmailAdapter(EmailSettings.model_validate(settings), "mail", timeout=2.0)


def to_member(text: str, **kw: Any) -> OutboundMessage:
    return message(text, member=True, handles={"email": "ann@example.net"}, **kw)


async def test_starttls_login_and_multipart_message(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    inbox, port = smtp
    msg = to_member(
        f"Welcome {HOSTILE[0]}!\n\nSee you.",
        subject="Welcome",
        unsubscribe_url="https://club.example.org/u/abc",
    )
    receipt = await adapter(port, certificate).send(msg)
    [got] = inbox.received
    assert got["tls"] and got["authenticated"]
    assert (got["from"], got["to"]) == ("club@example.org", ["ann@example.net"])
    mail = got["message"]
    expected_id = f"<{hashlib.sha256(msg.key.encode()).hexdigest()[:40]}.cmtyflow@example.org>"
    assert receipt.platform_id == mail["Message-ID"] == expected_id
    assert mail["From"] == "Reading Club <club@example.org>" and mail["To"] == "ann@example.net"
    assert mail["Subject"] == "Welcome" and mail["Date"]
    assert mail["List-Unsubscribe"] == "<https://club.example.org/u/abc>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Id"] == "Reading <reading.example.org>"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = mail.get_payload()
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == msg.text
    tags, shown = html_shows(html.get_content())
    assert set(tags) <= {"html", "head", "meta", "title", "body", "p", "br"} and "b" not in tags
    assert "&lt;b&gt;x&lt;/b&gt;" in html.get_content()
    assert f"Welcome {HOSTILE[0]}!" in shown


async def test_html_alternative_is_sent_as_given(smtp: tuple[Inbox, int], certificate: Any) -> None:
    inbox, port = smtp
    msg = to_member("Hi Ann", alternatives={"html": "<p>Hi <b>Ann</b></p>"})
    await adapter(port, certificate).send(msg)
    plain, html = inbox.received[0]["message"].get_payload()
    assert plain.get_content().strip() == "Hi Ann"
    assert html.get_content().strip() == "<p>Hi <b>Ann</b></p>"
    assert inbox.received[0]["message"]["Subject"] == "Hi Ann"  # first line, no subject given
    assert "List-Unsubscribe" not in inbox.received[0]["message"]


async def test_html_only_message_gets_a_text_part(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    inbox, port = smtp
    await adapter(port, certificate).send(
        to_member("<h1>News</h1><p>Day 3 &amp; counting</p>", fmt="html")
    )
    plain, _ = inbox.received[0]["message"].get_payload()
    assert plain.get_content().replace("\r\n", "\n").strip() == "News\n\nDay 3 & counting"


async def test_an_html_only_messages_text_part_keeps_its_links(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    inbox, port = smtp
    await adapter(port, certificate).send(
        to_member('<p>请点击 <a href="https://club.example.org/confirm?m=u1">确认参加</a> 完成报名。</p>', fmt="html")
    )
    plain, _ = inbox.received[0]["message"].get_payload()
    assert plain.get_content().strip() == "请点击 确认参加 <https://club.example.org/confirm?m=u1> 完成报名。"


async def test_a_subject_line_at_the_top_is_the_subject_of_that_message(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    """Each template (and each variant of an A/B test) may carry its own subject; the
    channel's subject setting was given to every message, and nothing in a playbook
    could set one."""
    inbox, port = smtp
    hook = adapter(port, certificate, subject="Club news")
    await hook.send(to_member("Subject: Two minutes for us, Ann?\n\nHi Ann,\nplease answer."))
    await hook.send(to_member("主题：本周话题\n大家好"))
    await hook.send(to_member("Hi Ann, no subject line here"))
    await hook.send(to_member("<p>Subject: inside markup is text</p>", fmt="html"))
    mails = [r["message"] for r in inbox.received]
    assert [m["Subject"] for m in mails] == ["Two minutes for us, Ann?", "本周话题", "Club news", "Club news"]
    plain, html = mails[0].get_payload()
    assert plain.get_content().replace("\r\n", "\n").strip() == "Hi Ann,\nplease answer."
    assert "Subject:" not in html.get_content() and "<title>Two minutes for us, Ann?</title>" in html.get_content()
    assert mails[1].get_payload()[0].get_content().strip() == "大家好"


async def test_subject_cannot_inject_headers(smtp: tuple[Inbox, int], certificate: Any) -> None:
    inbox, port = smtp
    await adapter(port, certificate).send(to_member("x", subject="Hi\r\nBcc: evil@example.com"))
    mail = inbox.received[0]["message"]
    assert mail["Subject"] == "Hi Bcc: evil@example.com" and mail["Bcc"] is None
    assert inbox.received[0]["to"] == ["ann@example.net"]


async def test_unsubscribe_setting_gives_each_member_a_one_click_link(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    """The runner's messages carry no unsubscribe URL of their own: the channel's
    ``unsubscribe`` setting is what puts List-Unsubscribe on them (it was never sent).
    One-click (List-Unsubscribe-Post) only with https; a list's own copy has no member
    to name."""
    inbox, port = smtp
    mailer = adapter(port, certificate, unsubscribe="https://club.example.org/u?m={member}",
                     to_address="list@example.org")
    await mailer.send(message("x", member=True, handles={"email": "ann@example.net"}))
    await mailer.send(message("x"))
    one, to_list = (r["message"] for r in inbox.received)
    assert one["List-Unsubscribe"] == "<https://club.example.org/u?m=u1>"
    assert one["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert to_list["List-Unsubscribe"] is None
    await adapter(port, certificate, unsubscribe="mailto:leave@example.org").send(to_member("x"))
    mail = inbox.received[-1]["message"]
    assert mail["List-Unsubscribe"] == "<mailto:leave@example.org>" and mail["List-Unsubscribe-Post"] is None
    for bad in ("http://club.example.org/u", "https://club.example.org/u <x>"):
        with pytest.raises(ValueError, match="unsubscribe"):
            adapter(port, certificate, unsubscribe=bad)


def test_an_smtp_error_is_kept_without_the_channels_password() -> None:
    mailer = EmailAdapter(EmailSettings.model_validate(
        {"host": "127.0.0.1", "from_address": "club@example.org", "username": "club", "password": PASSWORD}
    ))
    assert mailer.redact(f"535 auth failed for club/{PASSWORD}") == "535 auth failed for club/********"


async def test_channel_message_goes_to_to_address(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    inbox, port = smtp
    with pytest.raises(PermanentDeliveryError, match="no to_address"):
        await adapter(port, certificate).send(message("x"))
    await adapter(port, certificate, to_address="list@example.org").send(message("x"))
    assert inbox.received[0]["to"] == ["list@example.org"]
    no_email = OutboundMessage(
        key="k", channel="mail", text="x", recipient=Recipient("u9", "Bo", {})
    )
    with pytest.raises(PermanentDeliveryError, match="member u9 has no email"):
        await adapter(port, certificate).send(no_email)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("450 4.2.1 Mailbox busy, try later", TransientDeliveryError),
        ("550 5.1.1 No such user", PermanentDeliveryError),
    ],
)
async def test_smtp_reply_codes(
    smtp: tuple[Inbox, int], certificate: Any, reply: str, error: type
) -> None:
    inbox, port = smtp
    inbox.rcpt_reply = reply
    with pytest.raises(error, match=reply.split(" ", 1)[0]):
        await adapter(port, certificate).send(to_member("x"))


async def test_bad_password_is_permanent_and_never_shown(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    _, port = smtp
    mailer = adapter(port, certificate, password="wrong-pass-secret")
    with pytest.raises(PermanentDeliveryError, match="535") as caught:
        await mailer.send(to_member("x"))
    for text in (str(caught.value), repr(mailer), str(mailer.describe())):
        assert "wrong-pass-secret" not in text and PASSWORD not in text


async def test_untrusted_certificate_is_permanent(smtp: tuple[Inbox, int]) -> None:
    _, port = smtp
    with pytest.raises(PermanentDeliveryError, match="does not verify"):
        await adapter(port, None).send(to_member("x"))


async def test_server_without_starttls(certificate: Any) -> None:
    inbox = Inbox()
    controller, port = run(inbox)
    try:
        with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
            await adapter(port, certificate, username=None, password=None).send(to_member("x"))
        await adapter(port, None, username=None, password=None, starttls=False).send(to_member("x"))
    finally:
        controller.stop()
    assert len(inbox.received) == 1 and inbox.received[0]["tls"] is False


async def test_silent_server_times_out_as_transient() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts, never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = EmailAdapter(
        EmailSettings.model_validate(
            {"host": "127.0.0.1", "port": port, "from_address": "club@example.org"}
        ),
        timeout=0.2,
    )
    try:
        with pytest.raises(TransientDeliveryError, match="timed out"):
            await mailer.send(to_member("x"))
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_transient() -> None:
    mailer = EmailAdapter(
        EmailSettings.model_validate(
            {"host": "127.0.0.1", "port": free_port(), "from_address": "club@example.org"}
        ),
        timeout=0.5,
    )
    with pytest.raises(TransientDeliveryError, match="ConnectionRefusedError"):
        await mailer.send(to_member("x"))


def test_settings_refuse_tls_and_starttls_together() -> None:
    with pytest.raises(ValueError, match="choose one of tls"):
        EmailSettings.model_validate({"host": "h", "from_address": "a@b.org", "tls": True})
    with pytest.raises(ValueError, match="email address"):
        EmailSettings.model_validate({"host": "h", "from_address": "not-an-address"})


async def test_implicit_tls_to_a_plain_text_port_is_permanent(certificate: Any) -> None:
    """tls: true against a server that speaks plain SMTP: a setting to fix, not a network
    fault (it was retried through the whole schedule before being dead-lettered)."""
    inbox = Inbox()
    controller, port = run(inbox)
    try:
        with pytest.raises(PermanentDeliveryError, match="does not speak TLS on this port; check port and tls/starttls"):
            await adapter(port, certificate, username=None, password=None, starttls=False, tls=True).send(to_member("x"))
    finally:
        controller.stop()
    assert inbox.received == []


def test_settings_refuse_a_port_of_the_other_kind_of_tls() -> None:
    base = {"host": "h", "from_address": "a@b.org"}
    assert EmailSettings.model_validate({**base, "tls": True, "starttls": False}).port == 465  # tls's own port
    with pytest.raises(ValueError, match="port 465 takes implicit TLS: set tls: true and starttls: false"):
        EmailSettings.model_validate({**base, "port": 465})
    with pytest.raises(ValueError, match="port 587 takes STARTTLS, not implicit TLS"):
        EmailSettings.model_validate({**base, "port": 587, "tls": True, "starttls": False})
    assert EmailSettings.model_validate({**base, "port": 2525}).port == 2525  # any other port: as set


def test_a_host_that_cannot_be_resolved_is_retried_and_says_what_to_check() -> None:
    """A resolver that is down answers "no such name" as well (offline, a container's
    DNS): that is not a reason to dead-letter every message in flight."""
    import socket

    from cmtyflow.adapters.email import smtp_error

    error = smtp_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "smtp.exmaple.org")
    assert isinstance(error, TransientDeliveryError)
    assert str(error) == "email: cannot resolve smtp.exmaple.org (Name or service not known); check host if this lasts"


async def test_a_server_that_trickles_its_lines_is_cut_off_at_the_send_deadline() -> None:
    """A tarpit sends a '220-' line every 0.2 s, each within the 0.5 s step timeout, for
    ever. The send ends as transient after three times the timeout, and its connection
    is shut (its thread is free again)."""
    closed = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not reader.at_eof():
                writer.write(b"220-still greeting you\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1024), 0.2)
        except OSError:
            pass
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = EmailAdapter(
        EmailSettings.model_validate({"host": "127.0.0.1", "port": port, "from_address": "club@example.org"}),
        timeout=0.5,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TransientDeliveryError, match=r"127.0.0.1 did not finish the send within 1.5s"):
            await asyncio.wait_for(mailer.send(to_member("x")), 10)
        assert loop.time() - started < 3
        await asyncio.wait_for(closed.wait(), 5)  # the connection was shut, not left to trickle
    finally:
        server.close()
        await server.wait_closed()


async def test_smtp_sends_do_not_use_asyncios_default_executor(
    smtp: tuple[Inbox, int], certificate: Any
) -> None:
    """aiohttp resolves host names in the loop's default executor: SMTP sends stuck
    there left every HTTP adapter without DNS. Here that executor is kept busy, and
    the email still goes."""
    from concurrent.futures import ThreadPoolExecutor

    inbox, port = smtp
    loop = asyncio.get_running_loop()
    busy = ThreadPoolExecutor(1)
    loop.set_default_executor(busy)
    held = threading.Event()
    blocked = loop.run_in_executor(None, held.wait)
    try:
        await asyncio.wait_for(adapter(port, certificate).send(to_member("x")), 10)
    finally:
        held.set()
        await blocked
    assert len(inbox.received) == 1


@pytest.mark.parametrize("host", ["smtp.example.org", "192.0.2.10"])
def test_a_login_without_tls_is_refused_unless_the_server_is_local(host: str) -> None:
    base = {"from_address": "club@example.org", "username": "club", "password": PASSWORD, "starttls": False}
    with pytest.raises(ValueError, match="username and password need TLS: set starttls: true") as caught:
        EmailSettings.model_validate({**base, "host": host})
    assert PASSWORD not in str(caught.value)
    for local in ("localhost", "127.0.0.1", "::1"):
        EmailSettings.model_validate({**base, "host": local})
    EmailSettings.model_validate({**base, "host": "${env:SMTP_HOST}"})  # checked once resolved
    EmailSettings.model_validate({**base, "host": host, "starttls": True})
    EmailSettings.model_validate({**base, "host": host, "tls": True})
    EmailSettings.model_validate({"from_address": "club@example.org", "host": host, "starttls": False})


class FakeSmtp:
    """Plain SMTP, just enough of it, that misbehaves at one point (``mode``):
    ``drop_at_data`` (closes on DATA, before its 354), ``drop_after_message``, ``hang_after_message``
    (no answer to the message), ``slow_quit`` (accepts it, then sends its QUIT reply a
    line every 0.1 s)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.messages = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 fake ESMTP\r\n")
            while line := await reader.readline():
                command = line.strip().upper()
                if command.startswith((b"EHLO", b"HELO")):
                    writer.write(b"250 fake\r\n")
                elif command.startswith((b"MAIL", b"RCPT")):
                    writer.write(b"250 OK\r\n")
                elif command == b"DATA":
                    if self.mode == "drop_at_data":
                        break
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    if self.mode == "drop_after_message":
                        break
                    if self.mode == "hang_after_message":
                        await self.release.wait()
                        break
                    writer.write(b"250 queued\r\n")
                elif command == b"QUIT":
                    if self.mode == "slow_quit":
                        while not self.release.is_set():
                            writer.write(b"221-bye\r\n")
                            await writer.drain()
                            await asyncio.sleep(0.1)
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"502 no\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("drop_after_message", "in doubt"),
        ("hang_after_message", "in doubt"),
        ("drop_at_data", "retry"),
        ("slow_quit", "delivered"),
    ],
)
async def test_a_failure_after_the_message_was_written_is_in_doubt(mode: str, outcome: str) -> None:
    """The server may have taken a message it did not answer (RFC 5321 6.1): in doubt,
    held by the dispatcher rather than sent twice. Before the message went (at the
    DATA command) it is retried; once the server accepted it, a slow QUIT does not
    make it a failure."""
    from cmtyflow.adapters.base import InDoubtDeliveryError

    fake = FakeSmtp(mode)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = EmailAdapter(
        EmailSettings.model_validate({"host": "127.0.0.1", "port": port, "from_address": "club@example.org", "starttls": False}),
        timeout=0.3,
    )
    try:
        if outcome == "delivered":
            receipt = await asyncio.wait_for(mailer.send(to_member("x")), 10)
            assert receipt.platform_id
        else:
            with pytest.raises(TransientDeliveryError) as caught:
                await asyncio.wait_for(mailer.send(to_member("x")), 10)
            in_doubt = isinstance(caught.value, InDoubtDeliveryError)
            assert in_doubt == (outcome == "in doubt"), caught.value
            assert ("it may have arrived" in str(caught.value)) == in_doubt
    finally:
        fake.release.set()
        server.close()
        await server.wait_closed()
    assert fake.messages == (0 if mode == "drop_at_data" else 1)
