"""``cmtyflow worker``: one of several processes sharing a PostgreSQL state."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import click

from ..clock import SystemClock
from ..errors import UserError
from ..runtime.channels import ChannelSet
from ..runtime.logs import LibraryLog, json_log, log_warnings, text_log
from ..runtime.prepare import load_programs
from ..store.open import ENV_VAR, is_postgres, shown, state_location
from . import EXIT_OK, cli
from .state import state_option


@click.command("worker")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@state_option
@click.option("--jobs", type=click.IntRange(1, 256), default=4, show_default=True, help="jobs this worker runs at once (batches of waits, batches of sends)")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=16, show_default=True, help="sends in flight at once within one send job")
@click.option("--drain", type=click.FloatRange(0, 3600), default=10.0, show_default=True, help="seconds sends in flight get to finish on stop")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="log lines on stderr for people or machines")
def worker(paths: tuple[str, ...], state: str | None, jobs: int, concurrency: int, drain: float, log_format: str) -> int:
    """Share the work of a PostgreSQL state with other workers.

    Start one on each machine (or several on one), all with the same playbooks and
    the same --state postgresql://... (or CMTYFLOW_STATE). Every worker fires
    schedules, takes events, resumes waits and sends messages; a worker that dies has
    its jobs taken up by the others within about ten seconds. Stop with Ctrl-C or
    SIGTERM. A single `cmtyflow run` on the same state is refused while workers run.
    See docs/scale-out.md.
    """
    location = state_location(state, os.environ)
    if not is_postgres(location):
        raise UserError(
            f"workers share a PostgreSQL state: pass --state postgresql://... or set {ENV_VAR} "
            f"(got {shown(location)}); on one machine with SQLite use `cmtyflow run`"
        )
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        raise UserError("workers need procrastinate: pip install 'cmtyflow[postgres]'") from None
    from ..adapters.ratelimit import set_default_limiter
    from ..runtime.worker import Worker
    from ..store.pg_ratelimit import PgRateLimiter

    result, programs = load_programs(paths, warn=log_format != "json")  # in JSON, logged as lines of the log
    # Platform rate limits shared with the other workers: installed before the
    # channels are built, as adapters take the default limiter when they are.
    limiter = PgRateLimiter(location)
    set_default_limiter(limiter)
    try:
        channels = ChannelSet(programs, os.environ)
        clock = SystemClock()
        tz = programs[0].tz
        log = json_log(sys.stderr, clock.now) if log_format == "json" else text_log(sys.stderr, clock.now, tz)
        if log_format == "json":
            log_warnings(log, result.problems)
        w = Worker(result, programs, location, channels, clock, jobs=jobs, concurrency=concurrency, drain=drain, log=log)
        with LibraryLog(log).installed():
            asyncio.run(_serve(w, log, limiter))
    finally:
        set_default_limiter(None)
    click.echo(w.summary(), err=True)
    return EXIT_OK


async def _serve(w: Any, log: Any, limiter: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, w.stop)
    try:
        await w.start()
        log("worker_started", pid=os.getpid(), jobs=w.jobs)
        await w.serve()
    finally:
        try:
            await w.close()
        finally:
            await limiter.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


cli.add_command(worker)
