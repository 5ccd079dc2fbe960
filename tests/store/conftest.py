"""PostgreSQL for the store tests: one server per session (``pg_server``), a fresh
schema per test. Without a server the PostgreSQL tests are skipped, with the reason;
with CMTYFLOW_TEST_POSTGRES_REQUIRED=1 (CI) they fail instead."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pg_server
import pytest
from pg_server import with_schema


def _unavailable(reason: str) -> None:
    if os.environ.get(pg_server.ENV_REQUIRED) == "1":
        pytest.fail(f"{reason} ({pg_server.ENV_REQUIRED}=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The server's URL (no schema)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    try:
        with pg_server.postgres_server() as url:
            yield url
    except pg_server.Unavailable as exc:
        _unavailable(str(exc))


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A URL of a schema of its own (dropped at the end)."""
    import psycopg
    from psycopg import sql

    schema = f"test_{uuid.uuid4().hex[:16]}"
    yield with_schema(postgres_url, schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
