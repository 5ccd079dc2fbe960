"""The one top-level error handler: exit codes 0/1/2/3/130 (STYLE, after pre-commit)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest

import cmtyflow.cli.validate as validate_module
from cmtyflow import __version__
from cmtyflow.cli import main
from cmtyflow.errors import UserError


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_exits_0(capsys):
    assert run(capsys, "--version") == (0, f"cmtyflow, version {__version__}\n", "")


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "validate" in out and "schema" in out


def test_a_missing_file_is_a_problem_like_any_other(tmp_path, capsys):
    """Reported in the problem list (JSON for tools), exit 1, and the other paths still
    checked: a path error printed text on stderr only and stopped everything."""
    missing = tmp_path / "nope.yaml"
    assert run(capsys, "validate", str(missing)) == (
        1,
        f"{missing}:1:1: error: no such file or folder\n0 files, 1 error, 0 warnings\n",
        "",
    )
    good = tmp_path / "pb.yaml"
    good.write_text("cmtyflow: 1\nname: pb\nchannels: {dm: {adapter: console}}\n"
                    "triggers: [{id: j, event: member.joined, flow: f}]\nflows: {f: [{send: {text: hi}}]}\n", encoding="utf-8")
    code, out, _ = run(capsys, "validate", "--format", "json", str(missing), str(good))
    doc = json.loads(out)
    assert code == 1 and doc["files"] == 1 and doc["errors"] == 1
    assert [(p["path"], p["message"]) for p in doc["problems"]] == [(str(missing), "no such file or folder")]


def test_a_user_error_raised_anywhere_exits_1(monkeypatch, capsys):
    def refuse(paths):
        raise UserError("the roster is locked")

    monkeypatch.setattr(validate_module, "load", refuse)
    assert run(capsys, "validate", "x.yaml") == (1, "", "error: the roster is locked\n")


def test_usage_errors_exit_2(capsys):
    code, out, err = run(capsys, "validate")
    assert (code, out) == (2, "")
    assert "Missing argument 'PATHS...'" in err
    assert err.startswith("Usage: cmtyflow validate")


def test_bad_option_values_exit_2(capsys):
    code, _, err = run(capsys, "validate", "--format", "xml", "x.yaml")
    assert code == 2
    assert "Invalid value for '--format'" in err


def test_unknown_commands_exit_2(capsys):
    code, _, err = run(capsys, "valdate")
    assert code == 2
    assert "No such command 'valdate'" in err


def test_a_bug_exits_3_with_a_crash_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(paths):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(validate_module, "load", broken)
    code, out, err = run(capsys, "validate", "x.yaml")
    assert (code, out) == (3, "")
    match = re.fullmatch(r"cmtyflow hit a bug; details were written to (.+)\n", err)
    assert match, err
    log = Path(match.group(1))
    assert log.parent == tmp_path
    assert re.fullmatch(r"cmtyflow-crash-[0-9-]+\.log", log.name)
    text = log.read_text(encoding="utf-8")
    assert "command: cmtyflow validate x.yaml" in text
    assert "RuntimeError: kaboom" in text
    assert "Traceback" in text


def test_a_crash_log_masks_passwords_and_is_the_users_own(tmp_path, monkeypatch, capsys):
    """A --state URL's password was written in the crash log's command line, in a file
    anyone on the machine could read."""
    import stat

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(paths):
        raise RuntimeError("cannot reach postgresql://cf:s3cret-pw@db/x and https://hooks.example/x?token=t0ken123")

    monkeypatch.setattr(validate_module, "load", broken)
    code, _, err = run(capsys, "validate", "x.yaml", "postgresql://cf:s3cret-pw@[::1:5432/db?password=again")
    assert code == 3
    log = Path(re.fullmatch(r"cmtyflow hit a bug; details were written to (.+)\n", err).group(1))
    text = log.read_text(encoding="utf-8")
    assert "s3cret-pw" not in text and "again" not in text and "t0ken123" not in text
    assert "command: cmtyflow validate x.yaml postgresql://********@[::1:5432/db?password=***" in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, click.exceptions.Abort])
def test_interrupts_exit_130(interrupt, monkeypatch, capsys):
    def stop(paths):
        raise interrupt()

    monkeypatch.setattr(validate_module, "load", stop)
    code, out, _ = run(capsys, "validate", "x.yaml")
    assert (code, out) == (130, "")


def test_the_installed_script_uses_the_same_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cmtyflow: 1\nname: bad\nflows: []\n", encoding="utf-8")
    command = [sys.executable, "-c", "import sys; from cmtyflow.cli import main; sys.exit(main())"]
    done = subprocess.run(
        [*command, "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert (
        f"{bad}:3:1: error: 'flows' should be a mapping of flow name to steps, not a list"
        in done.stdout
    )
    done = subprocess.run([*command, "validate"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2


def test_a_full_disk_under_the_state_is_an_error_not_a_bug(tmp_path, monkeypatch, capsys):
    # A real SQLITE_FULL: the state may not grow past a few pages, as on a full disk.
    import json
    import sqlite3

    from cmtyflow.store import sqlite as sqlite_store

    state = tmp_path / "state.db"
    assert run(capsys, "emit", "ping", "--id", "e0", "--state", str(state))[0] == 0
    pages = sqlite3.connect(state).execute("PRAGMA page_count").fetchone()[0]
    opened = sqlite_store.open_db

    def small(path):  # type: ignore[no-untyped-def]
        db = opened(path)
        db.execute(f"PRAGMA max_page_count = {pages + 2}")
        return db

    monkeypatch.setattr(sqlite_store, "open_db", small)
    events = tmp_path / "many.jsonl"
    line = {"type": "ping", "at": "2026-12-01T10:00:00+08:00", "data": {"text": "x" * 500}}
    events.write_text("".join(json.dumps({"id": f"e{i}", **line}) + "\n" for i in range(2000)), encoding="utf-8")
    code, _, err = run(capsys, "events", "import", str(events), "--state", str(state))
    assert code == 1
    assert err == (
        "error: the SQLite state failed: database or disk is full (SQLITE_FULL). "
        "What was saved before stays; fix that and run the command again.\n"
    )
    monkeypatch.undo()
    assert run(capsys, "events", "import", str(events), "--state", str(state))[0] == 0  # room again: all of them


def test_a_statement_error_of_cmtyflow_is_still_a_bug(tmp_path, monkeypatch, capsys):
    import sqlite3

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(paths):  # type: ignore[no-untyped-def]
        sqlite3.connect(":memory:").execute("SELECT nope FROM nowhere")

    monkeypatch.setattr(validate_module, "load", broken)
    code, _, err = run(capsys, "validate", "x.yaml")
    assert code == 3 and err.startswith("cmtyflow hit a bug")


@pytest.mark.parametrize(("exc", "told"), [
    (OSError(28, "No space left on device", "/var/lib/cmtyflow/out.jsonl"),
     "error: No space left on device (/var/lib/cmtyflow/out.jsonl). What was saved before stays; fix that and run the command again.\n"),
    (PermissionError(13, "Permission denied", "/srv/x"),
     "error: Permission denied (/srv/x). What was saved before stays; fix that and run the command again.\n"),
])
def test_the_machine_refusing_a_file_is_an_error_not_a_bug(exc, told, monkeypatch, capsys):
    def refuse(paths):  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(validate_module, "load", refuse)
    assert run(capsys, "validate", "x.yaml") == (1, "", told)


def test_a_lost_postgresql_server_is_an_error_not_a_bug(monkeypatch, capsys):
    psycopg = pytest.importorskip("psycopg")

    def gone(paths):  # type: ignore[no-untyped-def]
        raise psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably means ...")

    monkeypatch.setattr(validate_module, "load", gone)
    assert run(capsys, "validate", "x.yaml") == (1, "", (
        "error: the PostgreSQL state failed: server closed the connection unexpectedly. "
        "What was saved before stays; fix that and run the command again.\n"
    ))


@pytest.mark.parametrize("encoding", ["ascii", "gbk"])
def test_text_the_terminal_cannot_encode_is_replaced_not_a_crash(tmp_path, encoding):
    """A GBK console (Chinese Windows) or an ASCII pipe cannot show every character a
    message holds (✅ in the shipped templates): it is written as '?', exit 0."""
    import os

    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "cmtyflow: 1\nname: pb\ntimezone: Asia/Shanghai\nchannels: {dm: {adapter: console}}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\n"
        'flows:\n  f:\n    - {id: hi, send: {channel: dm, text: "✅ 打卡成功 {{ member.name }}"}}\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    done = subprocess.run([sys.executable, "-m", "cmtyflow", "preview", str(playbook), "hi", "--member", "u1"],
                          capture_output=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "hit a bug" not in done.stderr.decode(encoding, errors="replace")
    if encoding == "gbk":
        out = done.stdout.decode(encoding)
        assert "? 打卡成功" in out  # what the console can show is shown, the rest replaced


def test_python_dash_m_exits_with_the_commands_code(tmp_path):
    """`python -m cmtyflow` exited 0 whatever happened (its code was dropped), so a CI
    step written that way passed on a broken playbook."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("cmtyflow: 1\nname: x\nflows: []\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "cmtyflow", "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+psycopg://u:s3cretpw@db.example/community",
         "the state postgresql+psycopg://u:***@db.example/community is a postgresql+psycopg:// URL, which cmtyflow "
         "does not open: write postgresql://..."),
        ("sqlite:///tmp/e.db", "is a sqlite:// URL, which cmtyflow does not open: give an SQLite file as a path"),
    ],
)
def test_a_state_url_of_another_kind_is_refused_not_made_a_folder(url, said, tmp_path, monkeypatch, capsys):
    """It was taken for a relative SQLite path: `status` made folders named after the
    URL, reported an empty state and printed the password."""
    monkeypatch.chdir(tmp_path)
    for args in (("status", "--state", url), ("members", "list", "--state", url)):
        code, out, err = run(capsys, *args)
        assert code == 1 and said in err and "s3cretpw" not in out + err
    monkeypatch.setenv("CMTYFLOW_STATE", url)
    code, _, err = run(capsys, "outbox")
    assert code == 1 and said in err
    assert list(tmp_path.iterdir()) == []
