"""Where the state lives and how it is opened (SPEC 5.1): ``--state``, else
``CMTYFLOW_STATE``, else ``.cmtyflow/state.db``; a path is an SQLite file, a
``postgresql://`` URL a PostgreSQL database."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserError
from .sqlite import SqliteStore

DEFAULT_STATE = ".cmtyflow/state.db"
ENV_VAR = "CMTYFLOW_STATE"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def state_location(option: str | None, environ: Mapping[str, str]) -> str:
    if option:
        return option
    return environ.get(ENV_VAR) or DEFAULT_STATE


def open_store(location: str) -> SqliteStore:
    if location.lower().startswith(POSTGRES_SCHEMES):
        raise UserError(
            "PostgreSQL state is not available in this build; use an SQLite file "
            f"(--state PATH, default {DEFAULT_STATE})"
        )
    return SqliteStore(location)
