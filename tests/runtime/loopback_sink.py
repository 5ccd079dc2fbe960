"""A webhook receiver on 127.0.0.1 that honours ``Idempotency-Key`` the way a careful
platform does: a key already delivered is answered 200 again and not delivered twice.

``script`` holds answers for the next requests, in order: an int status, a
(status, headers) pair, or "hang" (never answers). With the script empty, 200.
``ThreadedSink`` runs one in its own thread and loop, for runners in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Request:
    key: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    status: int | str


@dataclass
class Sink:
    script: list[Any] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> body, first delivery
    order: list[str] = field(default_factory=list)  # keys in first-delivery order
    duplicates: int = 0
    release: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        key = request.headers.get("Idempotency-Key")
        answer: Any = self.script.pop(0) if self.script else 200
        status, headers = (answer if isinstance(answer, tuple) else (answer, {}))
        self.requests.append(Request(key, body, dict(request.headers), status))
        if status == "hang":
            if self.release is None:
                self.release = asyncio.Event()
            await self.release.wait()
            return web.Response(status=503)
        if 200 <= int(status) < 300:
            if key in self.delivered:
                self.duplicates += 1
            else:
                assert key is not None
                self.delivered[key] = body
                self.order.append(key)
            return web.json_response({"id": key}, status=int(status), headers=headers)
        return web.json_response({"error": "scripted"}, status=int(status), headers=headers)


class ThreadedSink:
    """A Sink served from a background thread; ``url`` once started."""

    def __init__(self) -> None:
        self.sink = Sink()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        return self.url

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def up() -> None:
            self._runner = web.AppRunner(self.sink.app(), handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}/hook"
            self._ready.set()

        self._loop.run_until_complete(up())
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the sink's loop (to read or change its state safely)."""
        future: Any = asyncio.run_coroutine_threadsafe(_call(fn), self._loop)
        return future.result(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def snapshot(self) -> tuple[list[Request], dict[str, dict[str, Any]], int]:
        """A consistent copy of what the sink has seen: (requests, delivered, duplicates)."""
        s = self.sink
        return self.call(lambda: (list(s.requests), dict(s.delivered), s.duplicates))  # type: ignore[no-any-return]


async def _call(fn: Any) -> Any:
    return fn()
