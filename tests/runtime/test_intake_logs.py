"""What the intake and the libraries under the runner write to its log: one line a line
whatever a sender put in a value, the same line again counted rather than written, and
tokens too short to start with."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.errors import UserError
from cmtyflow.runtime.intake import IntakeConfig, make_app
from cmtyflow.runtime.logs import LibraryLog, json_log, text_log

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOKEN = "tok-5be0c2d9a817"


# --- the text log: one line a line ----------------------------------------------------------


def test_the_text_log_writes_control_characters_in_values_as_escapes():
    """A member id "evil\\r\\n2026 FAKE" made a line of its own in the runner's log."""
    out = io.StringIO()
    log = text_log(out, lambda: T0, UTC)
    log("sent", playbook="p", step="hello[0]", member="evil\r\n2026-11-23 16:00:00 FAKE", channel="out", adapter="file")
    log("unknown_member", playbook="p", member="ghost\n2026 x\u2028y\u2029z\x85\x1b[31m\u202e\u200b\tend")
    log("library", source="asyncio", message="中文　全角 ok")
    lines = out.getvalue().splitlines()
    assert lines == [
        "2026-12-01 09:00:00 sent p/hello[0] -> evil\\r\\n2026-11-23 16:00:00 FAKE via out (file)",
        "2026-12-01 09:00:00 a member not in the roster: playbook=p, "
        "member=ghost\\n2026 x\\u2028y\\u2029z\\x85\\x1b[31m\\u202e\\u200b\\tend",
        "2026-12-01 09:00:00 library: source=asyncio, message=中文　全角 ok",  # text and its spaces as they are
    ]


def test_the_json_log_escapes_the_line_separators_json_leaves_as_they_are():
    out = io.StringIO()
    json_log(out, lambda: T0)("library", message="a\u2028b\u2029c\x85d\ne")
    assert out.getvalue().count("\n") == 1 and len(out.getvalue().splitlines()) == 1
    assert json.loads(out.getvalue())["message"] == "a\u2028b\u2029c\x85d\ne"


# --- the same line again -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_library_line_repeated_is_written_once_then_counted_once_a_minute():
    """asyncio logged "socket.accept() out of system resource" for every failed accept
    while the process had no file descriptor left: 156,324 lines (25.6 MB) in 100 s."""
    out = io.StringIO()
    clock = Clock()
    handler = LibraryLog(json_log(out, lambda: T0), clock=clock)
    storm = logging.getLogger("asyncio")
    with handler.installed():
        for _ in range(5000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                storm.exception("socket.accept() out of system resource")
            clock.now += 0.01  # 50 s of it
        logging.getLogger("psycopg.pool").warning("another line")  # another kind goes out at once
        clock.now += 11
        storm.error("socket.accept() out of system resource: OSError: [Errno 24] Too many open files")
        clock.now += 1
        storm.error("socket.accept() out of system resource: OSError: [Errno 24] Too many open files")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    message = "socket.accept() out of system resource: OSError: [Errno 24] Too many open files"
    assert [(d["source"], d["message"], d.get("repeated")) for d in lines] == [
        ("asyncio", message, None),
        ("psycopg.pool", "another line", None),
        ("asyncio", message, 5000),  # the minute is over: the 4,999 counted and this one
        ("asyncio", message, 1),  # counted after, said when the handler is taken away
    ]


def test_repeats_say_a_kind_again_after_a_quiet_minute_and_flush_counts_when_other_lines_come():
    from cmtyflow.runtime.logs import Repeats

    clock = Clock()
    repeats = Repeats(60.0, clock)
    assert repeats.seen("a", {"n": 1}) == [("a", {"n": 1}, 0)]
    assert repeats.seen("a", {"n": 2}) == []
    clock.now += 61
    # Another kind, once a's minute is over: a's count goes out with it.
    assert repeats.seen("b", {"n": 3}) == [("a", {"n": 2}, 1), ("b", {"n": 3}, 0)]
    clock.now += 120
    assert repeats.seen("a", {"n": 4}) == [("a", {"n": 4}, 0)]  # quiet since: a first line again
    assert repeats.flush() == []


def test_repeats_keep_a_bounded_number_of_kinds():
    from cmtyflow.runtime.logs import Repeats

    clock = Clock()
    repeats = Repeats(60.0, clock)
    repeats.seen("first", {})
    repeats.seen("first", {})
    out = []
    for i in range(Repeats.MOST):
        out += repeats.seen(i, {})
    assert ("first", {}, 1) in out  # dropped, with its count said


# --- the intake's refusals ----------------------------------------------------------------


async def test_refused_credentials_are_logged_once_then_counted(aiohttp_client):
    """3,000 wrong guesses at the token wrote 3,000 lines."""
    reports: list[tuple[str, dict[str, Any]]] = []
    now = [T0]
    app = make_app(lambda events: (len(events), 0), IntakeConfig(token=TOKEN), default_tz=ZoneInfo("UTC"),
                   now=lambda: now[0], log=lambda event, /, **fields: reports.append((event, fields)))
    client = await aiohttp_client(app)
    for i in range(50):
        resp = await client.post("/events", data=b"[]", headers={"Authorization": f"Bearer guess-{i}",
                                                                  "Content-Type": "application/json"})
        assert resp.status == 401
    assert reports == [("intake_refused", {"remote": "127.0.0.1", "status": 401})]
    now[0] += timedelta(seconds=61)
    resp = await client.post("/events", data=b"[]", headers={"Content-Type": "application/json"})
    assert resp.status == 401
    assert reports[1:] == [("intake_refused", {"remote": "127.0.0.1", "status": 401, "repeated": 50})]
    resp = await client.post("/events", data=b"[]", headers={"Authorization": f"Bearer {TOKEN}",
                                                              "Content-Type": "application/json"})
    assert resp.status == 202 and len(reports) == 2


def test_the_logging_form_of_a_count_says_how_many_more(caplog):
    from cmtyflow.runtime.intake import _logging_report

    with caplog.at_level(logging.WARNING, logger="cmtyflow.intake"):
        _logging_report("intake_refused", remote="127.0.0.1", status=401, repeated=7)
    assert caplog.messages == ["intake: refused a request from 127.0.0.1 (401) (and 7 more like it)"]


# --- tokens too short --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CMTYFLOW_INTAKE_TOKEN", "CMTYFLOW_INTAKE_SECRET"])
def test_a_token_or_secret_shorter_than_12_characters_is_refused_with_how_to_make_one(name):
    """With CMTYFLOW_INTAKE_TOKEN=x the runner started without a word, and the token was
    found in 24 tries."""
    with pytest.raises(UserError) as info:
        IntakeConfig.from_env({name: " x "})
    assert str(info.value) == (
        f"{name} is too short (1 of the 12 characters the event intake takes at least, so that it cannot be "
        'guessed); make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )
    with pytest.raises(UserError, match="11 of the 12"):
        IntakeConfig.from_env({name: "a" * 11})
    config = IntakeConfig.from_env({name: "a" * 12})
    config.check()


def test_run_does_not_start_with_a_short_token(tmp_path, monkeypatch, capsys):
    from cmtyflow.cli import main

    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        f"cmtyflow: 1\nname: p\ntimezone: UTC\nchannels:\n  out: {{adapter: file, path: {tmp_path / 'out.jsonl'}}}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\nflows:\n  f:\n    - send: {channel: out, text: hi}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CMTYFLOW_INTAKE_TOKEN", "change-me")
    monkeypatch.delenv("CMTYFLOW_INTAKE_SECRET", raising=False)
    state = tmp_path / "s.db"
    assert main(["run", str(playbook), "--state", str(state), "--once", "--listen", "127.0.0.1:9"]) == 1
    assert "CMTYFLOW_INTAKE_TOKEN is too short" in capsys.readouterr().err
    assert not state.exists()  # refused before the state was opened
