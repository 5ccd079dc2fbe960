"""Opening the PostgreSQL store's connection (``postgres``): the URL, its schema,
and errors a user can act on.

Rules:
- The schema: ``schema=`` argument, else the URL's ``?schema=`` (taken out before
  libpq sees the URL), else the first entry of a ``search_path`` in the URL's
  ``options``, else ``cmtyflow``; a plain identifier.
- A bad URL, a server that is down, a refused login, a missing privilege: a
  ``UserError`` naming the URL with its password as ``***``; the password is never in
  a message, even where the server's text would quote it.
- The connection is in autocommit mode, its search_path the schema, its TimeZone
  UTC; the schema is migrated before the store uses it (``pg_migrations``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import UserError
from .pg_migrations import migrate

try:
    import psycopg
except ImportError:  # the `postgres` extra is not installed
    psycopg = None  # type: ignore[assignment]

DEFAULT_SCHEMA = "cmtyflow"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")


_RAW_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s]*:)(\S*)@")


class ConnectFailed(UserError):
    """The server could not be reached (down, restarting, refusing): a worker's job that
    meets it is retried, as one cut off from the database is."""


def _raw_password(url: str) -> str | None:
    """What stands between the user's ':' and the last '@' of ``url``, when that is a
    password (not a host's port followed by a path or query holding an '@')."""
    found = _RAW_PASSWORD.match(url)
    if found is None or re.match(r"\d*(?:[/?#]|$)", found.group(2)):
        return None
    return found.group(2)


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ***."""
    if "://" not in url:  # a "key=value ..." connection string
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url, flags=re.IGNORECASE)
    # A password written raw with '/', '?', '#' or '@' in it (a generated one) is not
    # where a URL's parts say: everything from the user's ':' to the last '@' goes.
    if _raw_password(url) is not None:
        url = _RAW_PASSWORD.sub(r"\1***@", url)
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL Python can split (a broken [IPv6] host): by pattern
        url = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)
        return re.sub(r"((?:^|[?&])password=)[^&#\s]*", r"\1***", url, flags=re.IGNORECASE)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*/:", quote_via=quote)
    return _unsplit(parts.scheme, netloc, parts.path, query, parts.fragment)


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str) -> str:
    """``urlunsplit``, keeping the ``//`` of a URL with no host (``postgresql:///db?host=
    /socket``, which libpq reads as psql does), where ``urlunsplit`` drops it."""
    if netloc:
        return urlunsplit((scheme, netloc, path, query, fragment))
    return f"{scheme}://{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


def _password(url: str) -> str | None:
    if "://" not in url:
        found = re.search(r"password\s*=\s*(\S+)", url)
        return found.group(1).strip("'") if found else None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "password":
            return v
    return parts.password


def split_schema(url: str, schema: str | None = None) -> tuple[str, str]:
    """(the URL libpq is given, without ``schema=``; the schema to use)."""
    chosen = schema
    if "://" in url:
        raw_password = _raw_password(url)
        if raw_password is not None and re.search(r"[/?#@]", raw_password):
            # libpq would read part of it as the host or the port, and print it back.
            raise UserError(
                f"{mask_url(url)}: the password holds '/', '?', '#' or '@' as it is; write them percent-encoded "
                "(%2F, %3F, %23, %40), or give the password in PGPASSWORD or ~/.pgpass"
            )
        try:
            parts = urlsplit(url)
            if "," not in parts.netloc:  # several hosts (h1:5432,h2:5433): libpq reads them
                parts.port  # noqa: B018 - read for its check: a port that is not a number
        except ValueError as exc:
            raise UserError(f"{mask_url(url)}: not a valid PostgreSQL URL: {exc}") from None
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k != "schema"]
        for k, v in pairs:
            if k == "schema" and chosen is None:
                chosen = v
            if k == "options" and chosen is None:
                found = _SEARCH_PATH.search(v)
                if found:
                    chosen = found.group(1).strip('"')
        if len(kept) < len(pairs):  # rebuilt only then; %20 for spaces (libpq reads no '+' as space)
            url = _unsplit(parts.scheme, parts.netloc, parts.path, urlencode(kept, quote_via=quote), parts.fragment)
    chosen = chosen or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(chosen):
        raise UserError(
            f"{mask_url(url)}: schema '{chosen}' is not a plain name (letters, digits, _; at most 63)"
        )
    return url, chosen


def _reason(exc: BaseException, secret: str | None) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip()) or type(exc).__name__
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def connect(url: str, schema: str, shown: str, *, must_exist: bool = False) -> Any:
    """A connection on ``schema``, migrated to this version; with ``must_exist`` (the
    commands that only read) a schema without a state is refused, not created."""
    if psycopg is None:
        raise UserError(
            f"{shown}: PostgreSQL state needs psycopg; install cmtyflow with the postgres extra: "
            "pip install 'cmtyflow[postgres]'"
        )
    secret = _password(url)
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        extra: dict[str, Any] = {k: v for k, v in (("connect_timeout", "10"), ("application_name", "cmtyflow")) if k not in given}
        conn = psycopg.connect(url, autocommit=True, **extra)
    except psycopg.ProgrammingError as exc:
        raise UserError(f"{shown}: not a valid PostgreSQL URL: {_reason(exc, secret)}") from None
    except psycopg.Error as exc:
        raise ConnectFailed(f"{shown}: cannot connect to PostgreSQL: {_reason(exc, secret)}") from None
    try:
        conn.execute(
            psycopg.sql.SQL(
                "SET search_path TO {}; SET TimeZone TO 'UTC'; SET client_min_messages TO warning; "
                # A runner's host that dies without closing its connection: the server ends the
                # session (and frees the runner lock) after about a minute, not hours.
                "SET tcp_keepalives_idle TO 30; SET tcp_keepalives_interval TO 10; SET tcp_keepalives_count TO 3"
            ).format(psycopg.sql.Identifier(schema))
        )
        if must_exist and conn.execute("SELECT to_regclass(%s) IS NULL", (f'"{schema}".meta',)).fetchone() == (True,):
            raise UserError(
                f"no state in schema '{schema}' at {shown} yet: import members or start `cmtyflow run` first "
                "(or check the URL's database and ?schema=)"
            )
        migrate(conn, schema, shown)
    except psycopg.Error as exc:
        conn.close()
        raise UserError(f"{shown}: cannot open the state schema '{schema}': {_reason(exc, secret)}") from None
    except BaseException:
        conn.close()
        raise
    return conn
