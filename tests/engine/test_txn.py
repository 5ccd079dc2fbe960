"""A run read while an input is handled is changed in place (engine/txn.py): copied
first from a store that keeps its objects (the dry run's), not from one whose reads
decode a run of their own (``fresh_runs``: the SQL stores)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cmtyflow.engine.model import Decision, Run
from cmtyflow.engine.txn import Txn
from cmtyflow.store.memory import MemoryStore
from cmtyflow.store.sqlite import SqliteStore

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _run() -> Run:
    return Run(id="r1", playbook="pb", flow="f", member="m1", version="v1", trigger="t", mode="single",
               started_at=T0, timezone="UTC")


def test_a_run_the_store_keeps_is_copied_before_it_is_changed() -> None:
    store = MemoryStore()
    store.apply(Decision(runs={"r1": _run()}))
    found = Txn(store, Decision()).run("r1")
    assert found is not None and found is not store.get_run("r1")
    found.pc = 3
    assert store.get_run("r1").pc == 0  # type: ignore[union-attr]


def test_a_run_decoded_for_the_read_is_not_copied(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.apply(Decision(runs={"r1": _run()}))
    decoded: list[Run] = []
    real = store.get_run

    def get_run(run_id: str) -> Run | None:
        run = real(run_id)
        if run is not None:
            decoded.append(run)
        return run

    store.get_run = get_run  # type: ignore[method-assign]
    decision = Decision()
    found = Txn(store, decision).run("r1")
    assert found is decoded[0] and decision.runs["r1"] is found
    assert Txn(store, Decision()).run("r1") == _run()  # each read decodes its own
    store.close()
