"""``cmtyflow run`` (SPEC 5, 6): run playbooks for real on the durable store."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any
from zoneinfo import ZoneInfo

import click

from ..clock import Clock, SystemClock, VirtualClock
from ..errors import UserError
from ..runtime.channels import ChannelSet
from ..runtime.logs import LibraryLog, json_log, log_warnings, text_log
from ..runtime.prepare import load_programs, parse_now
from ..runtime.runner import Runner, StateLock, build_runner
from ..store.open import is_postgres
from . import EXIT_OK, cli
from .state import import_roster, state_option, store_at


@click.command("run")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@state_option
@click.option("--once", is_flag=True, help="do what is due now, send what can go now, and exit (for cron or systemd timers)")
@click.option("--listen", metavar="HOST:PORT", help="also accept events over HTTP: POST /events (needs CMTYFLOW_INTAKE_TOKEN or CMTYFLOW_INTAKE_SECRET)")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False), help="import these members (CSV or JSON lines) before starting")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=16, show_default=True, help="sends in flight at once")
@click.option("--drain", type=click.FloatRange(0, 3600), default=10.0, show_default=True, help="seconds sends in flight get to finish on stop")
@click.option("--poll", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, help="seconds between looks for events other processes stored")
@click.option("--now", "now_text", metavar="TIME", help="with --once: act as if it were this time (ISO 8601 with offset), to rehearse catch-up or replay a day")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="log lines on stderr for people or machines")
def run(
    paths: tuple[str, ...], state: str | None, once: bool, listen: str | None, roster: str | None,
    concurrency: int, drain: float, poll: float, now_text: str | None, log_format: str,
) -> int:
    """Run playbooks for real: fire schedules, take events, send messages.

    Validates first and refuses to start on errors. State (roster, runs, timers, the
    outbox) lives in the store, so stopping and starting again loses nothing: timers
    fire late within the catch-up grace, messages queued before the stop are sent.
    Stop with Ctrl-C or SIGTERM: sends in flight get --drain seconds to finish.
    """
    clock: Clock = SystemClock()
    if now_text is not None:
        if not once:
            raise UserError("--now needs --once: a runner that keeps running follows the real clock")
        clock = VirtualClock(parse_now(now_text))
    result, programs = load_programs(paths, warn=log_format != "json")  # in JSON, logged as lines of the log
    intake = None
    if listen:
        from ..runtime.intake import IntakeConfig
        from ..runtime.listen import parse_listen

        host, port = parse_listen(listen)
        intake = (host, port, IntakeConfig.from_env(os.environ))
        intake[2].check()
    channels = ChannelSet(programs, os.environ)
    store, location = store_at(state)
    # PostgreSQL: the store itself refuses a second runner (an advisory lock).
    lock = None if is_postgres(location) else StateLock(location)
    try:
        if lock is not None:
            lock.acquire()
        if roster:
            done = import_roster(store, roster)
            click.echo(f"imported {done.members} members from {roster}", err=True)
        tz = programs[0].tz
        log = json_log(sys.stderr, clock.now) if log_format == "json" else text_log(sys.stderr, clock.now, tz)
        if log_format == "json":
            log_warnings(log, result.problems)
        runner = build_runner(
            result, programs, store, channels, clock, log=log, concurrency=concurrency, poll=poll, drain=drain
        )
        with LibraryLog(log).installed():
            asyncio.run(_serve(runner, once=once, intake=intake, default_tz=tz, log=log))
        click.echo(runner.summary("done" if once else "stopped"), err=True)
    finally:
        store.close()
        if lock is not None:
            lock.release()
    return EXIT_OK


async def _serve(runner: Runner, *, once: bool, intake: Any, default_tz: ZoneInfo, log: Any) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log("stopping", drain_seconds=runner.drain, hint="signal again to abandon sends in flight")
            runner.stop()
        elif main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    site_runner = None
    if intake is not None:
        # Listening first: a port already taken stops the command before the runner has
        # started (and recorded a start and a stop, and a first run of each playbook).
        from ..runtime.intake import make_app, store_accept
        from ..runtime.listen import serve

        host, port, config = intake
        app = make_app(
            store_accept(runner.store), config, default_tz=default_tz, now=runner.clock.now, wake=runner.wake,
            log=log,
        )
        site_runner = await serve(app, host, port, shutdown_timeout=runner.drain)
    try:
        await runner.start()
    except BaseException:
        # Refused at its start (workers hold the state, say): the channels opened
        # first are closed, so no session is left open behind the error.
        await runner.channels.close()
        if site_runner is not None:
            await site_runner.cleanup()
        raise
    try:
        if intake is not None:
            host, port, _ = intake
            shown_host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
            log("listening", url=f"http://{shown_host}:{port}/events")
        if once:
            await runner.run_once()
        else:
            await runner.run_forever()
    except asyncio.CancelledError:
        log("abandoned", detail="sends still in flight are in doubt; see cmtyflow outbox")
    finally:
        try:
            if site_runner is not None:
                await site_runner.cleanup()
        except asyncio.CancelledError:  # a second signal while the intake stops: close all the same
            log("abandoned", detail="requests still in flight at the intake were not answered")
        finally:
            await runner.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


cli.add_command(run)

