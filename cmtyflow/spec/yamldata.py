"""YAML text -> plain Python data plus a source map, safely (SPEC 1).

Rules:
- libyaml (ruamel.yaml.clib) parses and composes; this module builds the data from
  the composed nodes itself, so no YAML constructor ever runs: only the standard tags
  (str, int, float, bool, null, map, seq, timestamp, merge) become values, any other
  tag is refused at its position and nothing is constructed for it.
- A timestamp is handed over as the text the author wrote; the models parse dates.
- Limits: nesting deeper than ``MAX_DEPTH`` is refused from the event stream before
  composing (libyaml's composer recurses and would crash on very deep input); aliases
  are expanded while counting nodes, refused past ``MAX_NODES`` (the billion-laughs
  file fails at once instead of after the expansion).
- Duplicate keys are errors at the second key; ``<<`` merge keys are supported and
  never count as duplicates (explicit keys win, earlier merges win over later ones).
- Mapping keys are text: a scalar key such as ``2024`` is kept as the text written.
- A plain (unquoted) text value followed on its line by `` #`` and a non-blank lost the
  rest of the line to a YAML comment (``text: 话题 #读书 欢迎``); each is recorded in
  ``ParsedYaml.comment_cuts`` for the caller to warn about where it matters.
- ``{{`` at the start of a value is YAML's flow mapping, not a template: refused with a
  hint to quote the value (as a syntax error, when the parser stops on it).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .sourcemap import Loc, Mark, Origin, SourceMap, split_lines

MAX_DEPTH = 64
MAX_NODES = 100_000
IDEOGRAPHIC_SPACE = "\u3000"  # the full-width space of Chinese and Japanese input methods
FULL_WIDTH_COLON = "\uff1a"

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _TIMESTAMP, _MERGE = (_TAG + t for t in ("map", "seq", "timestamp", "merge"))


@dataclass(frozen=True)
class YamlProblem:
    line: int
    col: int
    message: str


@dataclass(frozen=True)
class CommentCut:
    """A plain text value at ``loc`` whose line goes on with `` #`` and a non-blank: YAML
    read the rest of the line as a comment (``text: 话题 #读书``)."""

    loc: Loc
    line: int  # of the '#'
    col: int
    value: str  # what YAML kept


@dataclass
class ParsedYaml:
    data: Any  # None for an empty document
    source_map: SourceMap
    problems: list[YamlProblem] = field(default_factory=list)
    usable: bool = True  # False: the data must not be validated further
    comment_cuts: list[CommentCut] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.problem = YamlProblem(line, col, message)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _tag_message(tag: str) -> str:
    return f"tag '{_short_tag(tag)}' is not allowed in a playbook; it holds plain data only"


def _full_width_colon(origin: Origin, lines: list[int]) -> tuple[int, int, str] | None:
    """For a syntax error near a key written with a full-width colon (U+FF1A, what a
    Chinese input method types): (line, column, hint) of that colon, on the first line
    of ``lines`` (1-based) whose first colon is one. The problem is put there: the
    parser notices only on a later line."""
    for number in lines:
        if 1 <= number <= len(origin.lines):
            text = origin.lines[number - 1]
            wide, narrow = text.find(FULL_WIDTH_COLON), text.find(":")
            if wide >= 0 and (narrow < 0 or wide < narrow):
                hint = f"; this line has a full-width colon '{FULL_WIDTH_COLON}': a key needs ':' and a space, as in 'name: value'"
                return number, wide + 1, hint
    return None


_UNQUOTED_TIME = re.compile(r"[\w.+-]*\d:\d[\w:.+-]*")


def _time_in_braces(origin: Origin, line: int, col: int, problem: str | None) -> str:
    """A hint for ``{until: 09:00}`` or ``{at: 2026-12-01T09:00}``: inside braces YAML
    takes the time's ':' for a key's (outside them it reads it as text)."""
    if problem != "found unexpected ':'" or not 1 <= line <= len(origin.lines):
        return ""
    text = origin.lines[line - 1]
    for found in _UNQUOTED_TIME.finditer(text):
        if found.start() < col <= found.end():
            value = found.group(0)
            return f"; inside {{ }} a time needs quotes: write \"{value}\" (YAML reads its ':' as a key's)"
    return ""


# Characters YAML reads as line breaks where editors show none (text copied from a web
# page or a word processor): a syntax error they cause points a line off.
_ODD_BREAKS = {"\u2028": "U+2028 (LINE SEPARATOR)", "\u2029": "U+2029 (PARAGRAPH SEPARATOR)", "\x85": "U+0085 (NEXT LINE)"}


def _odd_break(text: str) -> tuple[int, int, str] | None:
    """(line, column, hint) of the first such character, as an editor counts them."""
    found = [(i, name) for ch, name in _ODD_BREAKS.items() if (i := text.find(ch)) >= 0]
    if not found:
        return None
    at, name = min(found)
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return line, col, f"; the file holds {name} here, which YAML reads as a line break (copied from a web page?): delete it"


_BRACES_VALUE = re.compile(r"(?:^|[\s,{\[])(?:([^\s:,{}\[\]#][^:,{}\[\]]*?):\s+|-\s+)(\{\{.*)$")


def _quoted(value: str) -> str:
    value = value.strip()
    # Inside braces or brackets (``{text: {{ x }} hi}``) the line goes on with their end.
    for opening, closing in ("{}", "[]"):
        while value.endswith(closing) and value.count(closing) > value.count(opening):
            value = value[:-1].rstrip()
    return f"'{value}'" if '"' in value else f'"{value}"'


def _braces_hint(origin: Origin, lines: list[int]) -> tuple[int, int, str] | None:
    """For a syntax error on a line whose value starts with ``{{`` (a template written
    without quotes): (line, column of the first '{', hint). YAML reads '{' as the start
    of a mapping, so the parser stops somewhere after it."""
    for number in lines:
        text = origin.line(number)
        if text is None:
            continue
        found = _BRACES_VALUE.search(text)
        if found is None:
            continue
        key, value = found.group(1), found.group(2).rstrip()
        example = f"{key.strip()}: {_quoted(value)}" if key else f"- {_quoted(value)}"
        return number, found.start(2) + 1, f"; {_BRACES_HINT}, as in {example}"
    return None


_HASH = re.compile(r"[ \t]#")


def _comment_in_braces(origin: Origin, first: int, last: int) -> tuple[int, int, str] | None:
    """For a syntax error inside { } or [ ]: (line, column, hint) of a ' #' outside
    quotes on the lines from the opening bracket to the error, as in ``{text: 话题
    #读书}``. YAML reads it as a comment, which takes the closing bracket with it."""
    for number in range(first, last + 1):
        text = origin.line(number) or ""
        for found in _HASH.finditer(text):
            before, after = text[: found.start()], text[found.end() :]
            hides = "}" in after or "]" in after  # else an ordinary comment of a long { }
            if hides and before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
                return number, found.start() + 2, (
                    "; the ' #' here starts a YAML comment, which hides the rest of the line, "
                    "the closing bracket too: quote the value that holds it"
                )
    return None


_EXPRESSION_KEYS = ("if", "where", "while")  # keys whose value is an expression, not a template
_BRACES_HINT = "a value starting with '{' must be quoted (YAML reads '{' as the start of a mapping)"


def _control_character(exc: YAMLError, origin: Origin, text: str) -> YamlProblem | None:
    """libyaml reports a character it refuses (a control character) at its offset in
    the UTF-8 bytes; the problem is put at its line and column in characters, and the
    character is named (it is invisible in most editors)."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int) or not text:
        return None
    encoded = text.encode("utf-8")
    before = encoded[:position].decode("utf-8", errors="ignore")
    lines = split_lines(before)
    line, col = len(lines), len(lines[-1]) + 1
    reason = getattr(exc, "reason", None) or str(exc)
    code = getattr(exc, "character", None)
    if isinstance(code, int) and len(before) < len(text) and ord(text[len(before)]) == code:
        name = unicodedata.name(chr(code), "") or _CONTROL_NAMES.get(code, "")
        shown = f"U+{code:04X}" + (f" ({name})" if name else "")
        return YamlProblem(
            line, col, f"YAML syntax error: {reason}: this line holds {shown}, an invisible character "
            "(copied from another program?); delete it"
        )
    return YamlProblem(line, col, f"YAML syntax error: {reason}")


# unicodedata has no names for the C0 and C1 controls.
_CONTROL_NAMES = {
    0x07: "BELL", 0x08: "BACKSPACE", 0x0B: "LINE TABULATION", 0x0C: "FORM FEED",
    0x1B: "ESCAPE", 0x7F: "DELETE",
}


def _syntax_problem(exc: YAMLError, origin: Origin, text: str = "") -> YamlProblem:
    odd = _odd_break(text) if isinstance(exc, MarkedYAMLError) else None
    if odd is not None:
        problem = exc.problem or exc.context or "invalid YAML"  # type: ignore[attr-defined]
        return YamlProblem(odd[0], odd[1], f"YAML syntax error: {problem}{odd[2]}")
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        message = f"YAML syntax error: {problem}"
        ctx = exc.context_mark
        if exc.context and ctx is not None and exc.problem and ctx.line + 1 != line:
            message += f" ({exc.context} at line {ctx.line + 1})"
        near = sorted({line, line - 1} | ({ctx.line + 1} if ctx is not None else set()))
        colon = _full_width_colon(origin, near)
        if colon is not None:
            return YamlProblem(colon[0], colon[1], message + colon[2])
        if ctx is not None and str(exc.context).startswith("while parsing a flow"):
            hashed = _comment_in_braces(origin, ctx.line + 1, line)
            if hashed is not None:
                return YamlProblem(hashed[0], hashed[1], message + hashed[2])
        braces = _braces_hint(origin, sorted({line} | ({ctx.line + 1} if ctx is not None else set())))
        if braces is not None:
            return YamlProblem(braces[0], braces[1], message + braces[2])
        return YamlProblem(line, max(col, 1), message + _time_in_braces(origin, line, col, exc.problem))
    found = _control_character(exc, origin, text)  # a ReaderError: libyaml's reader refused a character
    if found is not None:
        return found
    return YamlProblem(1, 1, f"YAML syntax error: {exc}")


def _check_depth(text: str) -> None:
    depth = 0
    for event in YAML(typ="safe").parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                m = event.start_mark
                raise _Refused(m.line + 1, m.column + 1, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def parse_yaml(text: str, origin: Origin) -> ParsedYaml:
    smap = SourceMap(origin)
    try:
        _check_depth(text)
        root = YAML(typ="safe").compose(text)
    except _Refused as exc:
        return ParsedYaml(None, smap, [exc.problem], usable=False)
    except YAMLError as exc:
        return ParsedYaml(None, smap, [_syntax_problem(exc, origin, text)], usable=False)
    if root is None:
        return ParsedYaml(None, smap)
    builder = _Builder(origin, smap)
    try:
        _expanded_size(root, {}, set(), 1)
        data = builder.build(root, (), 1)
    except _Refused as exc:
        return ParsedYaml(None, smap, [*builder.problems, exc.problem], usable=False)
    return ParsedYaml(data, smap, builder.problems, usable=not builder.refused, comment_cuts=builder.cuts)


def _expanded_size(node: Node, memo: dict[int, int], active: set[int], depth: int) -> int:
    """Values ``node`` turns into once its aliases are expanded, counted over the
    distinct nodes only, so a billion-laughs file is refused before any expansion."""
    key = id(node)
    if key in memo:
        return memo[key]
    m = node.start_mark
    if depth > MAX_DEPTH:
        raise _Refused(m.line + 1, m.column + 1, f"nested deeper than {MAX_DEPTH} levels")
    if key in active:
        raise _Refused(m.line + 1, m.column + 1, "an alias refers to a value that contains it")
    size = 1
    if isinstance(node, (SequenceNode, MappingNode)):
        active.add(key)
        children = (
            node.value
            if isinstance(node, SequenceNode)
            else [v for pair in node.value for v in pair]
        )
        for child in children:
            size += _expanded_size(child, memo, active, depth + 1)
            if size > MAX_NODES:
                # Reported at the innermost value whose expansion is over the limit.
                raise _Refused(
                    m.line + 1,
                    m.column + 1,
                    f"the file holds more than {MAX_NODES:,} values, counting what each alias repeats; refused (split it into several playbooks)",
                )
        active.discard(key)
    memo[key] = size
    return size


class _Builder:
    def __init__(self, origin: Origin, smap: SourceMap) -> None:
        self.origin = origin
        self.smap = smap
        self.count = 0
        self.active: set[int] = set()
        self.problems: list[YamlProblem] = []
        self.refused = False  # a refused tag: report every one, validate nothing
        self.cuts: list[CommentCut] = []

    def _mark(self, node: Node) -> Mark:
        style = getattr(node, "style", None) or ""
        return Mark(node.start_mark.line + 1, node.start_mark.column + 1, self.origin, style)

    def _refuse_soft(self, node: Node, message: str) -> None:
        m = self._mark(node)
        self.problems.append(YamlProblem(m.line, m.col, message))
        self.refused = True

    def build(self, node: Node, loc: Loc, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            m = self._mark(node)
            raise _Refused(
                m.line,
                m.col,
                f"the file holds more than {MAX_NODES:,} values, counting what each alias repeats; refused (split it into several playbooks)",
            )
        if depth > MAX_DEPTH:
            m = self._mark(node)
            raise _Refused(m.line, m.col, f"nested deeper than {MAX_DEPTH} levels")
        if id(node) in self.active:
            m = self._mark(node)
            raise _Refused(m.line, m.col, "an alias refers to a value that contains it")
        self.smap.set_value(loc, self._mark(node))
        if isinstance(node, ScalarNode):
            self._comment_cut(node, loc)
            return self._scalar(node)
        if isinstance(node, MappingNode) and self._braces(node, loc):
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    self._refuse_soft(node, _tag_message(str(node.tag)))
                    return None
                return [self.build(item, (*loc, i), depth + 1) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP:
                    self._refuse_soft(node, _tag_message(str(node.tag)))
                    return None
                return self._mapping(node, loc, depth)
        finally:
            self.active.discard(id(node))
        self._refuse_soft(node, "unsupported YAML node")
        return None

    def _comment_cut(self, node: ScalarNode, loc: Loc) -> None:
        if node.style not in (None, "") or node.tag != _STR or not node.value:
            return
        end = node.end_mark
        rest = (self.origin.line(end.line + 1) or "")[end.column :]
        if rest.startswith(" #") and len(rest) > 2 and rest[2] not in " \t":
            self.cuts.append(CommentCut(loc, end.line + 1, end.column + 2, str(node.value)))

    def _braces(self, node: MappingNode, loc: Loc) -> bool:
        """``text: {{ member.name }}``: a template without quotes, which YAML reads as a
        mapping inside a mapping. Refused at the first '{' with the quoted value."""
        start, end = node.start_mark, node.end_mark
        text = self.origin.line(start.line + 1) or ""
        if not text[start.column :].startswith("{{"):
            return False
        value = text[start.column : end.column] if end.line == start.line else text[start.column :]
        key = loc[-1] if loc and isinstance(loc[-1], str) else None
        inner = value.strip()
        if key in _EXPRESSION_KEYS and inner.startswith("{{") and inner.endswith("}}"):
            self._refuse_soft(
                node, f"an expression is written without {{{{ }}}}: write {key}: {inner[2:-2].strip()}"
            )
            return True
        example = f"{key}: {_quoted(value)}" if key is not None else f"- {_quoted(value)}"
        self._refuse_soft(node, f"{_BRACES_HINT}: write {example}")
        return True

    def _scalar(self, node: ScalarNode) -> Any:
        tag, text = node.tag, node.value
        if tag in (_STR, _TIMESTAMP):
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if text.lower() not in ("true", "false"):
                self._refuse_soft(node, f"'{text}' is not true or false")
            return text.lower() == "true"
        if tag == _INT:
            value = _to_int(text)
            if value is None:
                self._refuse_soft(node, f"'{text}' is not a valid integer")
            return value
        if tag == _FLOAT:
            number = _to_float(text)
            if number is None:
                self._refuse_soft(node, f"'{text}' is not a valid number")
            return number
        if tag == _TAG + "binary":
            self._refuse_soft(node, "binary values (!!binary) are not allowed in a playbook")
            return None
        self._refuse_soft(node, _tag_message(str(tag)))
        return None

    def _key(self, node: Node) -> str | None:
        if not isinstance(node, ScalarNode):
            self._refuse_soft(node, "a mapping key must be plain text, not a list or mapping")
            return None
        if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP):
            self._scalar(node)  # reports the refused tag
            return None
        key = str(node.value)
        if key.startswith(IDEOGRAPHIC_SPACE) and node.style in (None, ""):
            # Indentation typed with a Chinese input method: YAML reads it as part of
            # the key, so the key lands one level too high ("unknown key '　hello'").
            self._refuse_soft(
                node, f"'{key}' starts with a full-width space (U+3000); indent with ordinary spaces"
            )
            return None
        return key

    def _mapping(self, node: MappingNode, loc: Loc, depth: int) -> dict[str, Any]:
        merges: list[Node] = []
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key = self._key(key_node)
            if key is None:
                continue
            if key in pairs:
                m = self._mark(key_node)
                first = self._mark(pairs[key][0])
                self.problems.append(
                    YamlProblem(
                        m.line, m.col, f"duplicate key '{key}' (first at line {first.line})"
                    )
                )
                continue
            pairs[key] = (key_node, value_node)
        result: dict[str, Any] = {}
        if merges:
            # Merged first, so that the positions of explicit keys overwrite theirs.
            result = self._merged(merges, loc, depth)
            self.smap.set_value(loc, self._mark(node))
        for key, (key_node, value_node) in pairs.items():
            self.smap.set_key((*loc, key), self._mark(key_node))
            result[key] = self.build(value_node, (*loc, key), depth + 1)
        return result

    def _merged(self, merges: list[Node], loc: Loc, depth: int) -> dict[str, Any]:
        sources: list[Node] = []
        for value in merges:
            if isinstance(value, SequenceNode) and value.tag == _SEQ:
                sources.extend(value.value)
            else:
                sources.append(value)
        result: dict[str, Any] = {}
        # Earlier sources win: build later ones first so earlier positions overwrite.
        for source in reversed(sources):
            if not isinstance(source, MappingNode):
                self._refuse_soft(source, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            built = self.build(source, loc, depth)
            if isinstance(built, dict):
                result.update(built)
        return result


def _to_int(text: str) -> int | None:
    s = text.replace("_", "")
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    try:
        if s[:2].lower() in ("0x", "0o", "0b"):
            return sign * int(s, 0)
        if ":" in s:
            value = 0
            for part in s.split(":"):
                value = value * 60 + int(part)
            return sign * value
        return sign * int(s, 10)
    except ValueError:
        return None


def _to_float(text: str) -> float | None:
    s = text.replace("_", "").lower()
    if s in (".inf", "+.inf"):
        return math.inf
    if s == "-.inf":
        return -math.inf
    if s == ".nan":
        return math.nan
    try:
        return float(s)
    except ValueError:
        return None
