"""What only the PostgreSQL store promises (the shared contract is test_store_contract):
its schema and migrations (tracked, locked, refusals), how it is named and opened,
connection errors without passwords, durability, atomic writes, several connections
and SKIP LOCKED claims."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pg_server import with_schema
from store_records import at, event, message, run, timer

from cmtyflow.engine.model import Decision
from cmtyflow.errors import UserError
from cmtyflow.store.open import open_store, shown

psycopg = pytest.importorskip("psycopg")

from cmtyflow.store import pg_connect, pg_migrations  # noqa: E402
from cmtyflow.store.pg_connect import mask_url, split_schema  # noqa: E402
from cmtyflow.store.postgres import PostgresStore  # noqa: E402


@pytest.fixture
def opened(pg_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """``opened(url=None)`` opens a store (default: the test's own schema); all are
    closed at the end."""
    stores: list[PostgresStore] = []

    def _open(url: str | None = None, **kw: Any) -> PostgresStore:
        store = PostgresStore(url or pg_url, **kw)
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.close()


def schema_of(url: str) -> str:
    return split_schema(url)[1]


def query(postgres_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def tables(postgres_url: str, schema: str) -> set[str]:
    return {r[0] for r in query(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


# naming and opening -----------------------------------------------------------------------------


def test_urls_are_shown_without_passwords() -> None:
    assert mask_url("postgresql://u:s3cret@db:5432/x?sslmode=require") == "postgresql://u:***@db:5432/x?sslmode=require"
    assert mask_url("postgresql://u@db/x?password=s3cret&schema=a") == "postgresql://u@db/x?password=***&schema=a"
    assert mask_url("postgresql://db/x") == "postgresql://db/x"
    assert mask_url("host=db password='s3 cret' dbname=x") == "host=db password=*** dbname=x"
    assert shown("postgres://u:s3cret@db/x") == "postgres://u:***@db/x"  # for commands that print --state
    assert shown(".cmtyflow/state.db") == ".cmtyflow/state.db"
    # A generated password written raw: '/', '#', '?' or '@' in it put part of it where
    # a URL's host goes, and it was printed whole (or its end, in libpq's own error).
    for raw in ("Pa/ss9word", "Pa#ss9word", "Pa?ss9word", "Pa@ss9word"):
        assert mask_url(f"postgresql://cm:{raw}@127.0.0.1:5432/community") == "postgresql://cm:***@127.0.0.1:5432/community"


def test_a_password_written_raw_with_url_characters_is_refused_before_libpq_reads_it() -> None:
    """libpq split such a password at its '/' or '@' and printed part of it back as a
    host or port it could not use."""
    for raw in ("Pa/ss9word", "Pa#ss9word", "Pa?ss9word", "Pa@ss9word"):
        with pytest.raises(UserError, match=r"cm:\*\*\*@db/x: the password holds '/', '\?', '#' or '@' as it is") as caught:
            split_schema(f"postgresql://cm:{raw}@db/x")
        assert "ss9word" not in str(caught.value)
    assert split_schema("postgresql://cm:Pa%40ss@db/x")[0] == "postgresql://cm:Pa%40ss@db/x"
    assert split_schema("postgresql://db:5432/x?application_name=a@b")[0] == "postgresql://db:5432/x?application_name=a@b"


def test_the_schema_comes_from_the_argument_the_url_or_its_options() -> None:
    assert split_schema("postgresql://db/x") == ("postgresql://db/x", "cmtyflow")
    assert split_schema("postgresql://db/x?schema=team_a&sslmode=require") == ("postgresql://db/x?sslmode=require", "team_a")
    assert split_schema("postgresql://db/x?options=-csearch_path%3Dteam_b")[1] == "team_b"
    assert split_schema("postgresql://db/x?options=-c%20search_path%3Dteam_c,public")[1] == "team_c"
    assert split_schema("postgresql://db/x?schema=a", "b")[1] == "b"
    options = "postgresql://db/x?options=-c%20statement_timeout%3D5000&schema=s"  # spaces stay %20 for libpq
    assert split_schema(options) == ("postgresql://db/x?options=-c%20statement_timeout%3D5000", "s")
    assert split_schema("postgresql://db/x?options=-c%20a%3Db")[0] == "postgresql://db/x?options=-c%20a%3Db"
    with pytest.raises(UserError, match="schema 'a;drop' is not a plain name"):
        split_schema("postgresql://u:pw@db/x?schema=a;drop")
    # A URL with no host (libpq's own form for a socket) keeps its '//' (it became 'postgresql:/x?...').
    socket_url = "postgresql:///x?host=/run/pg&user=cf&schema=s3"
    assert split_schema(socket_url) == ("postgresql:///x?host=%2Frun%2Fpg&user=cf", "s3")
    assert mask_url("postgresql:///x?host=/run/pg&password=s3cret") == "postgresql:///x?host=/run/pg&password=***"


def test_a_url_python_cannot_split_is_a_user_error_without_the_password() -> None:
    """A broken [IPv6] host crashed with the password in the crash log's command line."""
    with pytest.raises(UserError, match="not a valid PostgreSQL URL: Invalid IPv6 URL") as info:
        split_schema("postgresql://cf:s3cret-pw@[::1:5432/db")
    assert "s3cret-pw" not in str(info.value)
    assert mask_url("postgresql://cf:s3cret-pw@[::1:5432/db?password=again") == "postgresql://cf:***@[::1:5432/db?password=***"


def test_several_hosts_pass_and_connection_strings_and_upper_case_passwords_are_masked() -> None:
    """A URL naming two hosts (libpq and psql take it) was refused ("Port could not be
    cast to integer"); a libpq key=value string was taken for an SQLite file of that
    name, made in the current folder and printed with its password; PASSWORD= in a
    query was printed as written."""
    from cmtyflow.store.open import state_location

    two = "postgresql://cm:pw@127.0.0.1:54330,127.0.0.1:54329/community?schema=s"
    assert split_schema(two) == ("postgresql://cm:pw@127.0.0.1:54330,127.0.0.1:54329/community", "s")
    with pytest.raises(UserError, match="is a libpq connection string; give PostgreSQL as a URL") as caught:
        state_location("host=127.0.0.1 port=54329 user=cm password=hunter2 dbname=community", {})
    assert "hunter2" not in str(caught.value) and "password=***" in str(caught.value)
    assert state_location("data/state=2026.db", {}) == "data/state=2026.db"  # a file name with '=' stays one
    assert mask_url("postgresql://u@db/x?passfile=/x&PASSWORD=hunter2") == "postgresql://u@db/x?passfile=/x&PASSWORD=***"
    assert mask_url("host=db PASSWORD=hunter2") == "host=db PASSWORD=***"


def test_open_creates_the_schema_and_reopen_is_idempotent(opened: Callable[..., PostgresStore], pg_url: str,
                                                          postgres_url: str) -> None:
    schema = schema_of(pg_url)
    store = opened()
    store.put_members([{"id": "m1"}])
    store.close()
    found = tables(postgres_url, schema)
    assert {"migrations", "meta", "members", "runs", "timers", "events", "outbox", "deliveries", "audit"} <= found
    again = opened()
    assert again.member_count() == 1
    assert tables(postgres_url, schema) == found
    versions = query(postgres_url, f"SELECT version FROM {schema}.migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, pg_migrations.LATEST + 1)]
    assert query(postgres_url, f"SELECT value FROM {schema}.meta WHERE key = 'application'") == [("cmtyflow",)]


def test_schemas_keep_stores_apart(opened: Callable[..., PostgresStore], postgres_url: str, pg_url: str) -> None:
    other = with_schema(postgres_url, schema_of(pg_url) + "_b")
    try:
        opened().put_members([{"id": "a"}])
        assert opened(other).member_count() == 0
        assert opened(postgres_url, schema=schema_of(pg_url)).member_count() == 1  # the argument names it too
    finally:
        query(postgres_url, f"DROP SCHEMA IF EXISTS {schema_of(other)} CASCADE")


def test_indexes_for_the_due_queries(opened: Callable[..., PostgresStore], pg_url: str, postgres_url: str) -> None:
    opened()
    found = {r[0]: r[1] for r in query(postgres_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
                                       (schema_of(pg_url),))}
    assert "(due_ts, id)" in found["timers_due"]
    assert "(status, due_ts)" in found["outbox_status"]
    assert "(due_ts, seq) WHERE" in found["outbox_due"]
    assert "(at_ts, seq) WHERE" in found["events_pending"]


def test_a_newer_schema_is_refused(opened: Callable[..., PostgresStore], pg_url: str, postgres_url: str) -> None:
    opened().close()
    schema = schema_of(pg_url)
    query(postgres_url, f"INSERT INTO {schema}.migrations (version) VALUES (%s)", (pg_migrations.LATEST + 3,))
    with pytest.raises(UserError) as info:
        PostgresStore(pg_url)
    text = str(info.value)
    assert f"schema version {pg_migrations.LATEST + 3}" in text or f"has version {pg_migrations.LATEST + 3}" in text
    assert f"supports up to version {pg_migrations.LATEST}" in text
    assert schema in text


def test_another_applications_schema_is_refused(pg_url: str, postgres_url: str) -> None:
    schema = schema_of(pg_url)
    query(postgres_url, f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.invoices (id integer)")
    with pytest.raises(UserError, match=f"schema '{schema}' holds tables of its own, not cmtyflow state"):
        PostgresStore(pg_url)
    assert tables(postgres_url, schema) == {"invoices"}


def test_a_new_migration_upgrades_and_a_failing_one_changes_nothing(
    opened: Callable[..., PostgresStore], pg_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = schema_of(pg_url)
    opened().put_members([{"id": "m1"}])
    broken = "CREATE TABLE extra (x integer);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", [*pg_migrations.MIGRATIONS, broken])
    monkeypatch.setattr(pg_migrations, "LATEST", len(pg_migrations.MIGRATIONS))
    with pytest.raises(UserError, match="no_such_table"):
        PostgresStore(pg_url)
    assert "extra" not in tables(postgres_url, schema)
    assert query(postgres_url, f"SELECT max(version) FROM {schema}.migrations") == [(pg_migrations.LATEST - 1,)]
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", [*pg_migrations.MIGRATIONS[:-1], "CREATE TABLE extra (x integer);"])
    upgraded = opened()
    assert "extra" in tables(postgres_url, schema)
    assert query(postgres_url, f"SELECT max(version) FROM {schema}.migrations") == [(pg_migrations.LATEST,)]
    assert upgraded.get_member("m1") == {"id": "m1"}


def test_processes_starting_at_once_migrate_once(pg_url: str, postgres_url: str) -> None:
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresStore(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for store in opened:
        store.close()
    assert errors == [] and len(opened) == 6
    assert query(postgres_url, f"SELECT count(*) FROM {schema_of(pg_url)}.migrations") == [(pg_migrations.LATEST,)]


def test_open_store_opens_postgresql_urls(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        assert isinstance(store, PostgresStore)
    finally:
        store.close()


def test_a_read_only_open_refuses_a_schema_without_a_state(pg_url: str) -> None:
    """status or report with a mistyped ?schema= created an empty state there and
    reported it healthy."""
    with pytest.raises(UserError, match=r"no state in schema 'test_\w+' at .* yet"):
        open_store(pg_url, must_exist=True)
    store = open_store(pg_url)  # a runner makes it
    store.close()
    open_store(pg_url, must_exist=True).close()


def test_without_psycopg_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_connect, "psycopg", None)
    with pytest.raises(UserError, match=r"pip install 'cmtyflow\[postgres\]'") as info:
        open_store("postgresql://u:s3cret@db/x")
    assert "s3cret" not in str(info.value)


# connection errors ----------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_is_down_is_a_user_error_without_the_password() -> None:
    url = f"postgresql://cf:s3cret-pw@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(UserError) as info:
        PostgresStore(url)
    text = str(info.value)
    assert text.startswith(f"postgresql://cf:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/db: cannot connect to PostgreSQL:")
    assert "s3cret-pw" not in text


def test_a_bad_url_is_a_user_error_without_the_password() -> None:
    with pytest.raises(UserError, match="not a valid PostgreSQL URL") as info:
        PostgresStore("postgresql://cf:s3cret-pw@127.0.0.1/db?nonsense_option=1")
    assert "s3cret-pw" not in str(info.value)


def test_an_unknown_user_is_a_user_error_without_the_password(postgres_url: str) -> None:
    parts = postgres_url.split("://", 1)[1].split("@", 1)[-1]
    url = f"postgresql://no_such_role:s3cret-pw@{parts}"
    with pytest.raises(UserError, match="cannot connect to PostgreSQL") as info:
        PostgresStore(url)
    assert "s3cret-pw" not in str(info.value) and "no_such_role" in str(info.value)


def test_repr_and_errors_hide_the_password(pg_url: str) -> None:
    # The test server trusts every local login: a password in the URL is taken and ignored.
    url = pg_url.replace("://postgres@", "://postgres:pw-12345@", 1) if "://postgres@" in pg_url else pg_url
    store = PostgresStore(url)
    try:
        assert "pw-12345" not in repr(store) and "pw-12345" not in store.url
        assert repr(store).startswith("PostgresStore('postgresql://")
    finally:
        store.close()


# atomicity -----------------------------------------------------------------------------------------


def test_a_failed_statement_rolls_back_the_write(opened: Callable[..., PostgresStore]) -> None:
    store = opened()
    store.apply(Decision(messages=[message("k1", at(1))]))
    store.claim_due_messages(at(1))
    with pytest.raises(KeyError, match="no outbox row with key nope"):
        store.finish_messages([("k1", "sent", {"sent_at": at(1)}), ("nope", "sent", {"sent_at": at(1)})])
    assert store.outbox_counts()["inflight"] == 1 and list(store.deliveries()) == []
    store.finish_messages([("k1", "sent", {"sent_at": at(2)})])
    assert [d["at"] for d in store.deliveries()] == [at(2)]


def test_a_daily_firing_is_one_apply(opened: Callable[..., PostgresStore]) -> None:
    store = opened()
    n = 3000
    runs = {f"r{i:05d}": run(f"r{i:05d}", member=f"m{i:05d}") for i in range(n)}
    store.apply(Decision(
        runs=runs, messages=[message(f"k{i:05d}", at(1), member=f"m{i:05d}") for i in range(n)],
        timers=[timer(f"t{i:05d}", f"r{i:05d}", at(60 + i % 7)) for i in range(n)],
        day_counts={(f"m{i:05d}", "2026-12-01"): 1 for i in range(n)}, counters={"runs_started": n},
    ))
    assert sum(1 for _ in store.runs()) == n
    assert store.outbox_counts()["queued"] == n
    claimed = store.claim_due_messages(at(1), limit=n)
    assert [r.message.key for r in claimed] == [f"k{i:05d}" for i in range(n)]
    assert [t.id for t in store.due_timers(at(60), limit=5)] == ["t00000", "t00007", "t00014", "t00021", "t00028"]
    assert store.day_count("m02999", "2026-12-01") == 1



def test_decisions_applied_in_one_batch_transaction_each_write_their_own_rows(opened: Callable[..., PostgresStore]) -> None:
    # A worker applies a batch of inputs in one transaction (counters at its end). Each
    # decision here is large enough to go by COPY through the same staging tables: the
    # second must not write the first one's staged rows again (here: upsert the same runs
    # twice in one statement, which PostgreSQL refuses).
    store = opened()
    n = 70
    with store.conn.transaction(), store.counters_at_end():
        store.apply(Decision(runs={f"r{i}": run(f"r{i}", member=f"m{i}") for i in range(n)}, counters={"runs_started": n}))
        store.apply(Decision(runs={f"r{i}": run(f"r{i}", member=f"m{i}", status="done") for i in range(n)}, counters={"runs_done": n}))
    assert [r.status for r in store.runs(status=None)] == ["done"] * n
    assert (store.counters()["runs_started"], store.counters()["runs_done"]) == (n, n)
    # A batch that fails leaves nothing of any of its decisions (no savepoint per decision).
    with pytest.raises(KeyError), store.conn.transaction(), store.counters_at_end():
        store.apply(Decision(runs={"late": run("late", member="m1")}, counters={"runs_started": 1}))
        raise KeyError("a later input failed")
    assert store.get_run("late") is None and store.counters()["runs_started"] == n
    store.apply(Decision(runs={f"x{i}": run(f"x{i}", member=f"m{i}") for i in range(n)}))  # its stage again, anew
    assert sum(1 for _ in store.runs(status=None)) == 2 * n



def test_a_staging_table_made_in_a_batch_that_rolls_back_is_made_again(opened: Callable[..., PostgresStore]) -> None:
    # The first COPY of this connection happens inside a worker's batch, which then
    # fails: the temporary staging table goes with the batch's transaction, and the
    # next large write must not take it for still there.
    store = opened()
    n = 70
    with pytest.raises(KeyError), store.conn.transaction(), store.counters_at_end():
        store.apply(Decision(runs={f"r{i}": run(f"r{i}", member=f"m{i}") for i in range(n)}))
        raise KeyError("a later input failed")
    store.apply(Decision(runs={f"r{i}": run(f"r{i}", member=f"m{i}") for i in range(n)}))
    assert sum(1 for _ in store.runs()) == n


# several connections ---------------------------------------------------------------------------------


def test_a_second_process_adds_events_the_first_sees(opened: Callable[..., PostgresStore]) -> None:
    runner = opened()
    runner.put_members([{"id": "m1"}])
    assert runner.next_event_at() is None
    emit = opened()
    assert emit.add_events([event("e1", at(2)), event("e2", at(1))]) == (2, 0)
    assert emit.add_event(event("e1", at(2))) is False
    emit.close()
    assert runner.next_event_at() == at(1)
    assert [e.id for e in runner.pending_events(at(9))] == ["e2", "e1"]


def test_claims_never_hand_out_a_row_twice(opened: Callable[..., PostgresStore]) -> None:
    # Several claimers, as several runners will be: without the one-runner lock.
    first = opened(exclusive=False)
    first.apply(Decision(messages=[message(f"k{i:04d}", at(i % 50)) for i in range(1200)]))
    stores = [first, opened(exclusive=False), opened(exclusive=False)]
    claimed: list[list[str]] = [[] for _ in stores]

    def claim(store: PostgresStore, into: list[str]) -> None:
        while True:
            found = store.claim_due_messages(at(60), limit=25)
            if not found:
                return
            into.extend(r.message.key for r in found)

    threads = [threading.Thread(target=claim, args=(s, out)) for s, out in zip(stores, claimed, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    together = [k for keys in claimed for k in keys]
    assert len(together) == len(set(together)) == 1200
    assert first.outbox_counts()["inflight"] == 1200


def test_rows_another_transaction_holds_are_skipped_not_waited_for(opened: Callable[..., PostgresStore]) -> None:
    store = opened()
    store.apply(Decision(messages=[message(k, at(1)) for k in ("a", "b", "c")],
                         timers=[timer("t1", "r1", at(1)), timer("t2", "r2", at(2))]))
    other = opened()
    with other.conn.transaction():  # another process in the middle of claiming `a` and consuming `t1`
        other.conn.execute("SELECT 1 FROM outbox WHERE key = 'a' FOR UPDATE")
        other.conn.execute("DELETE FROM timers WHERE id = 't1'")
        assert [t.id for t in store.due_timers(at(9))] == ["t2"]
        assert [r.message.key for r in store.claim_due_messages(at(9))] == ["b", "c"]
    assert [r.message.key for r in store.claim_due_messages(at(9))] == ["a"]
    assert [t.id for t in store.due_timers(at(9))] == ["t2"]


def test_values_round_trip_exactly(opened: Callable[..., PostgresStore]) -> None:
    from test_sqlite_store import EXACT_VALUES, same

    store = opened()
    record = {"id": "m1", "values": EXACT_VALUES, "nan": float("nan")}
    store.put_members([record])
    got = store.get_member("m1")
    assert got is not None and same(got["values"], EXACT_VALUES) and got["nan"] != got["nan"]
    state = {"last": date(2026, 12, 1), "deep": {"x": [{"y": at(2)}]}, "z": 1, "a": 2}  # key order kept
    store.apply(Decision(states={("pb", None): state}))
    assert same(store.get_state("pb", None), state)


def test_ids_sort_bytewise_whatever_the_locale(opened: Callable[..., PostgresStore]) -> None:
    store = opened()
    ids = ["t-b", "T_a", "t_a", "tA", "t.a", "t a"]
    store.apply(Decision(timers=[timer(i, "r", at(1)) for i in ids]))
    assert [t.id for t in store.due_timers(at(1))] == sorted(ids)
    store.apply(Decision(messages=[message(k, at(1)) for k in ("ab", "aB", "a-b", "a\u00e9", "b")]))
    assert sorted(r.message.key for r in store.find_messages("a")) == sorted(["ab", "aB", "a-b", "a\u00e9"])
    assert [r.message.key for r in store.find_messages("a\u00e9")] == ["a\u00e9"]


def test_paths_are_not_urls(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "postgresql.db"))
    try:
        assert not isinstance(store, PostgresStore)
    finally:
        store.close()


def test_one_runner_per_store_until_several_are_supported(opened: Callable[..., PostgresStore], postgres_url: str,
                                                         pg_url: str) -> None:
    runner, second, emit = opened(), opened(), opened()
    assert runner.mark_in_doubt() == [] and runner.mark_in_doubt() == []  # a runner's start-up, twice
    runner.apply(Decision(messages=[message("k1", at(1))]))
    for runner_write in (
        second.mark_in_doubt, lambda: second.apply(Decision()), lambda: second.set_schedules([]),
        lambda: second.claim_due_messages(at(9)), lambda: second.finish_messages([("k1", "sent", {})]),
    ):
        with pytest.raises(UserError, match=r"another runner, or workers, are using .*; stop them first"):
            runner_write()
    assert emit.add_event(event("e1", at(1))) and emit.requeue(["k1"], at(2)) == 0  # other commands go on
    assert [r.message.key for r in second.outbox()] == ["k1"]  # and so do reads
    other_schema = opened(with_schema(postgres_url, schema_of(pg_url) + "_r"))
    try:
        assert other_schema.mark_in_doubt() == []  # another schema, another store
    finally:
        other_schema.close()
        query(postgres_url, f"DROP SCHEMA IF EXISTS {schema_of(pg_url)}_r CASCADE")
    runner.close()  # the runner stopped (or died): the lock goes with its session, once the server ended it
    for _ in range(100):
        try:
            assert second.mark_in_doubt() == []
            break
        except UserError:
            time.sleep(0.05)
    else:
        pytest.fail("the runner lock outlived its session")
    assert [r.message.key for r in second.claim_due_messages(at(9))] == ["k1"]


def test_libpq_options_in_the_url_reach_the_server(opened: Callable[..., PostgresStore], pg_url: str) -> None:
    store = opened(pg_url + "&options=-c%20statement_timeout%3D5000&application_name=cf%20test")
    assert store.conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
    assert store.conn.execute("SHOW application_name").fetchone()[0] == "cf test"
    assert store.conn.execute("SHOW search_path").fetchone()[0] == store.schema


def test_a_run_refused_by_another_runner_leaves_no_session_open(opened: Callable[..., PostgresStore], pg_url: str,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The runner's channels were opened before the store refused it: aiohttp then
    reported an unclosed client session after the error."""
    import logging

    from cmtyflow.cli import main

    holder = opened()
    holder.mark_in_doubt()  # holds the runner lock
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "cmtyflow: 1\nname: pb\ntimezone: UTC\nchannels: {hook: {adapter: webhook, url: 'http://127.0.0.1:9/x'}}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\nflows:\n  f: [{send: {channel: hook, text: hi}}]\n",
        encoding="utf-8",
    )
    import gc
    import warnings

    with caplog.at_level(logging.ERROR, logger="asyncio"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["run", str(playbook), "--once", "--state", pg_url]) == 1
        gc.collect()  # an unclosed session says so when it is collected
    assert "another runner, or workers, are using" in capsys.readouterr().err
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    assert not [w for w in seen if "Unclosed" in str(w.message)]
