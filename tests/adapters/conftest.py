from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from platform_fakes import FakeClock, FakePlatform

from cmtyflow.adapters import registry
from cmtyflow.adapters.ratelimit import RateLimiter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(monotonic=clock.monotonic, sleep=clock.sleep)


@pytest.fixture
def serve(aiohttp_server: Any) -> Callable[[FakePlatform], Awaitable[str]]:
    """Start ``fake`` on 127.0.0.1; return its base URL. Hanging handlers are released
    at teardown so the server closes at once."""
    started: list[FakePlatform] = []

    async def start(fake: FakePlatform) -> str:
        server = await aiohttp_server(fake.app(), host="127.0.0.1")
        started.append(fake)
        return str(server.make_url("")).rstrip("/")

    yield start
    for fake in started:
        fake.release.set()


@pytest.fixture
async def adapter_for(serve: Any, limiter: RateLimiter) -> Any:
    """``await adapter_for(name, fake, settings)``: the adapter, pointed at ``fake``.

    ``settings(base_url, fake)`` gives the playbook settings; every adapter made is
    closed at teardown."""
    made: list[Any] = []

    async def build(
        name: str, fake: FakePlatform, settings: Callable[[str, Any], dict[str, Any]], **kw: Any
    ) -> Any:
        base = await serve(fake)
        cls = registry.get(name)
        kw.setdefault("timeout", 0.2)
        kw.setdefault("limiter", limiter)
        adapter = cls(cls.Settings.model_validate(settings(base, fake)), "chan", **kw)
        made.append(adapter)
        await adapter.open()
        return adapter

    yield build
    for adapter in made:
        await adapter.close()
