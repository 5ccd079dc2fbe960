"""STYLE: nothing in engine/, spec/ or expr.py does I/O or reads the wall clock."""

import ast
from pathlib import Path

import cmtyflow

PKG = Path(cmtyflow.__file__).parent
FORBIDDEN_MODULES = {"sqlite3", "httpx", "aiohttp", "requests", "click", "psycopg", "procrastinate", "socket", "subprocess", "asyncio"}
FORBIDDEN_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("time", "time"), ("time", "monotonic"), ("date", "today")}


def _pure_files():
    yield from sorted((PKG / "engine").glob("*.py"))
    yield from sorted((PKG / "spec").glob("*.py"))
    yield PKG / "expr.py"


def test_core_imports_no_io_and_reads_no_clock():
    offenders = []
    for path in _pure_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]] if node.level == 0 else []
            else:
                names = []
            offenders += [f"{path.name}: import {n}" for n in names if n in FORBIDDEN_MODULES]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in FORBIDDEN_CALLS:
                    offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
                if node.value.id == "os" and node.attr == "environ":
                    offenders.append(f"{path.name}:{node.lineno}: os.environ")
    assert offenders == []


def test_engine_does_not_import_runtime_or_store():
    for path in sorted((PKG / "engine").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "from ..store" not in text and "from ..runtime" not in text and "from ..cli" not in text, path.name
