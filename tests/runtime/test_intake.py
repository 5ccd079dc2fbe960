"""The HTTP event intake, on a real loopback server (aiohttp's test client)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from cmtyflow.adapters.webhook import sign
from cmtyflow.engine.model import Event
from cmtyflow.errors import UserError
from cmtyflow.runtime.intake import IntakeConfig, make_app, store_accept
from cmtyflow.runtime.listen import parse_listen, serve
from cmtyflow.store.sqlite import SqliteStore

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TS = str(int(NOW.timestamp()))
TOKEN = "tok-3f9a1c8e5b0d"
SECRET = "sec-77d0e2a4c9f1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOINED = {"id": "e1", "type": "member.joined", "at": "2026-12-01T10:00:00", "member": "u1"}
POSTED = {
    "id": "e2",
    "type": "message.posted",
    "at": "2026-12-01T10:05:00+00:00",
    "member": "u1",
    "data": {"text": "hi"},
}


class Store:
    """An ``accept`` that keeps events by id, like the real store's one transaction."""

    def __init__(self, fail: bool = False) -> None:
        self.events: dict[str, Event] = {}
        self.batches = 0
        self.wakes = 0
        self.fail = fail

    def accept(self, events: list[Event]) -> tuple[int, int]:
        if self.fail:
            raise RuntimeError("database is locked")
        self.batches += 1
        new = [e for e in events if e.id not in self.events]
        for event in new:
            self.events[event.id] = event
        return len(new), len(events) - len(new)

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def client(aiohttp_client: Any, store: Store) -> Any:
    """``await client(**config)``: a test client for an intake over ``store``."""

    async def start(accept: Any = None, **config: Any) -> Any:
        config.setdefault("token", TOKEN)
        config.setdefault("hmac_secret", SECRET)
        app = make_app(
            accept or store.accept,
            IntakeConfig(**config),
            default_tz=TZ,
            now=lambda: NOW,
            wake=store.wake,
        )
        return await aiohttp_client(app)

    return start


async def post(
    cli: Any, payload: Any, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    resp = await cli.post("/events", data=body, headers=all_headers, **kw)
    return resp.status, await resp.json(), resp


def signed(body: bytes, timestamp: str = TS, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-Cmtyflow-Timestamp": timestamp,
        "X-Cmtyflow-Signature": sign(secret, timestamp, body),
    }


# --- authentication --------------------------------------------------------------------------


async def test_bearer_token_accepts_one_event(client, store):
    cli = await client()
    status, body, _ = await post(cli, JOINED)
    assert (status, body) == (202, {"accepted": 1, "duplicates": 0})
    event = store.events["e1"]
    assert (event.type, event.member, event.at) == (
        "member.joined",
        "u1",
        datetime(2026, 12, 1, 10, 0, tzinfo=TZ),
    )


async def test_missing_credentials_is_401_with_www_authenticate(client, store):
    cli = await client()
    resp = await cli.post(
        "/events", data=json.dumps(JOINED), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await resp.json() == {
        "error": "authentication required: send Authorization: Bearer <token> or a signed request "
        "(X-Cmtyflow-Timestamp and X-Cmtyflow-Signature)"
    }
    assert store.events == {}


async def test_wrong_token_is_401_and_not_echoed(client, store):
    cli = await client()
    status, body, resp = await post(cli, JOINED, {"Authorization": "Bearer guess-123"})
    assert (status, body) == (401, {"error": "the bearer token is not valid"})
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = await post(cli, JOINED, {"Authorization": f"Basic {TOKEN}"})
    assert (status, body) == (401, {"error": "the bearer token is not valid"})
    assert store.events == {}


async def test_hmac_signed_request_is_accepted(client, store):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    resp = await cli.post(
        "/events", data=raw, headers={"Content-Type": "application/json", **signed(raw)}
    )
    assert resp.status == 202
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    assert list(store.events) == ["e1"]


async def test_hmac_with_a_wrong_token_still_passes(client, store):
    cli = await client()
    raw = json.dumps(JOINED).encode()
    status, body, _ = await post(cli, raw, {"Authorization": "Bearer nope", **signed(raw)})
    assert (status, body) == (202, {"accepted": 1, "duplicates": 0})


async def test_hmac_bad_signature_is_401_without_www_authenticate_when_no_token(client, store):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    headers = {"Content-Type": "application/json", **signed(raw, secret="other-secret")}
    resp = await cli.post("/events", data=raw, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"error": "the signature does not match the body"}
    assert "WWW-Authenticate" not in resp.headers
    assert store.events == {}


async def test_hmac_body_altered_after_signing_is_401(client, store):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    altered = json.dumps({**JOINED, "member": "u2"}).encode()
    resp = await cli.post(
        "/events", data=altered, headers={"Content-Type": "application/json", **signed(raw)}
    )
    assert resp.status == 401
    assert await resp.json() == {"error": "the signature does not match the body"}
    assert store.events == {}


@pytest.mark.parametrize("offset", [-301, 301])
async def test_hmac_stale_timestamp_is_401(client, store, offset):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    stale = str(int(TS) + offset)
    resp = await cli.post(
        "/events", data=raw, headers={"Content-Type": "application/json", **signed(raw, stale)}
    )
    assert resp.status == 401
    assert await resp.json() == {
        "error": "the X-Cmtyflow-Timestamp timestamp is outside the allowed window of 300 seconds; "
        "check the sender's clock"
    }
    assert store.events == {}


async def test_hmac_timestamp_at_the_edge_of_the_window_passes(client, store):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    edge = str(int(TS) - 300)
    resp = await cli.post(
        "/events", data=raw, headers={"Content-Type": "application/json", **signed(raw, edge)}
    )
    assert resp.status == 202


async def test_hmac_timestamp_not_a_number_is_401(client):
    cli = await client(token=None)
    raw = json.dumps(JOINED).encode()
    headers = {"Content-Type": "application/json", **signed(raw, "yesterday")}
    resp = await cli.post("/events", data=raw, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"error": "X-Cmtyflow-Timestamp must be a time in unix seconds"}


async def test_signature_headers_are_ignored_without_a_secret(client):
    cli = await client(hmac_secret=None)
    raw = json.dumps(JOINED).encode()
    headers = {"Content-Type": "application/json", **signed(raw)}
    resp = await cli.post("/events", data=raw, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {
        "error": "authentication required: send Authorization: Bearer <token>"
    }


# --- body forms and batches ------------------------------------------------------------------


async def test_array_form(client, store):
    cli = await client()
    status, body, _ = await post(cli, [JOINED, POSTED])
    assert (status, body) == (202, {"accepted": 2, "duplicates": 0})
    assert list(store.events) == ["e1", "e2"]
    assert store.events["e2"].data == {"text": "hi"}


async def test_events_object_form(client, store):
    cli = await client()
    status, body, _ = await post(cli, {"events": [JOINED, POSTED]})
    assert (status, body) == (202, {"accepted": 2, "duplicates": 0})
    assert list(store.events) == ["e1", "e2"]


async def test_events_object_with_other_keys_is_400(client, store):
    cli = await client()
    status, body, _ = await post(cli, {"events": [JOINED], "more": 1})
    assert (status, body) == (
        400,
        {"error": 'a batch object must be {"events": [...]} and nothing else'},
    )


async def test_empty_batch_is_202_and_stores_nothing(client, store):
    cli = await client()
    status, body, _ = await post(cli, [])
    assert (status, body) == (202, {"accepted": 0, "duplicates": 0})
    assert (store.batches, store.wakes) == (0, 0)


async def test_duplicate_is_accepted_once(client, store):
    cli = await client()
    assert (await post(cli, JOINED))[:2] == (202, {"accepted": 1, "duplicates": 0})
    assert (await post(cli, JOINED))[:2] == (202, {"accepted": 0, "duplicates": 1})
    assert (await post(cli, [JOINED, POSTED]))[:2] == (202, {"accepted": 1, "duplicates": 1})
    assert list(store.events) == ["e1", "e2"]


async def test_without_at_the_event_is_now_and_needs_an_id(client, store):
    cli = await client()
    bare = {"type": "checkin.posted", "member": "u1"}
    status, body, _ = await post(cli, bare)
    assert status == 400
    assert body["index"] == 0 and "give the event an id" in body["error"]
    assert store.events == {}
    assert (await post(cli, {**bare, "id": "c1"}))[:2] == (202, {"accepted": 1, "duplicates": 0})
    assert (await post(cli, {**bare, "id": "c1"}))[:2] == (202, {"accepted": 0, "duplicates": 1})
    assert store.events["c1"].at == NOW


async def test_with_at_and_without_id_a_retry_is_a_duplicate(client, store):
    cli = await client()
    posted = {"type": "checkin.posted", "member": "u1", "at": "2026-12-01T10:00:00+08:00"}
    assert (await post(cli, posted))[:2] == (202, {"accepted": 1, "duplicates": 0})
    assert (await post(cli, posted))[:2] == (202, {"accepted": 0, "duplicates": 1})
    (event,) = store.events.values()
    assert event.id.startswith("auto-")


async def test_a_member_id_is_read_without_the_spaces_around_it(client, store):
    # As the roster reads its ids (and a member object's): " u1 " started nothing.
    cli = await client()
    assert (await post(cli, {**POSTED, "member": " u1 "}))[0] == 202
    assert store.events["e2"].member == "u1"


async def test_a_body_that_is_not_its_content_encoding_is_400_and_an_unknown_one_415(client, store, caplog):
    # A broken deflate or gzip body answered 500 "internal error" (the server's fault,
    # so clients retried it); an encoding aiohttp cannot read here, a plain-text 400.
    cli = await client()
    for encoding in ("deflate", "gzip"):
        status, body, _ = await post(cli, json.dumps(JOINED).encode(), {"Content-Encoding": encoding})
        assert status == 400 and body["error"] == f"the body cannot be read as {encoding}: it is not valid {encoding} data"
    status, body, _ = await post(cli, json.dumps(JOINED).encode(), {"Content-Encoding": "compress"})
    assert status == 415 and "Content-Encoding compress is not accepted" in body["error"]
    import gzip

    status, _, _ = await post(cli, gzip.compress(json.dumps(JOINED).encode()), {"Content-Encoding": "gzip"})
    assert status == 202 and "e1" in store.events
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "internal error", no unhandled exception


async def test_errors_quote_at_most_a_little_of_what_was_sent(client, store):
    cli = await client()
    status, body, resp = await post(cli, {**JOINED, "at": "A" * 900_000})
    assert status == 400 and len(body["error"]) < 200 and body["error"].endswith("…' is not an ISO 8601 datetime")
    status, body, _ = await post(cli, {**JOINED, "at": 1795400000})
    assert (status, body["error"]) == (400, "events[0]: at must be text (an ISO 8601 datetime), not 1795400000")
    status, body, _ = await post(cli, {**JOINED, "type": 5})
    assert (status, body["error"]) == (400, "events[0]: type must be text (a dotted name such as message.posted), not 5")
    status, body, _ = await post(cli, b'{"id": "a\x01b"}'.replace(b"\\x01", b"\x01"))
    assert status == 400 and " at at " not in body["error"] and "Invalid control character" in body["error"]


async def test_member_object_updates_the_roster(client, store):
    cli = await client()
    status, _, _ = await post(
        cli, {**JOINED, "member": {"id": "u9", "name": "新人", "tags": "a;b"}}
    )
    assert status == 202
    event = store.events["e1"]
    assert (event.member, event.member_update) == (
        "u9",
        {"id": "u9", "name": "新人", "tags": ["a", "b"]},
    )


async def test_one_bad_event_stores_nothing_and_names_its_index(client, store):
    cli = await client()
    status, body, _ = await post(
        cli, [JOINED, POSTED, {"id": "e3", "at": "2026-12-01T10:00:00"}, {"oops": 1}]
    )
    assert (status, body) == (400, {"error": "events[2]: missing type", "index": 2})
    assert (store.events, store.batches, store.wakes) == ({}, 0, 0)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ("text", "an event must be a JSON object"),
        ({**JOINED, "extra": 1}, "unknown event field(s): extra"),
        ({**JOINED, "at": "tomorrow"}, "at 'tomorrow' is not an ISO 8601 datetime"),
        ({**JOINED, "data": [1]}, "data must be a JSON object"),
        ({**JOINED, "member": {"name": "no id"}}, "member: missing id"),
        ({**JOINED, "member": {"id": "u1", "tags": 5}}, "member: tags must be text (a;b) or a list of text"),
        # Years no timezone conversion can hold: the runner failed on it (500 here).
        ({**JOINED, "at": "0001-01-01T00:00:00"}, "at '0001-01-01T00:00:00' is out of range: give a time between 1971 and 9000"),
        ({**JOINED, "at": "9999-12-31T23:00:00+08:00"}, "at '9999-12-31T23:00:00+08:00' is out of range: give a time between 1971 and 9000"),
        ({**JOINED, "type": "  "}, 'type "  " has a space; write a dotted name such as message.posted'),
        ({**JOINED, "type": "message..posted"}, 'type "message..posted" has an empty part between dots; write a dotted name such as message.posted'),
        ({**JOINED, "data": 0}, "data must be a JSON object"),
        ({**JOINED, "data": ""}, "data must be a JSON object"),
    ],
)
async def test_bad_single_event_is_400_at_index_0(client, store, event, error):
    cli = await client()
    status, body, _ = await post(cli, event)
    assert (status, body) == (400, {"error": f"events[0]: {error}", "index": 0})
    assert store.events == {}


# --- limits and formats ----------------------------------------------------------------------


async def test_body_over_the_limit_by_content_length_is_413(client, store):
    cli = await client(max_body=1024)
    status, body, _ = await post(cli, [JOINED] * 20)
    assert (status, body) == (413, {"error": "the body is larger than the limit of 1024 bytes"})
    assert store.events == {}


async def test_chunked_body_over_the_limit_is_413(client, store):
    cli = await client(max_body=1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 400

    resp = await cli.post(
        "/events", data=chunks(), headers={"Content-Type": "application/json", **AUTH}
    )
    assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in resp.request_info.headers
    assert resp.status == 413
    assert await resp.json() == {"error": "the body is larger than the limit of 1024 bytes"}


async def test_chunked_body_within_the_limit_is_read(client, store):
    cli = await client(max_body=1024)
    raw = json.dumps([JOINED, POSTED]).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 50):
            yield raw[i : i + 50]

    resp = await cli.post(
        "/events", data=chunks(), headers={"Content-Type": "application/json", **AUTH}
    )
    assert resp.status == 202
    assert await resp.json() == {"accepted": 2, "duplicates": 0}


async def test_body_exactly_at_the_limit_is_read(client, store):
    raw = json.dumps(JOINED).encode()
    cli = await client(max_body=len(raw))
    assert (await post(cli, raw))[:2] == (202, {"accepted": 1, "duplicates": 0})


async def test_too_many_events_is_413(client, store):
    cli = await client(max_events=3)
    many = [{**JOINED, "id": f"e{i}"} for i in range(4)]
    status, body, _ = await post(cli, many)
    assert (status, body) == (413, {"error": "4 events is more than the limit of 3 per request"})
    assert (await post(cli, many[:3]))[:2] == (202, {"accepted": 3, "duplicates": 0})


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_other_content_type_is_415(client, store, content_type):
    cli = await client()
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    resp = await cli.post("/events", data=json.dumps(JOINED).encode(), headers=headers)
    assert resp.status == 415
    assert await resp.json() == {"error": "the body must be sent as Content-Type: application/json"}
    assert store.events == {}


async def test_a_byte_order_mark_is_read_past(client, store):
    cli = await client()
    status, body, _ = await post(cli, b"\xef\xbb\xbf" + json.dumps(JOINED).encode())
    assert (status, body) == (202, {"accepted": 1, "duplicates": 0})


async def test_content_type_parameters_are_allowed_but_only_utf8(client, store):
    cli = await client()
    ok = await post(cli, JOINED, {"Content-Type": "application/json; charset=UTF-8"})
    assert ok[:2] == (202, {"accepted": 1, "duplicates": 0})
    status, body, _ = await post(cli, POSTED, {"Content-Type": "application/json; charset=latin-1"})
    assert (status, body) == (415, {"error": "the body must be UTF-8, not latin-1"})


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"type": ', "the body is not JSON: Expecting value at line 1 column 10"),
        (b"", "the body is not JSON: Expecting value at line 1 column 1"),
        (b'{"type": "\xff"}', "the body is not valid UTF-8"),
        (
            b'{"id": "e1", "type": "a.b", "data": {"x": NaN}}',
            "the body is not JSON: NaN is not a JSON value",
        ),
        (b"[" * 100_000, "the body is not JSON: nested too deeply"),
        (b'{"id": "e1", "type": "a.b", "data": {"n": ' + b"9" * 5000 + b"}}", "the body is not JSON: a number has more than 4300 digits"),
    ],
)
async def test_bad_json_is_400(client, store, raw, error):
    cli = await client()
    status, body, _ = await post(cli, raw)
    assert (status, body) == (400, {"error": error})
    assert store.events == {}


# --- failures and waking ---------------------------------------------------------------------


async def test_store_failure_is_503_and_reveals_no_secret(client, caplog):
    failing = Store(fail=True)
    cli = await client(accept=failing.accept)
    raw = json.dumps({**JOINED, "data": {"text": "private words"}}).encode()
    with caplog.at_level(logging.INFO, logger="cmtyflow.intake"):
        resp = await cli.post(
            "/events", data=raw, headers={"Content-Type": "application/json", **AUTH, **signed(raw)}
        )
        text = await resp.text()
    assert resp.status == 503
    assert json.loads(text) == {"error": "the event store is unavailable; retry"}
    for secret in (TOKEN, SECRET, signed(raw)["X-Cmtyflow-Signature"]):
        assert secret not in text
        assert secret not in str(dict(resp.headers))
        assert secret not in caplog.text
    assert "private words" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.name == "cmtyflow.intake"] == [
        "intake: could not store a batch of 1 event(s): RuntimeError: database is locked"
    ]


async def test_wake_is_called_once_per_batch_that_stores_something(client, store):
    cli = await client()
    await post(cli, [JOINED, POSTED])
    assert store.wakes == 1
    await post(cli, {**JOINED, "id": "e3"})
    assert store.wakes == 2
    await post(cli, JOINED)  # only a duplicate: nothing new to run
    assert store.wakes == 2
    await post(cli, [JOINED, {"bad": 1}])
    assert store.wakes == 2



def test_store_accept_calls_a_store_that_is_not_thread_safe_inline(store):
    store.add_events = store.accept
    assert store_accept(store) == store.accept


async def test_a_busy_sqlite_store_does_not_stop_the_event_loop(client, tmp_path):
    """While the dispatcher's thread holds the store (a claim, a group commit), a batch
    waits for it on a thread of its own: the loop goes on, and the batch is stored
    once the store is free."""
    db = SqliteStore(tmp_path / "state.db")
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    add_events = db.add_events

    def add_when_free(events: list[Event]) -> tuple[int, int]:
        loop.call_soon_threadsafe(entered.set)
        return add_events(events)

    db.add_events = add_when_free  # type: ignore[method-assign]
    cli = await client(accept=store_accept(db))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db._lock:  # noqa: SLF001 - as the dispatcher's thread holds it
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        posting = asyncio.ensure_future(post(cli, JOINED))
        # Inline, the handler would block this loop inside add_events until the holder
        # gave up (10 s), and only then could this wait end, with the post done.
        await asyncio.wait_for(entered.wait(), 5)
        assert not posting.done()
    finally:
        release.set()
        holder.join()
    status, body, _ = await posting
    assert (status, body) == (202, {"accepted": 1, "duplicates": 0})
    assert [e.id for e in db.pending_events(datetime(2027, 1, 1, tzinfo=UTC))] == ["e1"]
    db.close()

async def test_healthz_needs_no_auth_and_says_nothing_else(client):
    cli = await client()
    resp = await cli.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}


async def test_other_methods_and_paths_answer_json(client):
    cli = await client()
    resp = await cli.get("/events", headers=AUTH)
    assert resp.status == 405
    assert await resp.json() == {"error": "method not allowed"}
    assert resp.headers["Allow"] == "POST"
    resp = await cli.get("/nowhere")
    assert resp.status == 404
    assert await resp.json() == {"error": "not found"}


async def test_serve_listens_on_loopback(store):
    app = make_app(store.accept, IntakeConfig(token=TOKEN), default_tz=TZ, now=lambda: NOW)
    runner = await serve(app, "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as resp:
                assert (resp.status, await resp.json()) == (200, {"ok": True})
            with pytest.raises(UserError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
                await serve(
                    make_app(
                        store.accept, IntakeConfig(token=TOKEN), default_tz=TZ, now=lambda: NOW
                    ),
                    "127.0.0.1",
                    port,
                )
    finally:
        await runner.cleanup()


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer: its head and its Content-Length of body (the connection may stay)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def test_a_body_that_stalls_is_408_and_stop_does_not_wait_a_minute_for_one(store):
    """A client that sends its headers and part of its body held the connection for good
    and the runner's stop for aiohttp's 60 s; with a signed intake an unauthenticated
    client could do it (the signature is checked once the body is in)."""
    reports: list[tuple[str, dict[str, Any]]] = []
    app = make_app(store.accept, IntakeConfig(token=TOKEN, read_timeout=0.3), default_tz=TZ, now=lambda: NOW,
                   log=lambda event, /, **fields: reports.append((event, fields)))
    runner = await serve(app, "127.0.0.1", 0, shutdown_timeout=0.3)
    port = runner.addresses[0][1]
    head = f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{"
    reader, writer = await _raw(port, head.encode())
    answer = await _answer(reader)
    assert answer.startswith(b"HTTP/1.1 408 ") and b'{"error": "the body did not arrive within 0.3 seconds"}' in answer
    assert reports == [("intake_refused", {"remote": "127.0.0.1", "status": 408})]
    writer.close()
    # One more that stalls, then stop: it is let go after the shutdown timeout.
    _, stalled = await _raw(port, head.encode())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(runner.cleanup(), 10)  # aiohttp's default waited 60 s
    stalled.close()
    assert store.events == {}


async def test_a_request_that_cannot_be_parsed_is_reported_without_its_bytes(store):
    """aiohttp answers a request it cannot parse itself, and logged the bytes it quotes
    (here a token) with a traceback, outside the runner's log (plain text amid JSON)."""
    reports: list[tuple[str, dict[str, Any]]] = []
    app = make_app(store.accept, IntakeConfig(token=TOKEN), default_tz=TZ, now=lambda: NOW,
                   log=lambda event, /, **fields: reports.append((event, fields)))
    runner = await serve(app, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        bad = f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n"
        reader, writer = await _raw(port, bad.encode())
        answer = await _answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
        assert reports and all(event == "intake_bad_request" for event, _ in reports)
        assert TOKEN not in repr(reports)
    finally:
        await runner.cleanup()


# --- configuration ---------------------------------------------------------------------------


def test_config_without_credentials_is_refused():
    with pytest.raises(UserError) as info:
        IntakeConfig(token=None, hmac_secret=None).check()
    assert str(info.value) == (
        "the event intake needs authentication: set CMTYFLOW_INTAKE_TOKEN (bearer token) "
        "or CMTYFLOW_INTAKE_SECRET (HMAC signing secret)"
    )
    with pytest.raises(UserError):
        make_app(Store().accept, IntakeConfig(token=""), default_tz=TZ, now=lambda: NOW)


def test_config_limits_must_be_positive():
    with pytest.raises(UserError, match="^intake max_events must be positive, not 0$"):
        IntakeConfig(token=TOKEN, max_events=0).check()


def test_config_from_env_and_masked_repr():
    config = IntakeConfig.from_env({"CMTYFLOW_INTAKE_TOKEN": TOKEN, "CMTYFLOW_INTAKE_SECRET": "  "})
    assert (config.token, config.hmac_secret) == (TOKEN, None)
    config.check()
    assert TOKEN not in repr(config)
    assert repr(config) == (
        "IntakeConfig(token='***', hmac_secret=None, max_body=1048576, max_events=10000, max_skew=300.0, "
        "read_timeout=30.0, header_timeout=10.0, max_connections=256)"
    )
    with pytest.raises(UserError):
        IntakeConfig.from_env({}).check()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("localhost:9000", ("localhost", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("8080", ("127.0.0.1", 8080)),
        ("events.example.org:443", ("events.example.org", 443)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("localhost", "--listen expects HOST:PORT, [IPv6]:PORT or :PORT, not 'localhost'"),
        ("", "--listen expects HOST:PORT, [IPv6]:PORT or :PORT, not ''"),
        ("host:", "--listen: the port must be a number from 1 to 65535, not ''"),
        (":0", "--listen: the port must be a number from 1 to 65535, not '0'"),
        (":65536", "--listen: the port must be a number from 1 to 65535, not '65536'"),
        ("host:http", "--listen: the port must be a number from 1 to 65535, not 'http'"),
        ("::1:8080", "--listen: put an IPv6 address in brackets, e.g. [::1]:8080"),
        ("[::1]8080", "--listen expects HOST:PORT, [IPv6]:PORT or :PORT, not '[::1]8080'"),
        ("[nope]:80", "--listen: 'nope' is not an IPv6 address"),
        ("bad host:80", "--listen: 'bad host' is not a host name or address"),
    ],
)
def test_parse_listen_rejects(text, error):
    with pytest.raises(UserError) as info:
        parse_listen(text)
    assert str(info.value) == error


async def test_a_drain_of_zero_stops_at_once_with_a_body_still_arriving(store):
    """aiohttp reads a shutdown timeout of 0 as none: `run --drain 0` waited for a body
    still arriving (up to its read timeout) before it stopped."""
    app = make_app(store.accept, IntakeConfig(token=TOKEN, read_timeout=30), default_tz=TZ, now=lambda: NOW)
    runner = await serve(app, "127.0.0.1", 0, shutdown_timeout=0)
    port = runner.addresses[0][1]
    head = f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[{"
    _, stalled = await _raw(port, head.encode())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(runner.cleanup(), 5)
    stalled.close()
    assert store.events == {}
