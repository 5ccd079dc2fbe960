"""The SQLite state schema and its migrations (SPEC 5.1).

Rules:
- ``MIGRATIONS`` is append-only: step N (1-based) takes a database from version N-1
  to N. A released step is never edited; a change is a new step.
- The version is ``PRAGMA user_version``; every pending step and the new version
  commit in one transaction at open, so a crash mid-way leaves the old schema.
- A database newer than this code, or an SQLite file of another application, is
  refused with a ``UserError`` (never opened, never changed).
- Key columns are NOT NULL: a campaign's member and a send without variant are kept
  as '' (member ids and variant names are never empty). Every datetime is two
  columns: ``*_ts`` (POSIX seconds, for order and indexes) and the text from
  ``codec.dt_text`` (the original offset and zone).
"""

from __future__ import annotations

import sqlite3

from ..errors import UserError

APPLICATION_ID = 0x636D7466  # "cmtf" in the file header (``PRAGMA application_id``)

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

-- roster, in insertion order (seq); timezone '' when the member has none
CREATE TABLE members (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, timezone TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX members_timezone ON members (timezone);
-- every member timezone ever seen (the driver's schedule zones only grow)
CREATE TABLE zones (timezone TEXT PRIMARY KEY) WITHOUT ROWID;

CREATE TABLE states (
    seq INTEGER PRIMARY KEY, playbook TEXT NOT NULL, member TEXT NOT NULL, state TEXT NOT NULL,
    UNIQUE (playbook, member)
);

-- runs of any status, finished ones kept; body: codec JSON of the other fields
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, playbook TEXT NOT NULL, flow TEXT NOT NULL,
    member TEXT NOT NULL, status TEXT NOT NULL, started_ts REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX runs_flow ON runs (playbook, flow, member, status);

CREATE TABLE timers (
    id TEXT PRIMARY KEY, run TEXT NOT NULL, due_ts REAL NOT NULL, due TEXT NOT NULL,
    kind TEXT NOT NULL, set_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX timers_due ON timers (due_ts, id);
CREATE INDEX timers_run ON timers (run);

CREATE TABLE waits (
    seq INTEGER PRIMARY KEY, run TEXT NOT NULL, playbook TEXT NOT NULL, event_type TEXT NOT NULL,
    member TEXT NOT NULL, where_expr TEXT,
    UNIQUE (event_type, member, run)
);
CREATE INDEX waits_run ON waits (run);

CREATE TABLE day_counts (
    day TEXT NOT NULL, member TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (day, member)
) WITHOUT ROWID;

-- every event ever seen (dedupe by id); queued ones are taken in (at, arrival) order
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
    at_ts REAL NOT NULL, at TEXT NOT NULL, member TEXT, data TEXT NOT NULL, member_update TEXT,
    status TEXT NOT NULL
);
CREATE INDEX events_queued ON events (at_ts) WHERE status = 'queued';

CREATE TABLE schedules (
    seq INTEGER PRIMARY KEY, playbook TEXT NOT NULL, trigger TEXT NOT NULL, zone TEXT NOT NULL,
    next_ts REAL, next_due TEXT,
    UNIQUE (playbook, trigger, zone)
);

-- due_ts/due: when a queued or failed row is next due (deliver_at, then next_attempt)
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    due_ts REAL NOT NULL, due TEXT NOT NULL,
    playbook TEXT NOT NULL, run TEXT NOT NULL, flow TEXT NOT NULL, step TEXT NOT NULL,
    occurrence INTEGER NOT NULL, channel TEXT NOT NULL, adapter TEXT NOT NULL, member TEXT,
    recipient TEXT NOT NULL, text TEXT NOT NULL, format TEXT NOT NULL, variant TEXT,
    urgent INTEGER NOT NULL, queued_at TEXT NOT NULL, deliver_at TEXT NOT NULL, deferred TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt TEXT, last_error TEXT, sent_at TEXT,
    platform_id TEXT
);
CREATE INDEX outbox_due ON outbox (status, due_ts);

-- each send, in the order sent (a resent in-doubt row twice); the rest is its outbox row
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL, at_ts REAL NOT NULL, at TEXT NOT NULL,
    playbook TEXT NOT NULL, platform_id TEXT
);
CREATE INDEX deliveries_playbook ON deliveries (playbook);
CREATE INDEX deliveries_key ON deliveries (key);

CREATE TABLE queued_starts (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, playbook TEXT NOT NULL, flow TEXT NOT NULL,
    member TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX queued_starts_flow ON queued_starts (playbook, flow, member);
CREATE INDEX queued_starts_id ON queued_starts (id);

CREATE TABLE exposures (
    seq INTEGER PRIMARY KEY, playbook TEXT NOT NULL, goal TEXT NOT NULL, step TEXT NOT NULL,
    variant TEXT NOT NULL, member TEXT NOT NULL, at_ts REAL NOT NULL, at TEXT NOT NULL,
    converted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (playbook, goal, step, variant, member)
);
CREATE INDEX exposures_member ON exposures (playbook, member);

CREATE TABLE conversions (
    playbook TEXT NOT NULL, goal TEXT NOT NULL, step TEXT NOT NULL, variant TEXT NOT NULL,
    member TEXT NOT NULL, PRIMARY KEY (playbook, goal, step, variant, member)
) WITHOUT ROWID;

CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;

-- runner records and decision notes (note = 1, detail is then the whole note)
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, at_ts REAL, at TEXT, kind TEXT NOT NULL, note INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit (kind);

INSERT INTO meta (key, value) VALUES ('application', 'cmtyflow');
"""

# Deliveries are read in order and by playbook, and joined to the outbox through the
# outbox's own key index; never looked up by their key. An index on that key (32 random
# hex characters) put each new delivery on a leaf page of its own: about a page of
# write-ahead log per message sent, a third of the dispatcher's SQLite time.
_V2 = """
DROP INDEX deliveries_key;
"""

# Urgent messages (a crisis page) are claimed before any other due row, however many
# were queued before them (``rows.DUE_SEQS``): their own small range to read first, and
# ``urgent`` in the due index, so that the other ranges leave them out from the index
# alone.
_V3 = """
CREATE INDEX outbox_urgent ON outbox (due_ts) WHERE urgent = 1 AND status IN ('queued', 'failed');
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (status, due_ts, seq, urgent);
"""

# The messages whose call to the platform began (SPEC 5.2): after a crash only these
# are in doubt; a row claimed and never started goes back to the queue. The rows in
# flight when this step runs were claimed by a version that did not say: started.
_V4 = """
CREATE TABLE sending (key TEXT PRIMARY KEY) WITHOUT ROWID;
INSERT INTO sending (key) SELECT key FROM outbox WHERE status = 'inflight';
"""

# A firing over the audience is handled a chunk of members at a time, each chunk its
# own transaction; where it has got to is kept with its schedule's position.
_V5 = """
ALTER TABLE schedules ADD COLUMN firing_after INTEGER;
ALTER TABLE schedules ADD COLUMN firing_started TEXT;
ALTER TABLE schedules ADD COLUMN firing_last TEXT;
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5]
LATEST = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """The statements of ``script``, one by one: ``executescript`` would commit first,
    and a migration must stay inside its transaction."""
    out: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            lines = [line for line in pending.splitlines() if not line.strip().startswith("--")]
            text = "\n".join(lines).strip()
            if text != ";":
                out.append(text)
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete statement in migration: {pending.strip()[:60]}")
    return out


def _too_new(path: str, found: int) -> UserError:
    return UserError(
        f"{path}: the state database has schema version {found}, but this cmtyflow supports up to "
        f"version {LATEST}; upgrade cmtyflow (or point --state/CMTYFLOW_STATE at another file)"
    )


def _check_ours(db: sqlite3.Connection, path: str, version: int) -> None:
    app = db.execute("PRAGMA application_id").fetchone()[0]
    if app not in (0, APPLICATION_ID):
        raise UserError(f"{path}: an SQLite database of another application, not cmtyflow state")
    if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise UserError(f"{path}: an SQLite database with tables of its own, not cmtyflow state")


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring ``db`` (autocommit connection) to ``LATEST``; returns the version found."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > LATEST:
        raise _too_new(path, found)
    if found == LATEST:
        _check_ours(db, path, found)
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])  # another process may have migrated
        if found > LATEST:
            raise _too_new(path, found)
        _check_ours(db, path, found)
        for script in MIGRATIONS[found:]:
            for statement in statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {LATEST}")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
