"""A PostgreSQL server for the store tests: CMTYFLOW_TEST_POSTGRES (a URL) when set,
else a throwaway cluster made with the ``initdb``/``pg_ctl`` on PATH in a temporary
folder (trust auth, its unix socket in that folder, 127.0.0.1 on a free port),
stopped and removed at the end. initdb refuses root: as root the cluster belongs to
the ``postgres`` user and its commands run through ``runuser``.

CMTYFLOW_TEST_POSTGRES_REQUIRED=1 (CI) turns "no PostgreSQL here" from a skip into
an error, so the PostgreSQL tests cannot silently not run."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_URL = "CMTYFLOW_TEST_POSTGRES"
ENV_REQUIRED = "CMTYFLOW_TEST_POSTGRES_REQUIRED"


class Unavailable(Exception):
    """No PostgreSQL to test against (the reason says why)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    if owner is None:
        return argv
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", owner, "--", *argv]
    return ["su", owner, "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)]


class Cluster:
    """A throwaway cluster's URL and what a test may do to it."""

    def __init__(self, url: str, pg_ctl: str, data: Path, log: Path, settings: str, owner: str | None) -> None:
        self.url = url
        self._pg_ctl, self._data, self._log, self._settings, self._owner = pg_ctl, data, log, settings, owner

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server in ``mode`` (immediate: no shutdown checkpoint, every session
        cut, as a crash would) and start it again on the same port."""
        self._ctl("-m", mode, "-w", "stop")
        self._ctl("-l", str(self._log), "-w", "-t", "60", "-o", self._settings, "start")

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_owner([self._pg_ctl, "-D", str(self._data), *args], self._owner),
                       check=True, capture_output=True, text=True)


@contextmanager
def throwaway_cluster(max_connections: int = 50) -> Iterator[str]:
    with cluster(max_connections, durable=False) as made:
        yield made.url


@contextmanager
def cluster(max_connections: int = 50, *, durable: bool = True) -> Iterator[Cluster]:
    """``durable=False``: commits not flushed (fast; a crash may lose the last ones)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise Unavailable(f"no PostgreSQL to test against: set {ENV_URL} to a URL, or put initdb and pg_ctl on PATH")
    owner = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' user to own a test cluster") from None
        owner = "postgres"
    # As root, in /tmp: the postgres user must be able to reach the folder (TMPDIR may be root's own).
    folder = Path(tempfile.mkdtemp(prefix="cmtyflow-pg-", dir="/tmp" if owner is not None else None))
    data, log = folder / "data", folder / "server.log"
    if owner is not None:
        shutil.chown(folder, owner)
    port = _free_port()
    started = False
    try:
        subprocess.run(
            _as_owner([initdb, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", str(data)], owner),
            check=True, capture_output=True, text=True,
        )
        settings = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c max_connections={max_connections}"
        if not durable:
            settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", settings, "start"], owner),
            check=True, capture_output=True, text=True,
        )
        started = True
        yield Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", pg_ctl, data, log, settings, owner)
    except subprocess.CalledProcessError as exc:
        detail = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"the test PostgreSQL did not start: {exc.stderr or exc.stdout}\n{detail}") from None
    finally:
        if started:
            subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], owner),
                           capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A URL of a server the tests may create schemas in."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    with throwaway_cluster() as made:
        yield made


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``?schema=`` (or ``&schema=``) added."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"
