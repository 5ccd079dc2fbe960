"""Where each value of a playbook came from: data path -> file, line and column.

Rules:
- A data path (``loc``) is a tuple of mapping keys and list indexes, as in
  ``("flows", "onboard", 2, "send", "text")``. Positions are 1-based.
- ``locate`` gives the position of the value at ``loc``, ``key_locate`` the position of
  the key that holds it. A path that was never recorded (pydantic reports some errors
  below the data the author wrote) falls back to its longest recorded prefix.
- Values merged from a folder's ``cmtyflow.yaml`` keep pointing into that file
  (SPEC 1), so each position carries its ``Origin``.
- A position inside a string (an expression or template line) depends on how the
  scalar was written: block scalars (``|``, ``>``) start on the line after the
  indicator, other scalars are reported at the value itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Loc = tuple[str | int, ...]

# The line breaks YAML counts (libyaml's marks count the same ones).
_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")


def split_lines(text: str) -> tuple[str, ...]:
    return tuple(_BREAKS.split(text))


@dataclass(frozen=True, eq=False)
class Origin:
    """A source file: the path as the user gave it and its lines."""

    path: str
    lines: tuple[str, ...]

    def line(self, number: int) -> str | None:
        if 1 <= number <= len(self.lines):
            return self.lines[number - 1]
        return None


@dataclass(frozen=True, slots=True)
class Mark:
    line: int
    col: int
    origin: Origin
    style: str = ""  # for string scalars: "|", ">", '"', "'" or "" (plain)

    @property
    def path(self) -> str:
        return self.origin.path

    @property
    def source_line(self) -> str | None:
        return self.origin.line(self.line)


def first_non_blank(line: str | None) -> int:
    if not line:
        return 1
    stripped = line.lstrip(" \t")
    return len(line) - len(stripped) + 1 if stripped else 1


class SourceMap:
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self._values: dict[Loc, Mark] = {}
        self._keys: dict[Loc, Mark] = {}

    def set_value(self, loc: Loc, mark: Mark) -> None:
        self._values[loc] = mark

    def set_key(self, loc: Loc, mark: Mark) -> None:
        self._keys[loc] = mark

    def has(self, loc: Loc) -> bool:
        return loc in self._values

    def mark(self, loc: Loc) -> Mark:
        """The value at ``loc``, or at its longest recorded prefix."""
        loc = tuple(loc)
        while loc and loc not in self._values:
            loc = loc[:-1]
        return self._values.get(loc) or Mark(1, 1, self.origin)

    def key_mark(self, loc: Loc) -> Mark:
        """The key holding the value at ``loc``; the value itself when it has no key
        (a list item, the document)."""
        loc = tuple(loc)
        if loc in self._keys:
            return self._keys[loc]
        return self.mark(loc)

    def locate(self, loc: Loc) -> tuple[int, int]:
        m = self.mark(loc)
        return m.line, m.col

    def key_locate(self, loc: Loc) -> tuple[int, int]:
        m = self.key_mark(loc)
        return m.line, m.col

    def graft(self, loc: Loc, other: SourceMap, other_loc: Loc | None = None) -> None:
        """Record every position of ``other`` under ``other_loc`` as under ``loc``."""
        src = tuple(other_loc if other_loc is not None else loc)
        n = len(src)
        for table, mine in ((other._values, self._values), (other._keys, self._keys)):
            for key, mark in table.items():
                if key[:n] == src:
                    mine[tuple(loc) + key[n:]] = mark

    def text_mark(self, loc: Loc, lineno: int, value: str | None = None) -> Mark:
        """Position of line ``lineno`` (1-based) of the string value at ``loc``; the
        column is that line's first non-blank character (SPEC 2: template errors at
        the YAML line that holds them)."""
        m = self.mark(loc)
        if m.style == "|":
            line = m.line + max(lineno, 1)
        elif m.style == ">":
            line = _folded_line(m, lineno, value)
        else:
            return m
        return Mark(line, first_non_blank(m.origin.line(line)), m.origin, m.style)


def _folded_line(m: Mark, lineno: int, value: str | None) -> int:
    """Folding joins source lines, so value line k sits at or after source line k of the
    block; the first such line that starts with the value line's text is it."""
    first = m.line + 1
    guess = first + max(lineno, 1) - 1
    if value is None:
        return guess
    parts = value.split("\n")
    target = parts[lineno - 1].strip()[:40] if 0 < lineno <= len(parts) else ""
    if not target:
        return guess
    for number in range(guess, len(m.origin.lines) + 1):
        text = m.origin.line(number) or ""
        if text.strip().startswith(target):
            return number
    return guess
