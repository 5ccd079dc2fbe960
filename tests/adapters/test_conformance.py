"""The conformance suite: every HTTP adapter against a loopback fake of its platform."""

from __future__ import annotations

import json
import socket
from typing import Any

import aiohttp
import pytest
from adapter_cases import CASES, HOSTILE, Case
from platform_fakes import FakeClock

from cmtyflow.adapters import registry
from cmtyflow.adapters.base import (
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
)
from cmtyflow.adapters.ratelimit import RateLimiter

ERRORS = {"Transient": TransientDeliveryError, "Permanent": PermanentDeliveryError}


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def start(adapter_for: Any) -> Any:
    async def build(case: Case, **kw: Any) -> tuple[Any, Any]:
        fake = case.fake()
        return await adapter_for(case.adapter, fake, case.settings, **kw), fake

    return build


async def test_exact_request_and_receipt(case: Case, start: Any) -> None:
    adapter, fake = await start(case)
    msg = case.message()
    receipt = await adapter.send(msg)
    assert isinstance(receipt, Receipt)
    assert receipt.platform_id == case.receipt
    case.expect(fake.requests[-1], msg, fake)


@pytest.mark.parametrize("retry_after", [3, 0.25])
async def test_429_is_transient_with_retry_after(
    case: Case, start: Any, retry_after: float
) -> None:
    adapter, fake = await start(case)
    fake.then(fake.rate_limited(retry_after))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(case.message())
    assert caught.value.retry_after == pytest.approx(retry_after)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(case: Case, start: Any, status: int) -> None:
    adapter, fake = await start(case)
    fake.then(fake.error(status))
    with pytest.raises(TransientDeliveryError, match=str(status)):
        await adapter.send(case.message())
    # The next attempt goes through: nothing was left half-done.
    assert (await adapter.send(case.message())).platform_id == case.receipt


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_other_4xx_is_permanent_with_platform_description(
    case: Case, start: Any, status: int
) -> None:
    adapter, fake = await start(case)
    fake.then(fake.error(status))
    responded = fake.error(status)(None)  # the body the platform sends for it
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(case.message())
    said = platform_description(responded.text or "")
    assert said and said in str(caught.value)


def platform_description(body: str) -> str:
    """What the platform said, wherever its format puts it."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    for field in ("description", "message", "error", "errmsg", "msg"):
        if isinstance(data, dict) and data.get(field):
            return str(data[field])
    return body


async def test_platform_error_conventions_in_body(case: Case, start: Any, clock: FakeClock) -> None:
    adapter, fake = await start(case)
    for responder, kind, retry_after in case.body_errors(fake):
        fake.then(responder)
        with pytest.raises(ERRORS[kind]) as caught:
            await adapter.send(case.message())
        if kind == "Transient":
            assert caught.value.retry_after == retry_after
            clock.now += retry_after or 0  # the dispatcher waits that long before the next


async def test_hanging_server_times_out_as_transient(case: Case, start: Any) -> None:
    adapter, fake = await start(case, timeout=0.2)
    fake.then("hang")
    with pytest.raises(TransientDeliveryError, match="did not answer within 0.2s") as caught:
        await adapter.send(case.message())
    fake.release.set()
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_refused_connection_is_transient(case: Case, limiter: RateLimiter) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = case.fake()
    cls = registry.get(case.adapter)
    settings = cls.Settings.model_validate(case.settings(f"http://127.0.0.1:{port}", fake))
    adapter = cls(settings, "chan", timeout=0.5, limiter=limiter)
    with pytest.raises(TransientDeliveryError, match="cannot reach 127.0.0.1") as caught:
        await adapter.send(case.message())
    await adapter.close()
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_secrets_never_shown(case: Case, start: Any) -> None:
    adapter, fake = await start(case)
    fake.then(fake.error(500), fake.error(403))
    shown: list[str] = [
        repr(adapter),
        str(adapter),
        str(adapter.describe()),
        repr(adapter.settings),
        str(adapter.settings),
    ]
    for _ in range(2):
        with pytest.raises((TransientDeliveryError, PermanentDeliveryError)) as caught:
            await adapter.send(case.message())
        shown.append(str(caught.value))
    described = adapter.describe()
    assert described["adapter"] == case.adapter and described["channel"] == "chan"
    for secret in case.secrets(fake):
        for text in shown:
            assert secret not in text


@pytest.mark.parametrize("name", HOSTILE, ids=["everyone", "mentions"])
async def test_member_data_stays_inert_in_every_format(case: Case, start: Any, name: str) -> None:
    adapter, fake = await start(case)
    cls = type(adapter)
    for fmt in cls.capabilities.formats:
        # As the renderer does: member values are escaped for the format; the template's
        # own "!" is written as the format needs it (MarkdownV2 reserves it).
        text = f"Hi {cls.escape(name, fmt)}{cls.escape('!', fmt)}"
        await adapter.send(case.message(text, fmt=fmt))
        case.inert(fake.requests[-1], fmt, name)


async def test_shared_session_is_left_open(case: Case, start: Any) -> None:
    async with aiohttp.ClientSession() as session:
        adapter, _ = await start(case, session=session)
        await adapter.send(case.message())
        await adapter.close()
        assert not session.closed
