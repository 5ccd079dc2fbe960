"""The intake's server: ``cmtyflow run --listen HOST:PORT`` serving the application that
``intake.make_app`` builds.

Rules:
- At most ``max_connections`` connections are open at once (and at most a quarter of
  the process's file descriptors): one more is answered 503 and closed before a byte
  of it is read. Each held a descriptor, and with none left asyncio logged every
  failed accept.
- aiohttp's reports of requests it could not parse reach the intake's report reduced
  to the kind of error: the bytes they quote may hold a token.
- On stop (``runner.cleanup()``), the requests in flight get ``shutdown_timeout``
  seconds; 0 means at once.
- ``--listen`` takes ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or a bare ``PORT``; the
  host defaults to 127.0.0.1, never to every interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import resource
from collections.abc import Callable

from aiohttp import web

from ..errors import UserError
from .intake import _CONFIG, _REPORT, DEFAULT_HOST, Report


class _ParserReports(logging.Handler):
    """aiohttp's ``aiohttp.server`` records (a request it could not parse, a connection
    that broke) as the intake's reports: the kind of error, never its text, which
    quotes the request's bytes (a token in a header)."""

    def __init__(self, report: Report) -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.report("intake_bad_request", error=type(exc).__name__ if exc is not None else "unreadable request")


_BUSY = json.dumps({"error": "the intake has as many connections open as it takes; retry in a moment"}).encode()
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


class _Gate:
    """The connections open at once, at most ``most``: one more is answered 503 and closed
    before a byte of it is read."""

    def __init__(self, server: Callable[[], asyncio.Protocol], most: int, report: Report) -> None:
        self.server = server
        self.most = most
        self.report = report
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        return _Door(self)


class _Door(asyncio.Protocol):
    """One connection: aiohttp's own protocol behind it, or none when it is refused. (A
    connection is counted when it is made, and no longer once it is lost: asyncio calls
    the two in pairs.)"""

    def __init__(self, gate: _Gate) -> None:
        self.gate = gate
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self.gate
        if gate.open >= gate.most:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_BUSY_ANSWER)
            transport.close()
            gate.report("intake_busy", connections=gate.open)
            return
        gate.open += 1
        self.inner = gate.server()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.gate.open -= 1
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class _Site(web.BaseSite):
    """aiohttp's TCPSite with a ``_Gate`` before it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, most: int, report: Report) -> None:
        super().__init__(runner)
        self._host, self._port, self._most, self._report = host, port, most, report

    @property
    def name(self) -> str:
        return f"http://{_join(self._host, self._port)}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        gate = _Gate(server, self._most, self._report)
        self._server = await asyncio.get_running_loop().create_server(gate, self._host, self._port)


def _connections_allowed(most: int) -> int:
    """``most``, or a quarter of the file descriptors the process may open when that is
    fewer: the runner needs the rest (the state, the channels' connections), and asyncio
    takes up to 100 waiting connections at once before the refused ones are closed."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return most if soft == resource.RLIM_INFINITY else max(1, min(most, soft // 4))


async def serve(app: web.Application, host: str, port: int, *, shutdown_timeout: float = 10.0) -> web.AppRunner:
    """Start ``app`` on host:port; the caller calls ``runner.cleanup()`` when done, which
    gives the requests in flight ``shutdown_timeout`` seconds (aiohttp's default is 60)."""
    server_log = logging.getLogger("aiohttp.server")
    handler = _ParserReports(app[_REPORT])
    server_log.addHandler(handler)
    propagate, server_log.propagate = server_log.propagate, False

    async def restore(app: web.Application) -> None:
        server_log.removeHandler(handler)
        server_log.propagate = propagate

    app.on_cleanup.append(restore)
    # aiohttp reads a shutdown timeout of 0 as none at all (it waited for a body still
    # arriving): --drain 0 means at once, so the least it takes is a millisecond.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=max(shutdown_timeout, 0.001))
    await runner.setup()
    try:
        most = _connections_allowed(app[_CONFIG].max_connections)
        await _Site(runner, host, port, most, app[_REPORT]).start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on {_join(host, port)}: {exc.strerror or exc}") from exc
    return runner


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` (host 127.0.0.1) or a bare ``PORT``."""
    usage = f"--listen expects HOST:PORT, [IPv6]:PORT or :PORT, not '{text}'"
    value = text.strip()
    if re.fullmatch(r"[0-9]+", value):
        host, port_text = "", value
    elif value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise UserError(usage)
        host, port_text = value[1:close], value[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UserError(f"--listen: '{host}' is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise UserError(usage)
        if ":" in host:
            raise UserError(f"--listen: put an IPv6 address in brackets, e.g. [{host}]:{port_text}")
        if host and not _HOSTNAME.fullmatch(host):
            raise UserError(f"--listen: '{host}' is not a host name or address")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise UserError(f"--listen: the port must be a number from 1 to 65535, not '{port_text}'")
    return host or DEFAULT_HOST, int(port_text)
