"""Text in aligned columns on a terminal, where CJK characters take two columns."""

from __future__ import annotations

import unicodedata


def text_width(text: str) -> int:
    """Terminal columns: CJK (wide and full-width) characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    """``text`` with spaces after it up to ``width`` terminal columns."""
    return text + " " * (width - text_width(text))
