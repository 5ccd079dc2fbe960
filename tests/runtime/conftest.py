"""Runner fixtures: a loopback webhook sink and runners on a virtual clock with the
SQLite store (``runner_harness.Harness``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from loopback_sink import Sink
from runner_harness import Harness


@pytest.fixture
async def sink(aiohttp_server: Any) -> Any:
    s = Sink()
    server = await aiohttp_server(s.app(), host="127.0.0.1")
    s.url = str(server.make_url("/hook"))  # type: ignore[attr-defined]
    yield s
    if s.release is not None:
        s.release.set()


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    made: list[Harness] = []

    def make(paths: list[Path], start: datetime, **kw: Any) -> Harness:
        h = Harness(tmp_path, paths, start, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.store is not None:
            h.store.close()

