"""The collector around bulk work: thresholds raised and the heap so far frozen for
the work's duration, both as before afterwards (also when the work fails), and a
freeze made by someone else left to them. ``Dispatcher.run_due`` runs under it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.adapters.base import Capabilities, OutboundMessage, Receipt
from cmtyflow.engine.model import Decision, QueuedMessage
from cmtyflow.runtime.channels import OpenChannel
from cmtyflow.runtime.collector import collecting_less
from cmtyflow.runtime.dispatch import GC_THRESHOLDS, Dispatcher
from cmtyflow.store.memory import MemoryStore

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC"))


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_thresholds_and_freeze_hold_for_the_work_only(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    with collecting_less((50_000, 20, 5)):
        assert gc.get_threshold() == (50_000, 20, 5)
        assert gc.get_freeze_count() > 0
        made = [[i] for i in range(100)]  # made meanwhile: not frozen
        assert all(gc.is_tracked(x) for x in made)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_restored_when_the_work_fails(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), collecting_less((1_000_000, 20, 10)):
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_to_them(collector: None) -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    with collecting_less((50_000, 10, 10)):
        pass
    assert gc.get_freeze_count() == frozen


class Hook:
    capabilities = Capabilities(formats=("plain",), idempotent=True)

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    async def send(self, message: OutboundMessage) -> Receipt:
        self.seen.append(gc.get_threshold())
        return Receipt(platform_id="p")


class Channels:
    def __init__(self, adapter: Any) -> None:
        self.opened = OpenChannel("hook", "webhook", adapter, adapter.capabilities)

    def adapter_for(self, playbook: str, channel: str) -> OpenChannel | None:
        return self.opened


def test_run_due_sends_under_it_and_restores(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    store = MemoryStore()
    store.put_members([{"id": "m1", "name": "Ann"}])
    store.apply(Decision(messages=[QueuedMessage(
        key="k1", playbook="pb", run="r1", flow="f", step="s", occurrence=1, channel="hook", adapter="webhook",
        member="m1", to="member", text="hi", format="plain", variant=None, urgent=False, queued_at=T0, deliver_at=T0,
    )]))
    hook = Hook()
    dispatcher = Dispatcher(store, Channels(hook), lambda: T0, policies={})  # type: ignore[arg-type]
    stats = asyncio.run(dispatcher.run_due(T0))
    assert stats.sent == 1
    assert hook.seen == [GC_THRESHOLDS]
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_overlapping_works_ending_in_any_order_restore_the_settings_once(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    first, second = collecting_less((50_000, 10, 10)), collecting_less((60_000, 10, 10))
    first.__enter__()
    second.__enter__()
    assert gc.get_threshold() == (60_000, 10, 10)
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert gc.get_threshold() == (60_000, 10, 10) and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_overlapping_dispatches_restore_the_settings(collector: None) -> None:
    """As a worker's send jobs: the first dispatch to start ends first."""
    gc.set_threshold(700, 10, 10)

    async def both() -> None:
        go = [asyncio.Event(), asyncio.Event()]

        class Held(Hook):
            def __init__(self, i: int) -> None:
                super().__init__()
                self.i = i

            async def send(self, message: OutboundMessage) -> Receipt:
                await go[self.i].wait()
                return await super().send(message)

        dispatchers = []
        for i in range(2):
            store = MemoryStore()
            store.put_members([{"id": "m1", "name": "Ann"}])
            store.apply(Decision(messages=[QueuedMessage(
                key=f"k{i}", playbook="pb", run="r1", flow="f", step="s", occurrence=1, channel="hook",
                adapter="webhook", member="m1", to="member", text="hi", format="plain", variant=None,
                urgent=False, queued_at=T0, deliver_at=T0,
            )]))
            dispatchers.append(Dispatcher(store, Channels(Held(i)), lambda: T0, policies={}))  # type: ignore[arg-type]
        first = asyncio.ensure_future(dispatchers[0].run_due(T0))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(dispatchers[1].run_due(T0))
        await asyncio.sleep(0.01)
        go[0].set()
        assert (await first).sent == 1
        assert gc.get_threshold() == GC_THRESHOLDS  # the second still sends
        go[1].set()
        assert (await second).sent == 1

    asyncio.run(both())
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
