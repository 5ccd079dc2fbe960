"""Where the state lives and how it is opened (SPEC 5.1): ``--state``, else
``CMTYFLOW_STATE``, else ``.cmtyflow/state.db``; a path is an SQLite file, a
``postgresql://`` URL a PostgreSQL database (``?schema=`` picks the schema, default
``cmtyflow``)."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Store
from .sqlite import SqliteStore

DEFAULT_STATE = ".cmtyflow/state.db"
ENV_VAR = "CMTYFLOW_STATE"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def state_location(option: str | None, environ: Mapping[str, str]) -> str:
    if option:
        return option
    return environ.get(ENV_VAR) or DEFAULT_STATE


def is_postgres(location: str) -> bool:
    return location.lower().startswith(POSTGRES_SCHEMES)


def shown(location: str) -> str:
    """``location`` as it may be printed: a URL's password as ***."""
    if is_postgres(location):
        from .pg_connect import mask_url

        return mask_url(location)
    return location


def open_store(location: str, *, must_exist: bool = False) -> Store:
    """The store at ``location``; with ``must_exist``, a PostgreSQL schema holding no
    state is refused instead of created (the caller checks a file's existence)."""
    if is_postgres(location):
        # Imported here: psycopg is the optional `postgres` extra.
        from .postgres import PostgresStore

        return PostgresStore(location, must_exist=must_exist)
    return SqliteStore(location)
