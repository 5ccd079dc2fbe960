"""Opening the SQLite state and taking its write lock: the connection's settings,
migrations, the statistics an earlier version kept, the file's identity, and
``BEGIN IMMEDIATE`` that tries every millisecond (``store.sqlite`` uses them)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from ..errors import UserError
from .migrations import migrate


def open_db(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not path.startswith("file:"):
        if Path(path).is_dir():
            raise UserError(f"{path}: a folder; the state is a file in it, e.g. {Path(path) / 'state.db'}")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the state folder: {exc.strerror or exc}") from None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=512)
    except sqlite3.Error as exc:
        raise UserError(f"{path}: cannot open the state database: {exc}") from None
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = OFF")  # no foreign keys: rows refer by id, checked by the engine
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA cache_size = -32768")  # 32 MiB
        migrate(db, path)
        forget_statistics(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB" or "not a database" in str(exc):
            raise UserError(f"{path}: not an SQLite database (is --state/CMTYFLOW_STATE the right file?)") from None
        raise UserError(f"{path}: cannot open the state database: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


BUSY_SECONDS = 10.0  # how long a write waits for another connection's (as busy_timeout)
BUSY_POLL = 0.001  # seconds between its tries


def begin(db: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``BUSY_SECONDS`` for another writer, trying
    again every millisecond. SQLite's own wait tries every 100 ms after its first
    quarter second, and a runner working through a backlog leaves the lock free for
    well under a millisecond between its groups of inputs: an `emit` waited 5.2 s
    behind 20,000 of them (and would have given up at 10 s behind more)."""
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = None
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED") and "locked" not in str(exc):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + BUSY_SECONDS
                if now >= deadline:
                    raise
            time.sleep(BUSY_POLL)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")


def forget_statistics(db: sqlite3.Connection) -> None:
    """Drop the table statistics an earlier version kept (``PRAGMA optimize`` at close).
    Taken while the outbox was small (a first run), they stayed when it grew, and the
    group commit of deliveries was planned as a scan of the whole outbox per delivery:
    5,000 deliveries took 31.6 s instead of 0.13 s. Without statistics SQLite takes
    every table for large and looks rows up by their indexes, as these statements
    are written to be."""
    found = db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone()
    if found is None or db.execute("SELECT 1 FROM sqlite_stat1 LIMIT 1").fetchone() is None:
        return
    try:
        db.execute("DELETE FROM sqlite_stat1")
        db.execute("ANALYZE sqlite_schema")  # the planner reloads what is left: nothing
    except sqlite3.OperationalError:
        pass  # another writer holds the file (busy): the next open drops them


def identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino
