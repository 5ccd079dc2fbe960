"""The intake's connections on a real loopback server: how long a request's headers may
take, how many connections are open at once, Expect: 100-continue, the encodings it
decodes itself, and bodies it refuses without reading them."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.engine.model import Event
from cmtyflow.runtime.intake import IntakeConfig, make_app
from cmtyflow.runtime.listen import serve

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOKEN = "tok-5be0c2d9a817"
EVENT = json.dumps({"id": "e1", "type": "member.joined", "at": "2026-12-01T10:00:00+00:00", "member": "u1"}).encode()

Reports = list[tuple[str, dict[str, Any]]]


class Store:
    def __init__(self) -> None:
        self.events: dict[str, Event] = {}

    def accept(self, events: list[Event]) -> tuple[int, int]:
        new = [e for e in events if e.id not in self.events]
        self.events.update((e.id, e) for e in new)
        return len(new), len(events) - len(new)


Start = Callable[..., Awaitable[int]]


@pytest.fixture
async def intake() -> AsyncIterator[tuple[Start, Store, Reports]]:
    """``await start(**config)``: the port of an intake served on 127.0.0.1."""
    store = Store()
    reports: Reports = []
    runners = []

    async def start(**config: Any) -> int:
        config.setdefault("token", TOKEN)
        app = make_app(store.accept, IntakeConfig(**config), default_tz=TZ, now=lambda: NOW,
                       log=lambda event, /, **fields: reports.append((event, fields)))
        runner = await serve(app, "127.0.0.1", 0, shutdown_timeout=0.5)
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start, store, reports
    for runner in runners:
        await runner.cleanup()


async def _open(port: int, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def _rest(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (bounded: a hang fails the test)."""
    return await asyncio.wait_for(reader.read(), 10)


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


def _request(body: bytes = EVENT, *, auth: bool = True, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    if auth:
        fields["Authorization"] = f"Bearer {TOKEN}"
    head = "POST /events HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + body


# --- headers that take too long ------------------------------------------------------------


async def test_headers_dribbled_past_the_header_timeout_close_the_connection(intake):
    """A client sending its headers a byte a second held its connection for as long as it
    liked (193 s, then got its 202); one that sent nothing, for an hour."""
    start, store, _ = intake
    port = await start(header_timeout=0.3)
    reader, writer = await _open(port, b"POST /events HTTP/1.1\r\nHost: x\r\n")
    silent_reader, silent = await _open(port)
    for byte in b"X-Pad: aaaa":  # still sending, but not done within the timeout
        writer.write(bytes([byte]))
        await writer.drain()
        if reader.at_eof():
            break
        await asyncio.sleep(0.05)
    assert await _rest(reader) == b""
    assert await _rest(silent_reader) == b""
    writer.close()
    silent.close()
    assert store.events == {}


async def test_a_kept_alive_connection_takes_requests_whose_headers_come_in_time(intake):
    start, store, _ = intake
    port = await start(header_timeout=5)
    reader, writer = await _open(port, _request())
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
    writer.write(_request(EVENT.replace(b'"e1"', b'"e2"')))
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
    writer.close()
    assert sorted(store.events) == ["e1", "e2"]


async def test_an_idle_kept_alive_connection_is_closed_after_the_header_timeout(intake):
    start, _, _ = intake
    port = await start(header_timeout=0.3)
    reader, writer = await _open(port, _request())
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
    assert await _rest(reader) == b""
    writer.close()


# --- how many connections ----------------------------------------------------------------


async def test_connections_past_the_most_are_answered_503_and_closed(intake):
    """370 connections that never finished their headers took every file descriptor:
    each request after them timed out, and asyncio logged every failed accept."""
    start, store, reports = intake
    port = await start(max_connections=2, header_timeout=1)
    held = [await _open(port, b"POST /events HTTP/1.1\r\nHost: x\r\n") for _ in range(2)]
    refused_reader, refused = await _open(port, _request())
    answer = await _rest(refused_reader)
    refused.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 1\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the intake has as many connections open as it takes; retry in a moment"
    }
    assert reports == [("intake_busy", {"connections": 2})]
    assert store.events == {}
    # Once the held ones are let go (their headers never came), there is room again:
    # asyncio calls connection_lost before it closes the socket.
    for reader, writer in held:
        assert await _rest(reader) == b""
        writer.close()
    reader, writer = await _open(port, _request())
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ") and "e1" in store.events
    writer.close()


def test_the_most_connections_is_a_quarter_of_the_file_descriptors_when_that_is_fewer(monkeypatch):
    import resource

    from cmtyflow.runtime import listen

    monkeypatch.setattr(resource, "getrlimit", lambda what: (256, 4096))
    assert listen._connections_allowed(256) == 64
    monkeypatch.setattr(resource, "getrlimit", lambda what: (65536, 65536))
    assert listen._connections_allowed(256) == 256


# --- Expect: 100-continue ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "length", "status"),
    [(False, 50, b"401"), (True, 50_000_000, b"413"), (False, 50_000_000, b"401")],
)
async def test_expect_100_continue_is_not_granted_to_a_request_refused_before_its_body(intake, auth, length, status):
    """100 Continue went to anyone, and curl then sent 720 KB of a 50 MB body before it
    saw the 401."""
    start, _, reports = intake
    port = await start()
    head = _request(b"", auth=auth, headers={"Expect": "100-continue", "Content-Length": str(length)})
    reader, writer = await _open(port, head)
    answer = await _rest(reader)  # answered, and closed: the body is never sent
    writer.close()
    assert answer.startswith(b"HTTP/1.1 " + status + b" ") and b"100 Continue" not in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    if status == b"401":
        assert reports == [("intake_refused", {"remote": "127.0.0.1", "status": 401})]


async def test_expect_100_continue_is_granted_after_the_checks_before_the_body(intake):
    start, store, _ = intake
    port = await start()
    reader, writer = await _open(port, _request(b"", headers={"Expect": "100-continue", "Content-Length": str(len(EVENT))}))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(EVENT)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
    writer.close()
    assert "e1" in store.events


# --- encodings ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_br_and_zstd_are_415_as_json_after_the_credentials(intake, encoding):
    """aiohttp answered them itself, before the credentials, with a plain-text 400 naming
    the packages the server lacked."""
    start, _, _ = intake
    port = await start()
    for auth, status in ((False, b"401"), (True, b"415")):
        reader, writer = await _open(port, _request(b"\x00\x01", auth=auth, headers={"Content-Encoding": encoding}))
        answer = await _answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 " + status + b" ") and b"application/json" in answer
        assert b"install" not in answer
    assert f"Content-Encoding {encoding} is not accepted".encode() in answer


async def test_gzip_and_deflate_are_decoded_within_the_limit(intake):
    start, store, _ = intake
    port = await start(max_body=4096)
    raw = zlib.compressobj(wbits=-15)
    bodies = {
        "gzip": gzip.compress(EVENT),
        "x-gzip": gzip.compress(EVENT[:9]) + gzip.compress(EVENT[9:]),  # two members, one after the other
        "deflate": zlib.compress(EVENT),
    }
    for encoding, body in bodies.items():
        reader, writer = await _open(port, _request(body, headers={"Content-Encoding": encoding}))
        assert (await _answer(reader)).startswith(b"HTTP/1.1 202 "), encoding
        writer.close()
    reader, writer = await _open(port, _request(raw.compress(EVENT) + raw.flush(), headers={"Content-Encoding": "deflate"}))
    assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")  # deflate without zlib's wrapping
    writer.close()
    bomb = gzip.compress(b"[" + b" " * 10_000_000 + b"]")
    reader, writer = await _open(port, _request(bomb, headers={"Content-Encoding": "gzip"}))
    assert (await _answer(reader)).startswith(b"HTTP/1.1 413 ")
    writer.close()
    for body in (gzip.compress(EVENT)[:-6], b"not gzip"):
        reader, writer = await _open(port, _request(body, headers={"Content-Encoding": "gzip"}))
        answer = await _rest(reader)  # 400, and the connection closed
        assert answer.startswith(b"HTTP/1.1 400 ") and b"it is not valid gzip data" in answer
        writer.close()
    assert list(store.events) == ["e1"]


# --- bodies refused unread ----------------------------------------------------------------


@pytest.mark.parametrize("auth", [False, True])
async def test_a_body_refused_before_it_has_all_arrived_is_not_read_on_and_its_connection_closes(intake, auth):
    """After a 401 or a 413 aiohttp went on reading the body for 10 seconds (5 GB of an
    endless chunked one) before it closed the connection."""
    start, _, _ = intake
    port = await start(max_body=1024)
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    head += f"Authorization: Bearer {TOKEN}\r\n".encode() if auth else b""
    reader, writer = await _open(port, head + b"\r\n")
    chunk = b"%x\r\n" % 4096 + b" " * 4096 + b"\r\n"

    async def send_on() -> None:  # an endless body
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk)
                await writer.drain()

    sending = asyncio.create_task(send_on())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 " + (b"413" if auth else b"401") + b" ")
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5)  # closed (or reset): not read on for 10 s
    finally:
        sending.cancel()
        writer.close()
