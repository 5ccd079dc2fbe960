"""What the runner tests share: playbooks written to a folder, events, and ``Harness``,
a runner on a virtual clock and the SQLite store that can crash and restart."""

from __future__ import annotations

import random
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cmtyflow.clock import VirtualClock
from cmtyflow.engine.program import Program
from cmtyflow.runtime.channels import ChannelSet
from cmtyflow.runtime.inputs import parse_event
from cmtyflow.runtime.prepare import load_programs
from cmtyflow.runtime.runner import Runner, build_runner
from cmtyflow.store.sqlite import SqliteStore

UTC = ZoneInfo("UTC")


def write_playbook(folder: Path, text: str, name: str = "pb.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def event(raw: dict[str, Any]) -> Any:
    return parse_event(raw, UTC)


class Harness:
    """A runner and what it runs on; ``reopen()`` is a restart on the same state."""

    def __init__(self, tmp_path: Path, paths: list[Path], start: datetime, **runner_kw: Any) -> None:
        self.tmp_path = tmp_path
        self.paths = paths
        self.clock = VirtualClock(start)
        self.runner_kw = runner_kw
        self.state = tmp_path / "state.db"
        self.store: SqliteStore | None = None
        self.runner: Runner | None = None
        self.programs: list[Program] = []

    async def open(self, overrides: dict[str, Any] | None = None) -> Runner:
        result, self.programs = load_programs(self.paths)
        self.store = SqliteStore(self.state)
        channels = ChannelSet(self.programs, {}, overrides=overrides)
        kw = {"rng": random.Random(7), **self.runner_kw}
        self.runner = build_runner(result, self.programs, self.store, channels, self.clock, **kw)
        await self.runner.start()
        return self.runner

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.close()
            self.runner = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def crash(self) -> None:
        """Stop as a killed process would: nothing finished, nothing recorded (the
        adapters' connections are closed only so that the test leaks nothing)."""
        assert self.runner is not None and self.store is not None
        await self.runner.channels.close()
        self.store.close()
        self.store = None
        self.runner = None

    async def at(self, when: datetime) -> datetime | None:
        self.clock.set(when)
        assert self.runner is not None
        return await self.runner.tick()

    async def run_until(self, end: datetime) -> None:
        """Tick from due instant to due instant, up to (not including) ``end``."""
        assert self.runner is not None
        nxt = await self.runner.tick()
        while nxt is not None and nxt < end:
            self.clock.set(max(nxt, self.clock.now()))
            nxt = await self.runner.tick()
