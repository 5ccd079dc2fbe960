"""Problems found while loading and checking playbooks, and how they are printed.

STYLE: ``path:line:col: error: message``, then the source line with a caret under the
column. Lines and columns are 1-based characters; the caret accounts for tabs and for
wide (CJK) characters so it sits under the right character in a terminal.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"

# Source lines longer than this are shown as a window around the column.
_MAX_SHOWN = 160


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    col: int
    severity: str  # "error" | "warning"
    message: str
    source_line: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


def _caret_prefix(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\t":
            out.append("\t")
        elif unicodedata.east_asian_width(ch) in ("W", "F"):
            out.append("  ")
        else:
            out.append(" ")
    return "".join(out)


def _shown(line: str, col: int) -> tuple[str, int]:
    """The part of ``line`` to print and the 0-based caret offset inside it."""
    line = line.rstrip("\r\n")
    index = max(col - 1, 0)
    if len(line) <= _MAX_SHOWN:
        return line, min(index, len(line))
    start = max(0, index - _MAX_SHOWN // 2)
    end = start + _MAX_SHOWN
    shown = line[start:end]
    prefix = "..." if start else ""
    suffix = "..." if end < len(line) else ""
    return prefix + shown + suffix, len(prefix) + min(index - start, len(shown))


def format_problem(problem: Problem) -> str:
    head = f"{problem.path}:{problem.line}:{problem.col}: {problem.severity}: {problem.message}"
    if problem.source_line is None:
        return head
    shown, offset = _shown(problem.source_line, problem.col)
    return f"{head}\n    {shown}\n    {_caret_prefix(shown[:offset])}^"


def format_text(problems: Iterable[Problem]) -> str:
    """Every problem as ``path:line:col: severity: message`` with its source line."""
    return "\n".join(format_problem(p) for p in problems)


def plural(count: int, word: str) -> str:
    """``1 event``, ``2 events``: a count with its word."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary(files: int, problems: Iterable[Problem]) -> str:
    problems = list(problems)
    errors = sum(1 for p in problems if p.is_error)
    warnings = len(problems) - errors
    return f"{plural(files, 'file')}, {plural(errors, 'error')}, {plural(warnings, 'warning')}"


def format_json(problems: Iterable[Problem], files: int | None = None) -> str:
    """``{"files", "errors", "warnings", "problems": [{path, line, col, severity, message}]}``;
    ``files`` defaults to the number of distinct paths among the problems."""
    problems = list(problems)
    errors = sum(1 for p in problems if p.is_error)
    doc = {
        "files": files if files is not None else len({p.path for p in problems}),
        "errors": errors,
        "warnings": len(problems) - errors,
        "problems": [
            {
                "path": p.path,
                "line": p.line,
                "col": p.col,
                "severity": p.severity,
                "message": p.message,
            }
            for p in problems
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2)
