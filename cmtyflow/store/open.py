"""Where the state lives and how it is opened (SPEC 5.1): ``--state``, else
``CMTYFLOW_STATE``, else ``.cmtyflow/state.db``; a path is an SQLite file, a
``postgresql://`` URL a PostgreSQL database (``?schema=`` picks the schema, default
``cmtyflow``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import UserError
from .base import Store
from .sqlite import SqliteStore

DEFAULT_STATE = ".cmtyflow/state.db"
ENV_VAR = "CMTYFLOW_STATE"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def state_location(option: str | None, environ: Mapping[str, str]) -> str:
    """The state's location: ``option``, else ``CMTYFLOW_STATE``, else the default. A URL
    of any other kind than ``postgresql://`` is refused: it was taken for a relative
    file path (``sqlite:///x.db`` made a folder ``sqlite:``, an empty state, and said
    nothing), and its password was printed."""
    location = option or environ.get(ENV_VAR) or DEFAULT_STATE
    if _URL.match(location) and not is_postgres(location):
        from .pg_connect import mask_url

        scheme = location.split("://", 1)[0]
        hint = (
            "write postgresql://... (the driver is chosen by cmtyflow)" if scheme.lower().startswith("postgres")
            else "give an SQLite file as a path, e.g. .cmtyflow/state.db" if scheme.lower().startswith("sqlite")
            else "give an SQLite file as a path, or a postgresql:// URL"
        )
        raise UserError(f"the state {mask_url(location)} is a {scheme}:// URL, which cmtyflow does not open: {hint}")
    if _CONNINFO.search(location) and not _URL.match(location):
        # "host=... dbname=... password=..." was taken for an SQLite file of that name:
        # made in the current folder, and printed with its password.
        from .pg_connect import mask_url

        raise UserError(
            f"the state '{mask_url(location)}' is a libpq connection string; give PostgreSQL as a URL, "
            "postgresql://USER@HOST:PORT/DBNAME (the password in PGPASSWORD or ~/.pgpass, or percent-encoded in the URL)"
        )
    return location


# libpq's "key=value" form (host=, dbname=, user=, password=, port=, ...).
_CONNINFO = re.compile(r"(?:^|\s)(?:host|hostaddr|dbname|user|password|port|sslmode|service)\s*=", re.IGNORECASE)


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
