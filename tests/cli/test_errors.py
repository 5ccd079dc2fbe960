"""The one top-level error handler: exit codes 0/1/2/3/130 (STYLE, after pre-commit)."""

from __future__ import annotations

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


def test_a_missing_file_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert run(capsys, "validate", str(missing)) == (
        1,
        "",
        f"error: {missing}: no such file or folder\n",
    )


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
