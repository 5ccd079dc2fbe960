"""The code checks the test dependencies bring: ruff over the repository's Python and
mypy over the package (its settings in pyproject.toml; strict for the engine, the
spec and the expressions). Each is a test so that the one test command keeps them
clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "cmtyflow", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    done = _run("mypy", "--cache-dir", str(tmp_path / "mypy"), "cmtyflow")
    assert done.returncode == 0, done.stdout + done.stderr
