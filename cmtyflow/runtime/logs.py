"""The runner's and the workers' log sinks: human lines (``text_log``) or JSON
(``json_log``), a line per event, every value on one line (``plain``), no secret;
what third-party libraries log goes through ``LibraryLog`` into the same log, one line
each, repeats collapsed (``Repeats``). ``LOGGED_NOTES`` are the engine's notes worth a
line, with their words."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import traceback
import unicodedata
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .dispatch import Log

LOGGED_NOTES = {
    "run_failed": "run failed",
    "skipped_firing": "skipped a missed firing (older than the catch-up grace)",
    "coalesced_firing": "skipped a missed firing (coalesced into the late one)",
    "late_firing": "fired late",
    "firing_abandoned": "left a firing part way (its schedule was edited while it was under way)",
    "late_wait": "resumed a wait late",
    "launch_refused": "refused a launch",
    "empty_message": "a send rendered empty text",
    "unknown_member": "a member not in the roster",
    "trigger_failed": "a trigger failed",
    "audience_failed": "an audience check failed",
    "emit_chain_cut": "dropped an emitted event: a chain of emits went too far (does a flow emit the event that starts it?)",
    "opt_out_kept": "kept a recorded opt-out: the event's member data said opted_out false (only a member.opted_in event undoes one)",
    "input_failed": "set an input aside (it broke on a fault of cmtyflow's own; see docs/semantics.md, Runs)",
}


# log sinks -------------------------------------------------------------------------------------


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNPRINTED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def plain(text: str) -> str:
    """``text`` with the characters that are not printed as themselves written as escapes
    (a line break as \\n, an escape as \\x1b, U+2028 as \\u2028): a value a sender
    chose (a member id "x\\n2026-11-23 runner: ...") made lines of its own in the log."""
    if text.isprintable():  # the common case; false for these and for spaces other than U+0020
        return text

    def escaped(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        if unicodedata.category(c) not in _UNPRINTED:
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return "".join(map(escaped, text))


def text_log(out: TextIO, now: Callable[[], datetime], tz: Any) -> Log:
    """Human log lines: time, what happened, the few fields that say which message. A
    line is one line whatever its values hold (``plain``)."""

    def log(event: str, /, **fields: Any) -> None:
        stamp = now().astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
        if event == "sent":
            to = fields.get("member") or f"#{fields.get('channel')}"
            line = f"sent {fields.get('playbook')}/{fields.get('step')} -> {to} via {fields.get('channel')} ({fields.get('adapter')})"
        elif event == "retry":
            line = (f"retry {fields.get('playbook')}/{fields.get('step')} -> {fields.get('member') or 'channel'} "
                    f"(attempt {fields.get('attempts')}) at {fields.get('next_attempt')}: {fields.get('error')}")
        elif event == "dead":
            line = (f"dead letter {fields.get('playbook')}/{fields.get('step')} -> {fields.get('member') or 'channel'}: "
                    f"{fields.get('error')} (key {str(fields.get('key'))[:12]}; cmtyflow outbox retry to resend)")
        elif event in LOGGED_NOTES:
            detail = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{LOGGED_NOTES[event]}: {detail}"
        else:
            detail = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{event.replace('_', ' ')}" + (f": {detail}" if detail else "")
        out.write(f"{stamp} {plain(line)}\n")
        out.flush()

    return log


_SECRETS = (
    (re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),
)


_OURS = str(Path(__file__).resolve().parent.parent)  # the cmtyflow package's folder


class Repeats:
    """Lines that repeat, said once and then counted. The first line of a kind goes out;
    the same kind again within ``every`` seconds is counted, and the count goes out as
    one line (``repeated=N``, with the fields of the last of them) with the first one
    after those seconds, or with any line once they are over, or at ``flush``. A
    kind that comes again after a quiet spell goes out as a first line again. Only the
    ``MOST`` kinds seen last are kept (the count of one dropped goes out then)."""

    MOST = 256

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._kinds: dict[Hashable, list[Any]] = {}  # kind -> [since, counted, fields of the last]
        self._looked = float("-inf")

    def seen(self, kind: Hashable, fields: dict[str, Any]) -> list[tuple[Hashable, dict[str, Any], int]]:
        """The lines to write now for a line of ``kind``: (kind, fields, repeated), where
        repeated is 0 for the line itself and N for a count."""
        now = self.clock()
        out = self._over(now, kind) if now - self._looked >= 1.0 else []
        entry = self._kinds.pop(kind, None)  # put back last: the dict is in the order last seen
        if entry is None or (entry[1] == 0 and now - entry[0] >= self.every):
            entry = [now, 0, fields]
            out.append((kind, fields, 0))
        elif now - entry[0] < self.every:
            entry[1] += 1
            entry[2] = fields
        else:
            out.append((kind, fields, entry[1] + 1))
            entry = [now, 0, fields]
        self._kinds[kind] = entry
        while len(self._kinds) > self.MOST:
            oldest = next(iter(self._kinds))
            since, counted, last = self._kinds.pop(oldest)
            if counted:
                out.append((oldest, last, counted))
        return out

    def _over(self, now: float, but: Hashable) -> list[tuple[Hashable, dict[str, Any], int]]:
        """The counts of the kinds whose seconds are over (other than ``but``)."""
        self._looked = now
        out = []
        for kind, entry in list(self._kinds.items()):
            if kind != but and now - entry[0] >= self.every:
                if entry[1]:
                    out.append((kind, entry[2], entry[1]))
                del self._kinds[kind]
        return out

    def flush(self) -> list[tuple[Hashable, dict[str, Any], int]]:
        """Every count not said yet (at stop)."""
        out = [(kind, entry[2], entry[1]) for kind, entry in self._kinds.items() if entry[1]]
        self._kinds.clear()
        return out


class LibraryLog(logging.Handler):
    """What the libraries under a runner or a worker log (procrastinate, psycopg's pool,
    asyncio), as one line of its log each, in its format: where, what, and the
    exception's type and first line, never a traceback nor a password. A database
    restart printed dozens of tracebacks into a JSON log. The same line again is counted,
    not written (``Repeats``: the first, then ``repeated=N`` at most once a minute):
    asyncio's "socket.accept() out of system resource" came thousands of times a second
    while the process was out of file descriptors, and filled the disk."""

    def __init__(self, log: Log, *, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self.log = log
        self.repeats = Repeats(every, clock)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
            fields: dict[str, Any] = {}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                message = f"{message}: {type(exc).__name__}" + (f": {first}" if first else "")
                frames = traceback.extract_tb(exc.__traceback__)
                if any(_OURS in frame.filename for frame in frames):
                    # A fault of cmtyflow's own ("Task exception was never retrieved" of
                    # one of its tasks): where it happened is kept, the last frames.
                    fields["where"] = " <- ".join(
                        f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-5:])
                    )
            for pattern, masked in _SECRETS:
                message = pattern.sub(masked, message)
            line = {"source": record.name, "level": record.levelname.lower(), "message": message[:500], **fields}
            self._write(self.repeats.seen(tuple(line.items()), line))
        except Exception:  # noqa: BLE001 - a log line must never stop the process
            self.handleError(record)

    def _write(self, lines: list[tuple[Hashable, dict[str, Any], int]]) -> None:
        for _, fields, repeated in lines:
            self.log("library", **fields, **({"repeated": repeated} if repeated else {}))

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """On the root logger (replacing Python's last-resort printing) while inside."""
        root = logging.getLogger()
        root.addHandler(self)
        try:
            yield
        finally:
            root.removeHandler(self)
            with contextlib.suppress(Exception):
                self._write(self.repeats.flush())


def log_warnings(log: Log, problems: Sequence[Any]) -> None:
    """validate's warnings as lines of a JSON log (``--log-format json``), where its
    text form, with its caret lines, broke the JSON lines."""
    for p in problems:
        log("validate_warning", file=str(p.path), line=p.line, col=p.col, message=p.message)


_JSON_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_log(out: TextIO, now: Callable[[], datetime]) -> Log:

    def log(event: str, /, **fields: Any) -> None:
        line = json.dumps({**fields, "at": now().isoformat(), "event": event}, ensure_ascii=False, default=str)
        # JSON escapes the C0 controls; U+0085, U+2028 and U+2029 it leaves as they are,
        # and readers that split lines as Python does (str.splitlines) split there.
        out.write(line.translate(_JSON_BREAKS) + "\n")
        out.flush()

    return log

