"""Cutting marked-up text into parts that are each well-formed on their own (SPEC 5.4's
platform limits; ``text.split_text`` with ``words=False`` and ``text.fit_parts``).

Rules:
- A cut is made at the last paragraph break outside any element in the second half of
  what fits, else at the last line break outside any element, else at the last line
  break inside one; the elements open there are closed at the end of the part and
  opened again (same tags, same attributes, same code-block language) at the start of
  the next. Never inside a tag, an entity or an escape sequence. The syntaxes:
  ``markdown`` (code fences, for Discord, Slack and the robots), ``html`` and
  ``markdown_v2`` (Telegram's). Lengths are counted on the marked-up text, the tags
  added at a cut included.
- A single line over the limit is cut inside it (``_inline_cut``: after a sentence,
  else at a space, else after a pause, else between characters not both ASCII), never
  inside markup, code, a URL, a number or a composed character; a line with no such
  place raises ``TextTooLong``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Literal, NamedTuple

from .base import PermanentDeliveryError


class TextTooLong(PermanentDeliveryError):
    pass


def fit_prefix(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """Length of the longest prefix of ``text`` whose measure is within ``limit``."""
    if measure is len:
        return min(limit, len(text))
    lo, hi = 0, min(len(text), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


Markup = Literal["markdown", "html", "markdown_v2"]


class _Element(NamedTuple):
    """An element open at a cut: ``closer`` ends it in one part, ``opener`` opens it
    again in the next. A closer of "" is a line's own (a quote line's ">")."""

    name: str
    opener: str
    closer: str


_Open = tuple[_Element, ...]
_FENCE = re.compile(r"```([\w+\-.#]*)\n")
_TAG = re.compile(r"<(/?)([A-Za-z][\w-]*)(?:\"[^\"]*\"|'[^']*'|[^'\">])*>")
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_MDV2_LINK = re.compile(r"!?\[(?:\\.|[^\\\]])*\]\((?:\\.|[^\\)])*\)", re.S)
_MDV2_LINK_END = re.compile(r"\]\((?:\\.|[^\\)])*\)", re.S)


def _without(stack: _Open, name: str) -> _Open:
    """``stack`` without its innermost element called ``name``."""
    for k in range(len(stack) - 1, -1, -1):
        if stack[k].name == name:
            return stack[:k] + stack[k + 1 :]
    return stack


def _open_fence(text: str, i: int) -> tuple[_Element, int]:
    """The code block opened by the ``` at ``i`` (reopened with its language), and
    where its content starts."""
    found = _FENCE.match(text, i)
    lang = found.group(1) if found else ""
    return _Element("```", f"```{lang}\n", "\n```"), found.end() if found else i + 3


def _fence_states(text: str) -> list[_Open | None]:
    """Code fences (```lang ... ```) of Discord, Slack and CommonMark markdown."""
    states: list[_Open | None] = [None] * (len(text) + 1)
    stack: _Open = ()
    states[0] = stack
    i = 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 2] not in ("", "\n"):
            i += 2
        elif text.startswith("```", i):
            if stack:
                stack = ()
                i += 3
            else:
                fence, i = _open_fence(text, i)
                stack = (fence,)
        else:
            i += 1
        states[i] = stack
    return states


def _html_states(text: str) -> list[_Open | None]:
    """Telegram HTML: tags (with their attributes) and entities are never cut."""
    states: list[_Open | None] = [None] * (len(text) + 1)
    stack: _Open = ()
    states[0] = stack
    i = 0
    while i < len(text):
        found = None
        if text[i] == "<":
            found = _TAG.match(text, i)
            if found:
                name = found.group(2).lower()
                if found.group(1):
                    stack = _without(stack, name)
                elif not found.group(0).endswith("/>"):
                    stack = (*stack, _Element(name, found.group(0), f"</{name}>"))
        elif text[i] == "&":
            found = _ENTITY.match(text, i)
        i = found.end() if found else i + 1
        states[i] = stack
    return states


def _markdown_v2_states(text: str) -> list[_Open | None]:
    """Telegram MarkdownV2: escapes, code and pre blocks, links, emphasis, spoilers,
    quote lines and expandable quotes (``**>`` ... ``||``)."""
    states: list[_Open | None] = [None] * (len(text) + 1)
    stack: _Open = ()
    states[0] = stack
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        top = stack[-1].name if stack else ""
        line_start = i == 0 or text[i - 1] == "\n"
        if ch == "\\" and i + 1 < n:
            i += 2
        elif top == "```":
            if text.startswith("```", i):
                stack = stack[:-1]
                i += 3
            else:
                i += 1
        elif top == "`":
            if ch == "`":
                stack = stack[:-1]
            i += 1
        elif text.startswith("```", i):
            fence, i = _open_fence(text, i)
            stack = (*stack, fence)
        elif ch == "`":
            stack = (*stack, _Element("`", "`", "`"))
            i += 1
        elif ch == "\n":
            stack = tuple(e for e in stack if e.closer)
            i += 1
        elif line_start and text.startswith("**>", i):
            stack = (*stack, _Element("**>", "**", "||"), _Element(">", ">", ""))
            i += 3
        elif line_start and ch == ">":
            stack = (*stack, _Element(">", ">", ""))
            i += 1
        elif ch in "[!" and (link := _MDV2_LINK.match(text, i)):
            url = _MDV2_LINK_END.search(link.group(0))
            assert url is not None
            opener = "![" if ch == "!" else "["
            stack = (*stack, _Element("[", opener, url.group(0)))
            i += len(opener)
        elif ch == "]" and top == "[" and (end := _MDV2_LINK_END.match(text, i)):
            stack = stack[:-1]
            i = end.end()
        elif (
            text.startswith("||", i)
            and text[i + 2 : i + 3] in ("", "\n")
            and any(e.name == "**>" for e in stack)
            and not any(e.name == "||" for e in stack)
        ):
            stack = _without(stack, "**>")
            i += 2
        else:
            mark = next((m for m in ("__", "||", "*", "_", "~") if text.startswith(m, i)), "")
            if mark:
                if any(e.name == mark for e in stack):
                    stack = _without(stack, mark)
                else:
                    stack = (*stack, _Element(mark, mark, mark))
            i += len(mark) or 1
        states[i] = stack
    return states


_STATES: dict[str, Callable[[str], list[_Open | None]]] = {
    "markdown": _fence_states,
    "html": _html_states,
    "markdown_v2": _markdown_v2_states,
}


def _opening(stack: _Open) -> str:
    return "".join(e.opener for e in stack)


def _closing(stack: _Open) -> str:
    return "".join(e.closer for e in reversed(stack))


def split_markup(
    text: str, limit: int, measure: Callable[[str], int], syntax: Markup
) -> list[str]:
    """Well-formed parts of marked-up ``text`` (the rules at the top of this module)."""
    states = _STATES[syntax](text)
    end = len(text)
    parts: list[str] = []
    s = 0
    while True:
        here = states[s]
        assert here is not None
        head = _opening(here)
        whole = head + text[s:]
        if measure(whole) <= limit:
            parts.append(whole)
            return parts
        fits = fit_prefix(head + text[s:], limit, measure) - len(head)
        paragraph = line = inside = -1
        at = text.rfind("\n", s + 1, s + fits + 1) if fits > 0 else -1
        while at > s and paragraph < 0:
            stack = states[at]
            if stack is not None and states[at + 1] is not None:
                if any(e.closer for e in stack):
                    if inside < 0 and measure(head + text[s:at] + _closing(stack)) <= limit:
                        inside = at
                else:
                    while at - 1 > s and text[at - 1] == "\n" and states[at - 1] is not None:
                        at -= 1
                    if line < 0:
                        line = at
                    if text[at + 1 : at + 2] == "\n" and at - s >= fits // 2:
                        paragraph = at
            at = text.rfind("\n", s + 1, at)
        cut = next((c for c in (paragraph, line, inside) if c > s), -1)
        if cut < 0:  # no line break to cut at: within the line, between sentences or words
            cut = _inline_cut(text, s, s + fits, states, syntax, functools.partial(_part_fits, text, s, head, states, measure, limit))
            if cut > s:
                stack = states[cut]
                assert stack is not None
                parts.append(head + text[s:cut].rstrip(" ") + _closing(stack))
                s = cut
                while s < end and text[s] == " " and states[s + 1] is not None:
                    s += 1
                continue
            eol = text.find("\n", s)
            while eol >= 0 and states[eol] is None:  # a line break inside a tag
                eol = text.find("\n", eol + 1)
            eol = end if eol < 0 else eol
            line_size = measure(head + text[s:eol] + _closing(states[eol] or ()))
            raise TextTooLong(
                f"a line of {line_size} (limit {limit}) cannot be split without "
                "breaking its markup; shorten it or send it as plain text"
            )
        stack = states[cut]
        assert stack is not None
        parts.append(head + text[s:cut] + _closing(stack))
        s = cut + 1
        if not any(e.closer for e in stack):
            while s < end and text[s] == "\n":
                s += 1


# Where a line of marked-up text may be cut, best first: after the end of a sentence,
# after a pause (a comma, a closing bracket, a space), else between two characters that
# are not both part of an ASCII word (between two Chinese characters, say).
_SENTENCE_ENDS = frozenset("。！？!?；;…")
_PAUSES = frozenset("，、,：:）)」』】》 \t")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")  # never cut beside these (emoji sequences)
# Code, where a cut would put a line break into it: never cut inside these elements.
_CODE = frozenset({"pre", "code", "```", "`"})


def _splits_a_character(text: str, c: int) -> bool:
    """Whether a cut before ``text[c]`` parts what shows as one character: a mark that
    combines with the one before it, a skin tone, a joiner or variation selector, or the
    second half of a flag (two regional indicators)."""
    ch, before = text[c], text[c - 1]
    if ch in _JOINERS or before in _JOINERS or unicodedata.combining(ch) or unicodedata.category(ch) == "Me":
        return True
    if "\U0001f3fb" <= ch <= "\U0001f3ff":  # a skin tone modifies the emoji before it
        return True
    if "\U0001f1e6" <= ch <= "\U0001f1ff":
        k = c
        while k > 0 and "\U0001f1e6" <= text[k - 1] <= "\U0001f1ff":
            k -= 1
        return (c - k) % 2 == 1  # an odd number of indicators before it: inside a flag
    return False


def _ends_here(text: str, c: int, marks: frozenset[str]) -> bool:
    """Whether the cut before ``text[c]`` follows one of ``marks``: a full-width one
    always; an ASCII one only before a space or a character that is not ASCII (after
    "?" in a URL's query, ":" in https://, "," in 1,000 is not a place to cut)."""
    before = text[c - 1]
    if before not in marks:
        return False
    return not before.isascii() or before in " \t" or text[c] == " " or not text[c].isascii()


def _part_fits(
    text: str, s: int, head: str, states: list[_Open | None], measure: Callable[[str], int], limit: int, c: int
) -> bool:
    """Whether the part from ``s`` cut at ``c`` (its elements opened by ``head`` and
    closed after it) is within ``limit``."""
    return measure(head + text[s:c].rstrip(" ") + _closing(states[c] or ())) <= limit


def _inline_balanced(text: str, start: int, stop: int) -> list[bool]:
    """For each position from ``start`` (where nothing inline is open: a line's start,
    or a cut) to ``stop``: whether the line so far leaves no inline markdown open there (emphasis ``* _ ~ |``, a code span, a
    link's text or address, an HTML-like tag such as WeCom's <font>, a <...> of
    Slack's). The fence states of ``markdown`` do not see these, so a cut is made only
    where none is open. Positions inside an escape or a tag are never balanced."""
    out = [False] * (stop - start + 1)
    out[0] = True
    marks = {"*": 0, "_": 0, "~": 0, "|": 0, "**": 0, "__": 0, "~~": 0, "||": 0}
    code = False
    brackets = parens = angles = tags = 0
    i = start
    while i < stop:
        ch = text[i]
        step = 1
        if ch == "\n":
            marks = dict.fromkeys(marks, 0)
            code, brackets, parens, angles, tags = False, 0, 0, 0, 0
        elif ch == "\\" and not code:
            step = 2
        elif ch == "`":
            code = not code
        elif not code:
            if ch in marks:
                mark = ch * 2 if text.startswith(ch * 2, i) else ch  # ** opens bold, not two *
                marks[mark] += 1
                step = len(mark)
            elif ch == "[":
                brackets += 1
            elif ch == "]" and brackets:
                brackets -= 1
                if text.startswith("(", i + 1):
                    parens += 1
                    step = 2
            elif ch == ")" and parens:
                parens -= 1
            elif ch == "<":
                tag = _TAG.match(text, i)
                if tag is None:
                    angles += 1
                else:
                    step = tag.end() - i
                    if tag.group(1):
                        tags = max(0, tags - 1)
                    elif not tag.group(0).endswith("/>"):
                        tags += 1
            elif ch == ">" and angles:
                angles -= 1
        i += step
        if i <= stop:
            out[i - start] = not (code or brackets or parens or angles or tags) and not any(n % 2 for n in marks.values())
    return out


def _inline_cut(
    text: str, s: int, hi: int, states: list[_Open | None], syntax: Markup, fits: Callable[[int], bool]
) -> int:
    """Where to cut a line of marked-up text that runs past ``hi`` (the most of it,
    from ``s``, that fits), or -1; ``fits(c)``: the part up to ``c``, with what closes
    it, is within the limit. Never inside a tag, an entity, an escape or a code block;
    for ``markdown`` never inside inline markup either (``_inline_balanced``); for
    ``html`` and ``markdown_v2``, whose states see inline elements, those open at the
    cut are closed and opened again, as at a line break."""
    # From ``s``: a line's start, or an earlier cut, made where nothing inline was open.
    line = s
    balanced = _inline_balanced(text, line, hi) if syntax == "markdown" else None

    def allowed(c: int) -> bool:
        stack = states[c]
        if stack is None or _splits_a_character(text, c) or any(e.name in _CODE for e in stack):
            return False
        if balanced is not None and (not balanced[c - line] or any(e.closer for e in stack)):
            return False
        return fits(c)

    def in_word(c: int) -> bool:  # between two ASCII characters that are not spaces: a word, a URL, a number
        return all(ch.isascii() and not ch.isspace() for ch in (text[c - 1], text[c]))

    preferences: tuple[Callable[[int], bool], ...] = (
        lambda c: _ends_here(text, c, _SENTENCE_ENDS),
        lambda c: text[c] == " " or text[c - 1] in " \t",
        lambda c: _ends_here(text, c, _PAUSES),
        lambda c: not in_word(c),
    )
    for wanted in preferences:
        for c in range(min(hi, len(text) - 1), s, -1):
            if wanted(c) and allowed(c):
                return c
    return -1
