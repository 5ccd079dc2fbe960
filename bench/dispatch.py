"""Benchmark: sustained dispatch to a loopback sink, against a raw aiohttp client and
against ansible-core; timers with 100,000 pending (issue: durable runner).

    python bench/dispatch.py [--messages 50000] [--concurrency 64] [--ansible-members 100]
                             [--timers 100000] [--repeat 5] [--skip-ansible] [--send-timers]

Phases, all in one run and against one sink:

- sink: a minimal HTTP/1.1 server on 127.0.0.1 in its own process (an asyncio protocol
  that answers every POST with 200 and a small JSON receipt), so that its CPU is not
  spent inside the measured event loop. Its CPU is reported per phase: well under one
  core means the client side, not the sink, sets the pace. It counts what it receives;
  each phase checks that every message arrived.
- cmtyflow: a SQLite state in a temporary folder with ``--messages`` queued messages for
  a webhook channel pointing at the sink, made by the real engine: N members imported
  and a playbook whose ``at`` trigger fires a member flow ``for_each: audience`` that
  sends one templated message (one input to ``Driver.process_until``, one decision with
  N runs and N messages). Timed: ``Dispatcher.run_due(now)`` alone, with the real
  ``WebhookAdapter`` opened by ``ChannelSet``, ``--concurrency`` workers, and every
  outcome committed to the outbox; afterwards every row must be ``sent`` with a
  delivery row.
- raw: a plain ``aiohttp.ClientSession`` posting the same bodies with the same headers
  (built before the clock starts) from ``--concurrency`` workers. The ratio is
  cmtyflow msgs/s / raw msgs/s (target >= 70%). ``--repeat N`` alternates raw and
  cmtyflow N times (each cmtyflow round on a fresh copy of the queued state); each
  round's ratio compares the two runs back to back, and the ratio reported is the
  median of the rounds' ratios: on a shared machine the rate of either side drifts by
  up to a half between rounds, and a pair run back to back shares its conditions,
  where the best round of each side may come from different ones (printed too, as
  "best against best"). So is the ratio of CPU per message, of the whole process and
  of the event loop's thread alone (cmtyflow commits to SQLite from a thread of its
  own).
- ansible: ansible-core in its own venv under ``bench/.work/`` (installed with pip on
  first use; never a dependency of cmtyflow), one ``ansible-playbook`` run on localhost
  with a local connection: for each of ``--ansible-members`` members a ``uri`` task
  POSTs the same message, rendered by a ``template`` lookup. Reported as seconds per
  message and how many times faster cmtyflow is per message (target >= 1000x). Without
  network (no ansible-core), that part says so and is skipped.
- timers: a second state where ``--timers`` members joined (a ``member.joined`` event
  each, handled by the engine) a member flow that waits ``1d`` and then sends: that many
  runs waiting, that many timers pending. Timed: ``Driver.process_until`` at the due
  instant: every timer consumed and its run moved on to its send, one transaction per
  timer, as the runner does. ``--send-timers`` also times sending what they queued.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from cmtyflow.adapters._http import dumps  # noqa: E402
from cmtyflow.clock import VirtualClock  # noqa: E402
from cmtyflow.runtime.channels import ChannelSet  # noqa: E402
from cmtyflow.runtime.inputs import parse_event  # noqa: E402
from cmtyflow.runtime.prepare import load_programs  # noqa: E402
from cmtyflow.runtime.runner import Runner  # noqa: E402
from cmtyflow.store.sqlite import SqliteStore  # noqa: E402

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TEXT = "你好 {{ member.name }}! Welcome to the reading club: your first check-in is tomorrow at 20:00."
TARGET_RATIO = 0.70
TARGET_ANSIBLE = 1000.0

PLAYBOOK = """
cmtyflow: 1
name: bench
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
triggers:
  - {trigger}
flows:
  hello:
{wait}    - id: hi
      send: {{channel: hook, text: "{text}"}}
"""
FIRING = f'{{id: welcome, at: "{T0:%Y-%m-%dT%H:%M}", for_each: audience, flow: hello}}'
JOINED = "{id: joined, event: member.joined, flow: hello}"


# --- the sink (its own process) -------------------------------------------------------------

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


class SinkProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, requests with a Content-Length body (what aiohttp and
    ansible's uri send); ``GET /count`` answers how many requests were received."""

    received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower() + b"\r\n"
            at = head.find(b"\r\ncontent-length:")
            length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            buf = buf[end + 4 + length :]
            if head.startswith(b"get /count"):
                body = str(SinkProtocol.received).encode()
            else:
                SinkProtocol.received += 1
                body = b'{"id":"%d"}' % SinkProtocol.received
            out.append(RESPONSE % (len(body), body))
        if out:
            self.transport.write(b"".join(out))
        self.buffer = buf


async def serve_sink() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


class Sink:
    """The sink process, started by this script (``--serve-sink``) and ended by it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-sink"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}/hook"
        self.port = port

    def count(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"GET /count HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.split(b"\r\n\r\n", 1)[1]:
                reply += s.recv(4096)
        return int(reply.split(b"\r\n\r\n", 1)[1])

    def cpu(self) -> float:
        """CPU seconds the sink has used (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Figure:
    """One timed phase: what was done, how long, the sink's share of a core, the CPU
    of this process (every thread) and of its event loop's thread alone."""

    n: int
    seconds: float
    sink_cpu: float
    own_cpu: float = 0.0
    loop_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def sink_load(self) -> float:
        return self.sink_cpu / self.seconds

    @property
    def own_load(self) -> float:
        return self.own_cpu / self.seconds


async def settle() -> None:
    """Before each timed round, the same quiet start for both sides: the files written so
    far (the copy of the queued state just made) on disk, so that the kernel does not
    write them back in the middle of the round, and the collector's work done."""
    os.sync()
    gc.collect()
    await asyncio.sleep(0.2)


@contextmanager
def timed(sink: Sink, n: int, into: list[Figure]) -> Iterator[None]:
    cpu, own, loop = sink.cpu(), time.process_time(), time.thread_time()
    started = time.perf_counter()
    yield
    took = time.perf_counter() - started
    into.append(Figure(n, took, sink.cpu() - cpu, time.process_time() - own, time.thread_time() - loop))


# --- a state made by the engine ----------------------------------------------------------------


def open_runner(folder: Path, concurrency: int) -> Runner:
    """A runner on the state in ``folder`` (``pb.yaml``, ``state.db``), at T0."""
    _, programs = load_programs([folder / "pb.yaml"])
    store = SqliteStore(folder / "state.db")
    return Runner(programs, store, ChannelSet(programs, {}), VirtualClock(T0), concurrency=concurrency)


def make_state(folder: Path, url: str, members: int, concurrency: int, *, wait: str | None) -> tuple[Runner, float]:
    """A runner on a fresh SQLite state with ``members`` members, each with a run of
    the member flow started by the engine at T0, which has sent its message (queued)
    or, with ``wait``, waits that long first. Returns it and the seconds the engine took.

    Without a wait the runs come from one firing ``for_each: audience`` (one input);
    with one, from a ``member.joined`` event per member (one input per timer to come,
    as members joining over time make them)."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = f"    - wait: {wait}\n" if wait else ""
    (folder / "pb.yaml").write_text(
        textwrap.dedent(PLAYBOOK).lstrip().format(
            url=url, trigger=JOINED if wait else FIRING, wait=steps, text=TEXT.replace('"', '\\"')
        ),
        encoding="utf-8",
    )
    runner = open_runner(folder, concurrency)
    store = runner.store
    store.put_members({"id": f"m{i:06d}", "name": f"Member {i}"} for i in range(members))
    if wait:
        store.add_events(
            parse_event({"id": f"join-{i}", "type": "member.joined", "member": f"m{i:06d}", "at": T0.isoformat()}, UTC)
            for i in range(members)
        )
    started = time.perf_counter()
    handled = runner.driver.process_until(T0)
    took = time.perf_counter() - started
    assert handled == (members if wait else 1), handled
    return runner, took


def check_all_sent(store: SqliteStore, n: int) -> None:
    counts = {k: v for k, v in store.outbox_counts().items() if v}
    assert counts == {"sent": n}, counts
    db = store.db
    deliveries = db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    assert deliveries == n, (deliveries, n)
    orphans = db.execute("SELECT count(*) FROM outbox WHERE key NOT IN (SELECT key FROM deliveries)").fetchone()[0]
    assert orphans == 0, orphans


def bodies_of(store: SqliteStore) -> list[tuple[bytes, dict[str, str]]]:
    """What the webhook adapter sends for each queued message: the same JSON body
    (``_http.dumps`` of the same fields) and the same headers."""
    out = []
    for row in store.outbox(["queued"]):
        m = row.message
        payload = {"key": m.key, "channel": m.channel, "playbook": m.playbook, "member": m.member,
                   "text": m.text, "format": m.format, "urgent": m.urgent}
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": m.key}
        out.append((dumps(payload), headers))
    return out


async def raw_post(url: str, bodies: list[tuple[bytes, dict[str, str]]], concurrency: int,
                   sink: Sink, into: list[Figure]) -> None:
    """The floor: ``concurrency`` workers on one plain ClientSession, nothing else."""
    await settle()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        todo = iter(bodies)

        async def worker() -> None:
            for body, headers in todo:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"sink answered {resp.status}")

        with timed(sink, len(bodies), into):
            await asyncio.gather(*(worker() for _ in range(concurrency)))


async def dispatch_phase(args: argparse.Namespace, sink: Sink, folder: Path) -> dict[str, Any]:
    n = args.messages
    folder = folder / "dispatch"
    runner, setup = make_state(folder, sink.url, n, args.concurrency, wait=None)
    store = runner.store
    assert isinstance(store, SqliteStore)
    assert store.outbox_counts()["queued"] == n
    print(f"  set-up: the engine queued {n:,} messages in {setup:.1f} s", flush=True)
    bodies = bodies_of(store)
    store.close()  # every round starts from a copy of this state: n messages queued
    shutil.copyfile(folder / "state.db", folder / "queued.db")
    ours: list[Figure] = []
    raw: list[Figure] = []
    for round_ in range(args.repeat):
        before = sink.count()
        await raw_post(sink.url, bodies, args.concurrency, sink, raw)
        assert sink.count() - before == n
        print(f"  round {round_ + 1}: raw      {raw[-1].rate:9,.0f} msgs/s ({raw[-1].seconds:.2f} s, sink {raw[-1].sink_load:.0%} of a core)", flush=True)
        shutil.copyfile(folder / "queued.db", folder / "state.db")
        runner = open_runner(folder, args.concurrency)
        store = runner.store
        assert isinstance(store, SqliteStore)
        await runner.start()
        try:
            before = sink.count()
            await settle()
            with timed(sink, n, ours):
                stats = await runner.dispatcher.run_due(T0)
            assert stats.sent == n and stats.total() == n, stats
            assert sink.count() - before == n
        finally:
            await runner.close()
        check_all_sent(store, n)
        store.close()
        print(f"  round {round_ + 1}: cmtyflow {ours[-1].rate:9,.0f} msgs/s ({ours[-1].seconds:.2f} s, sink {ours[-1].sink_load:.0%} of a core)", flush=True)
    return {"setup": setup, "ours": ours, "raw": raw}


# --- ansible-core ----------------------------------------------------------------------------------

ANSIBLE_PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [members.yml]
  tasks:
    - name: render each member's message and post it to the webhook
      ansible.builtin.uri:
        url: "{url}"
        method: POST
        body: "{{{{ lookup('ansible.builtin.template', 'message.j2') }}}}"
        body_format: raw
        headers:
          Content-Type: "application/json; charset=utf-8"
          Idempotency-Key: "{{{{ item.key }}}}"
        status_code: 200
      loop: "{{{{ members }}}}"
"""

# The same payload as the webhook adapter's, rendered by ansible's Jinja.
ANSIBLE_TEMPLATE = (
    '{{ {"key": item.key, "channel": "hook", "playbook": "bench", "member": item.id, "text": "你好 " ~ item.name'
    ' ~ "! Welcome to the reading club: your first check-in is tomorrow at 20:00.", "format": "plain",'
    ' "urgent": false} | to_json(ensure_ascii=false, separators=[",", ":"]) }}\n'
)


def ansible_venv() -> Path | str:
    """The venv's ansible-playbook, installing ansible-core on first use; or why not."""
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / ".gitignore").write_text("*\n", encoding="utf-8")  # the venv is never committed
    venv = WORK / "ansible-venv"
    exe = venv / "bin" / "ansible-playbook"
    if exe.exists():
        return exe
    print(f"  installing ansible-core into {venv.relative_to(ROOT)} (first run only) ...", flush=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return f"python -m venv failed: {made.stderr.strip()[-200:]}"
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "ansible-core"],
                         capture_output=True, text=True)
    if pip.returncode != 0 or not exe.exists():
        shutil.rmtree(venv, ignore_errors=True)
        last = ((pip.stderr or pip.stdout).strip().splitlines() or ["no output"])[-1]
        return f"pip install ansible-core failed: {last[:200]}"
    return exe


def ansible_phase(args: argparse.Namespace, sink: Sink) -> dict[str, Any]:
    exe = ansible_venv()
    if isinstance(exe, str):
        return {"skipped": exe}
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    version = version.split("[")[-1].rstrip("]")  # "ansible-playbook [core 2.19.14]" -> "core 2.19.14"
    m = args.ansible_members
    folder = WORK / "ansible"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "inventory.ini").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={exe.parent / 'python'}\n", encoding="utf-8"
    )
    (folder / "play.yml").write_text(textwrap.dedent(ANSIBLE_PLAYBOOK).lstrip().format(url=sink.url), encoding="utf-8")
    (folder / "message.j2").write_text(ANSIBLE_TEMPLATE, encoding="utf-8")
    lines = ["members:"] + [f'  - {{id: "m{i:06d}", name: "Member {i}", key: "ansible-{i:06d}"}}' for i in range(m)]
    (folder / "members.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {
        **os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "ANSIBLE_HOME": str(folder / "home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"), "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    before = sink.count()
    figures: list[Figure] = []
    with timed(sink, m, figures), open(folder / "run.log", "w", encoding="utf-8") as log:
        done = subprocess.run([str(exe), "-i", "inventory.ini", "play.yml"], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"ansible-playbook failed (exit {done.returncode}); see {folder / 'run.log'}")
    received = sink.count() - before
    assert received == m, (received, m)
    return {"version": version, "figure": figures[0]}


# --- timers -------------------------------------------------------------------------------------------


async def timers_phase(args: argparse.Namespace, sink: Sink, folder: Path) -> dict[str, Any]:
    n = args.timers
    runner, setup = make_state(folder / "timers", sink.url, n, args.concurrency, wait="1d")
    store = runner.store
    assert isinstance(store, SqliteStore)
    pending = store.db.execute("SELECT count(*) FROM timers").fetchone()[0]
    assert pending == n, pending
    print(f"  set-up: the engine started {n:,} runs in {setup:.1f} s, {pending:,} timers pending", flush=True)
    due = T0 + timedelta(days=1)
    runner.clock.set(due)  # type: ignore[attr-defined]
    figures: list[Figure] = []
    with timed(sink, n, figures):
        handled = runner.driver.process_until(due)
    assert handled == n and store.next_timer_due() is None, handled
    assert store.outbox_counts()["queued"] == n
    print(f"  timers   {figures[-1].rate:9,.0f} timers/s ({figures[-1].seconds:.2f} s)", flush=True)
    result = {"setup": setup, "timers": figures[0]}
    if args.send_timers:
        await runner.start()
        try:
            with timed(sink, n, figures):
                stats = await runner.dispatcher.run_due(due)
            assert stats.sent == n, stats
        finally:
            await runner.close()
        check_all_sent(store, n)
        result["sent"] = figures[1]
        print(f"  then sent {figures[-1].rate:9,.0f} msgs/s ({figures[-1].seconds:.2f} s)", flush=True)
    store.close()
    return result


# --- the report ------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(args: argparse.Namespace, d: dict[str, Any], a: dict[str, Any] | None,
           t: dict[str, Any] | None, loads: list[str]) -> None:
    ours = max(d["ours"], key=lambda f: f.rate)
    raw = max(d["raw"], key=lambda f: f.rate)
    best = ours.rate / raw.rate
    pairs = [o.rate / r.rate for o, r in zip(d["ours"], d["raw"], strict=True)]  # round by round
    ratio = statistics.median(pairs)
    cpu_ratio = statistics.median(r.own_cpu / o.own_cpu for o, r in zip(d["ours"], d["raw"], strict=True))
    loop_ratio = statistics.median(r.loop_cpu / o.loop_cpu for o, r in zip(d["ours"], d["raw"], strict=True))
    print()
    print(f"bench/dispatch: {args.messages:,} messages, concurrency {args.concurrency}, "
          f"{args.repeat} alternating rounds (figures: the best round of each)")
    print(f"machine: {os.cpu_count()} cores ({cpu_name()}), Python {platform.python_version()}, "
          f"aiohttp {aiohttp.__version__}, Linux {platform.release()}; sink in its own process")
    print(f"load average (1 min) at start, after dispatch, at end: {', '.join(loads)}")
    rounds = ", ".join(f"{o.rate:,.0f}/{r.rate:,.0f}" for o, r in zip(d["ours"], d["raw"], strict=True))
    print(f"rounds, cmtyflow/raw msgs/s: {rounds} (each round's ratio: {', '.join(f'{p:.0%}' for p in pairs)}; "
          f"median {ratio:.0%})")

    def cpu(f: Figure) -> str:
        loop = f" (loop {1e6 * f.loop_cpu / f.n:,.0f})" if f.own_cpu - f.loop_cpu > 0.05 * f.own_cpu else ""
        return f"{1e6 * f.own_cpu / f.n:,.0f}{loop} us/item, {f.own_load:.0%}"

    rows = [
        ("cmtyflow dispatch (outbox committed)", f"{ours.rate:,.0f} msgs/s", f"{ours.seconds:.2f} s", cpu(ours), f"{ours.sink_load:.0%}"),
        ("raw aiohttp client, same bodies", f"{raw.rate:,.0f} msgs/s", f"{raw.seconds:.2f} s", cpu(raw), f"{raw.sink_load:.0%}"),
        ("ratio cmtyflow / raw, median of rounds", f"{ratio:.0%}",
         f"target >= {TARGET_RATIO:.0%}: {'met' if ratio >= TARGET_RATIO else 'MISSED'}",
         f"by CPU per message: {cpu_ratio:.0%} (loop thread: {loop_ratio:.0%})", ""),
        ("  best round against best round", f"{best:.0%}", "", "", ""),
    ]
    if a is None:
        rows.append(("ansible-core", "not run (--skip-ansible)", "", "", ""))
    elif "skipped" in a:
        rows.append(("ansible-core", "NOT MEASURED", "(see below)", "", ""))
    else:
        f = a["figure"]
        per = f.seconds / f.n
        times = per * ours.rate
        rows.append((f"ansible-core {a['version']}, {f.n} members", f"{per:.3f} s/msg", f"{f.seconds:.1f} s",
                     "(in its own processes)", f"{f.sink_load:.0%}"))
        rows.append(("cmtyflow faster per message", f"{times:,.0f}x",
                     f"target >= {TARGET_ANSIBLE:,.0f}x: {'met' if times >= TARGET_ANSIBLE else 'MISSED'}", "", ""))
    if t is not None:
        f = t["timers"]
        rows.append((f"timers, {args.timers:,} pending", f"{f.rate:,.0f} timers/s", f"{f.seconds:.2f} s", cpu(f), ""))
        if "sent" in t:
            f = t["sent"]
            rows.append(("  then their messages sent", f"{f.rate:,.0f} msgs/s", f"{f.seconds:.2f} s", cpu(f), f"{f.sink_load:.0%}"))
    head = ("", "figure", "wall", "bench process CPU", "sink CPU")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip())
    if a is not None and "skipped" in a:
        print(f"ansible-core not measured, no figure for it: {a['skipped']}")
    print(f"set-up (not timed): the firing that queued {args.messages:,} messages {d['setup']:.1f} s"
          + (f"; {args.timers:,} joins that left a run waiting {t['setup']:.1f} s" if t is not None else ""))


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


async def amain(args: argparse.Namespace) -> int:
    sink = Sink()
    loads = [load_average()]
    try:
        with tempfile.TemporaryDirectory(prefix="cmtyflow-bench-") as tmp:
            print(f"dispatch: {args.messages:,} messages to {sink.url}", flush=True)
            d = await dispatch_phase(args, sink, Path(tmp))
            loads.append(load_average())
            a = None
            if not args.skip_ansible:
                print(f"ansible-core: {args.ansible_members} members", flush=True)
                a = ansible_phase(args, sink)
                if "skipped" in a:
                    print(f"  ANSIBLE NOT MEASURED: {a['skipped']}", flush=True)
                else:
                    f = a["figure"]
                    print(f"  {a['version']}: {f.seconds:.1f} s, {f.seconds / f.n:.3f} s/msg", flush=True)
            t = None
            if args.timers:
                print(f"timers: {args.timers:,} pending", flush=True)
                t = await timers_phase(args, sink, Path(tmp))
        loads.append(load_average())
        report(args, d, a, t, loads)
    finally:
        sink.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ansible-members", type=int, default=100)
    parser.add_argument("--timers", type=int, default=100_000, help="0 skips the timers phase")
    parser.add_argument("--repeat", type=int, default=5,
                        help="alternating raw/cmtyflow rounds (the ratio: the median of the rounds' ratios)")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument("--send-timers", action="store_true",
                        help="also time the dispatch of the messages the timers queued")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        asyncio.run(serve_sink())
        return 0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
