"""Reading rosters (CSV or JSON lines) and event files (JSON lines) (SPEC 3, 6).

Rules:
- A bad row is reported with its file and line number and skipped; it never stops
  the read (issue: "bad rows are reported ... never crash the run").
- Roster CSV: a header row; ``id`` required; ``tags`` split on ``;``; ``opted_out``
  and ``left`` true/false; ``joined_at`` ISO date or datetime; every other column is
  ``member.<column>``. A column that spells a field cmtyflow reads in another case or
  with ``-`` or a space for ``_`` (``Opted_Out``, ``Email``) is that field, with a note.
  Empty cells are left out. JSON lines: the same fields.
- Events: ``{"id", "type", "at", "member", "data"}``; ``at`` ISO 8601 (without an
  offset: in the given default timezone); ``member`` an id or an object that
  updates the roster (it must hold ``id``). An event without ``id`` gets one derived
  from its content, so importing the same file twice is still idempotent.
- Ids (an event's, a member's) and event types are one line of plain text: a control
  character (a line break, U+2028, an escape, a zero-width or direction mark) in one is
  refused, naming the field; an event id with spaces around it is refused too (member
  ids are read without them). An integer id is the same id as its digits.
- A JSON object that names a key twice is refused (JSON readers disagree on which one
  counts). Two events of one file or body with the same id and other content: the
  second is refused, naming the first.
- Files are UTF-8 (a BOM is allowed). One that is not, but reads whole as GB18030 (the
  encoding Excel writes for "CSV" on a Chinese Windows, GBK's superset) and reads like
  Chinese text, is read as that, with a note on stderr; any other is refused with the
  line of its first bad byte (``UserError``). Latin-1 or Windows-1252 text often reads
  whole as GB18030 too ("caf\xe9s" as "caf閟"): there, most of the characters that are
  not ASCII touch an ASCII letter, as almost none do in Chinese, and it is refused.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..engine.core import RESERVED_PREFIX, event_type_fault
from ..engine.model import Event
from ..errors import UserError
from ..spec.duration import FIRST_YEAR, LAST_YEAR, localize

_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}


@dataclass(frozen=True)
class RowProblem:
    path: str
    line: int
    message: str
    col: int | None = None  # where on the line, when known (a JSON error)

    def __str__(self) -> str:
        where = f"{self.line}:{self.col}" if self.col is not None else f"{self.line}"
        return f"{self.path}:{where}: {self.message}"


MAX_DEPTH = 64  # lists and objects inside each other, as a playbook's YAML may nest


def check_values(value: Any, where: str = "", depth: int = 0) -> None:
    """Refuse what JSON reads but the state cannot keep as text: a lone surrogate
    (``"\\ud800"``), a NUL character (``"\\u0000"``: PostgreSQL refuses it in text, and
    a message quoting it stopped the runner at every start) and a number that is not
    finite (``NaN``, ``Infinity``, ``1e999``). ``where`` (the keys leading to the value)
    is quoted to 80 characters: a key of 300 KB was echoed whole."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{quoted(where or 'a value')} holds {value[exc.start]!r}, a lone surrogate, not text") from None
        if "\x00" in value:
            raise ValueError(f"{quoted(where or 'a value')} holds a NUL character (\\u0000), which is not text")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{quoted(where or 'a value')} is {value}, not a finite number")
    elif isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
        # Deeper, it was taken, then failed every run reading it (RecursionError), and
        # the runner at every start while decoding it.
        raise ValueError(f"{quoted(where.split('[')[0] or 'a value')} is nested deeper than {MAX_DEPTH} lists and objects")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_values(key, where or "a key", depth + 1)
            name = quoted(str(key))  # the path is cut again where it is said; each key is cut here
            check_values(item, f"{where}.{name}" if where else name, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_values(item, f"{where}[{index}]", depth + 1)


_MEMBER_TEXT_LISTS = ("tags",)


def _member(raw: dict[str, Any]) -> dict[str, Any]:
    member: dict[str, Any] = {}
    check_values(raw)
    for key, value in raw.items():
        if key is None:
            raise ValueError("more cells than header columns")
        if not isinstance(key, str):
            raise ValueError(f"a field name must be text, not {key!r}")
        key = key.strip()
        if key in member:
            raise ValueError(f"two fields named '{quoted(key)}'")
        if isinstance(value, dict) or (isinstance(value, list) and key not in _MEMBER_TEXT_LISTS):
            raise ValueError(f"{quoted(key)} must be a single value, not {type(value).__name__}")
        if key == "tags" and not (
            value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))
        ):
            raise ValueError("tags must be text (a;b) or a list of text")
        if value is None or (isinstance(value, str) and value.strip() == "" and key != "id"):
            continue
        if isinstance(value, str):
            value = value.strip()
        if key == "tags":
            value = [t.strip() for t in value.split(";") if t.strip()] if isinstance(value, str) else list(value)
        elif key in ("opted_out", "left"):
            # `left` too: the text "false" in a roster column read as true, and the
            # member as gone.
            if isinstance(value, str):
                low = value.lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError(f"{key} must be true or false, not '{quoted(value)}'")
                value = low in _TRUE
            else:
                value = bool(value)
        elif key == "joined_at":
            text = str(value)
            try:
                datetime.fromisoformat(text) if "T" in text or " " in text else date.fromisoformat(text)
            except ValueError:
                raise ValueError(f"joined_at '{quoted(text)}' is not an ISO date or datetime") from None
            value = text
        elif key == "locale" and not isinstance(value, str):
            raise ValueError(f"locale must be text such as zh-CN, not {quoted(value)}")
        elif key == "timezone":
            try:
                ZoneInfo(str(value))
            except (ValueError, LookupError):
                raise ValueError(f"unknown timezone '{quoted(value)}'") from None
        member[key] = value
    if "id" not in member:
        raise ValueError("missing id")
    member["id"] = _id_text(member["id"], "id")  # as an event's: 0 is an id, true and 1.0 are not
    return member


FALLBACK_ENCODING = "gb18030"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):  # a roster may be large
            yield chunk


def _first_bad_line(chunks: Iterable[bytes], encoding: str) -> int | None:
    """The line of the first byte of ``chunks`` that ``encoding`` cannot decode; None
    when they all decode."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 1
    for chunk in chunks:
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            return line + chunk.count(b"\n", 0, max(0, exc.start))
        line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line
    return None


_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_BY_A_LETTER = re.compile(r"(?<=[A-Za-z])[^\x00-\x7f]|[^\x00-\x7f](?=[A-Za-z])")


def _reads_like_latin(chunks: Iterable[bytes]) -> bool:
    """Whether bytes that read whole as GB18030 are rather Latin-1 or Windows-1252 text:
    there an accented letter sits inside a word, and read as GB18030 it takes the next
    ASCII letter with it ("caf\xe9s" as "caf閟", "M\xfcnchen" as "M黱chen"), so most of
    the characters that are not ASCII touch an ASCII letter. In Chinese text almost
    none do (a character beside a Latin word, as in "iPhone手机", is the exception)."""
    decoder = codecs.getincrementaldecoder(FALLBACK_ENCODING)()
    other = by_letter = 0
    for chunk in chunks:
        text = decoder.decode(chunk)
        other += len(_NOT_ASCII.findall(text))
        by_letter += len(_BY_A_LETTER.findall(text))
    return by_letter * 2 > other


@contextmanager
def open_text(path: str | Path) -> Iterator[Any]:
    """A roster or event file as text (see the rules). A pipe (``/dev/stdin``, a shell's
    ``<(...)``) can be read only once: it is read whole first, then decoded."""
    path = Path(path)
    if path.is_file():
        with open(path, encoding=text_encoding(path), newline="") as fh:
            yield fh
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    yield io.StringIO(data.decode(text_encoding(path, data)), newline="")


def text_encoding(path: str | Path, data: bytes | None = None) -> str:
    """How to read a roster or event file (see the rules); ``data``: its bytes, when
    they were read already (a pipe can be read once)."""
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xls", ".numbers", ".ods"):
        raise UserError(f"{path}: a spreadsheet, not text; save it as \"CSV UTF-8\" and give that file")

    def chunks() -> Iterable[bytes]:
        return (data,) if data is not None else _file_chunks(path)

    bad = _first_bad_line(chunks(), "utf-8")
    if bad is None:
        return "utf-8-sig"
    if _first_bad_line(chunks(), FALLBACK_ENCODING) is None:
        if _reads_like_latin(chunks()):
            raise UserError(
                f"{path}:{bad}: not UTF-8 text (it reads like Latin-1 or Windows-1252, which are not read); save the file "
                "as UTF-8 (in Excel: \"CSV UTF-8\")"
            )
        print(
            f"{path}: not UTF-8 (line {bad}); read as GB18030/GBK, which Excel and other Windows programs "
            "write on a Chinese system. Save it as UTF-8 (in Excel: \"CSV UTF-8\") to be sure of every character.",
            file=sys.stderr,
        )
        return FALLBACK_ENCODING
    raise UserError(f"{path}:{bad}: not UTF-8 text; save the file as UTF-8 (in Excel: \"CSV UTF-8\")")


# The member fields cmtyflow reads itself (SPEC 6, and the adapters' addresses): a
# roster column that spells one in another case, or with '-' or a space for '_'
# (Opted_Out, opted-out, Email), is read as it.
KNOWN_COLUMNS = frozenset({
    "id", "name", "timezone", "locale", "tags", "opted_out", "left", "joined_at",
    "email", "telegram", "slack", "discord",
})


def known_column(name: str) -> str:
    """``name`` as the known field it spells (``KNOWN_COLUMNS``), else as it is."""
    folded = re.sub(r"[\s-]+", "_", name.strip().lower())
    return folded if folded in KNOWN_COLUMNS else name


# Field separators a roster's header may use: a comma; a semicolon, which Excel writes
# for "CSV" where the decimal mark is a comma; a tab, from a sheet copied as text.
DELIMITERS = (",", ";", "\t")


def _delimiter(fh: Any, path: str) -> str:
    """The separator of the CSV roster open in ``fh`` (which is left at its start): the
    first of ``DELIMITERS`` whose header has an ``id`` column. A file with no header,
    or none with an ``id`` column, is refused: without ids no row can be read."""
    header = fh.readline()
    fh.seek(0)
    if not header.strip():
        raise UserError(f"{path}:1: no header row: a roster is a CSV file whose first row names the columns, one of them 'id'")
    for delimiter in DELIMITERS:
        names = next(csv.reader([header], delimiter=delimiter))
        if "id" in (known_column(n.strip().lstrip("\ufeff")) for n in names):
            return delimiter
    names = next(csv.reader([header]))
    shown = ", ".join(repr(n.strip()) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    raise UserError(
        f"{path}:1: the header row has no 'id' column (it reads {shown}); name the column of member ids 'id'"
    )


class DuplicateKey(ValueError):
    """A JSON object that names a key twice."""


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = ""
        for key, _ in pairs:
            if key in seen:
                twice = key
                break
            seen.add(key)
        raise DuplicateKey(
            f"an object names the key \"{quoted(twice)}\" twice (JSON readers differ on which one counts); "
            "send each key once"
        )
    return value


def json_value(text: str, *, strict: bool = False) -> Any:
    """``json.loads`` for input from outside (a file's line, a request's body, an option),
    with Python's own limits said in the sender's terms as ValueError: a value nested too
    deeply (a RecursionError stopped the command as a fault of its own), a number past
    4,300 digits, an object that names a key twice (``DuplicateKey``: read as the last,
    while a proxy or filter may read the first). ``json.JSONDecodeError`` (a ValueError too) is raised as it is. NaN and
    Infinity are read, for ``parse_event`` to name the field that holds one, or with
    ``strict`` refused (they are not JSON)."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        if strict:
            return json.loads(text, parse_constant=no_constant, object_pairs_hook=_one_of_each)
        return json.loads(text, object_pairs_hook=_one_of_each)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if "int_max_str_digits" in str(exc):  # Python's advice, not the sender's
            raise ValueError("a number has more than 4300 digits") from None
        raise


def read_roster(
    path: str | Path, problems: list[RowProblem], repeats: list[RowProblem] | None = None
) -> Iterator[dict[str, Any]]:
    """Members from a CSV or JSON-lines file, streamed; bad rows go to ``problems``. With
    ``repeats``, a row whose id an earlier row of the file had goes there too (it is
    still read: its fields are merged over the earlier row's, as any update is)."""
    rows = _roster_rows(path, problems)
    if repeats is None:
        yield from (member for _, member in rows)
        return
    seen: set[str] = set()
    for line, member in rows:
        if member["id"] in seen:
            repeats.append(RowProblem(str(path), line, f"member {member['id']} again: this row's fields are merged over the earlier row's"))
        seen.add(member["id"])
        yield member


def _roster_rows(path: str | Path, problems: list[RowProblem]) -> Iterator[tuple[int, dict[str, Any]]]:
    path = Path(path)
    text_path = str(path)
    with open_text(path) as fh:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    raw = json_value(line)
                    if not isinstance(raw, dict):
                        raise ValueError("a member must be a JSON object")
                    member = _member(raw)
                except (ValueError, TypeError) as exc:
                    problems.append(RowProblem(text_path, lineno, str(exc)))
                    continue
                yield lineno, member
            return
        # strict: a quote left open would otherwise take every later row into one cell.
        reader = csv.DictReader(fh, delimiter=_delimiter(fh, text_path), strict=True)
        given = [n.strip().lstrip("\ufeff") for n in reader.fieldnames or []]
        names = [known_column(n) for n in given]
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            spelt = {n: list(dict.fromkeys(g for g, k in zip(given, names, strict=True) if k == n)) for n in twice}
            if all(len(spelt[n]) == 1 for n in twice):
                raise UserError(f"{text_path}:1: the header names {', '.join(repr(n) for n in twice)} more than once; "
                                "each column needs a name of its own")
            raise UserError(f"{text_path}:1: the header names {', '.join(' and '.join(repr(g) for g in spelt[n]) for n in twice)}, "
                            "the same column more than once; each column needs a name of its own")
        renamed = [(g, n) for g, n in zip(given, names, strict=True) if g != n]
        if renamed:
            # Read as the field it spells (an export's "Opted_Out" was a custom column,
            # and an opted-out member got messages), and said once.
            reader.fieldnames = names
            print(f"note: {text_path}:1: " + ", ".join(f"column '{g}' read as {n}" for g, n in renamed), file=sys.stderr)
        # A column without a name (Excel's trailing commas) is left out while its cells
        # are empty; a value in one is a bad row (it was lost, or kept under the name "").
        unnamed = {f"\x00{i}": i for i, n in enumerate(names, 1) if not n}
        if unnamed:
            reader.fieldnames = [f"\x00{i}" if not n else raw for i, (n, raw) in enumerate(zip(names, reader.fieldnames or [], strict=True), 1)]
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise UserError(
                    f"{text_path}:{start}: {exc} (a quote opened in a cell must be closed, and a quote inside a quoted "
                    'cell is written twice: "say ""hi""")'
                ) from None
            filled = [i for key, i in unnamed.items() if (row.pop(key, None) or "").strip()]
            if filled:
                problems.append(RowProblem(text_path, start, f"a value in column {filled[0]}, which has no name in the "
                                                              "header row; name the column, or leave its cells empty"))
                continue
            try:
                member = _member(row)
            except ValueError as exc:
                problems.append(RowProblem(text_path, start, str(exc)))
                continue
            yield start, member


def _id_text(value: Any, what: str, *, strip: bool = False) -> str:
    """An event's or member's id: text that is not empty, or an integer (``7`` is the id
    ``"7"``), one line of plain text; with ``strip``, without the spaces around it."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{what} must be text or an integer, not {quoted(value)}")
    text = str(value).strip() if strip else str(value)
    if not text.strip():
        raise ValueError(f"{what} is empty")
    plain_text(text, what)
    return text


# Characters that are not printed as themselves: C0 and C1 controls (a line break, an
# escape), format characters (zero-width and direction marks) and U+2028/U+2029.
_UNPRINTED = frozenset({"Cc", "Cf", "Zl", "Zp"})


def unprinted(text: str) -> int | None:
    """The index of the first character of ``text`` that is not printed as itself, or
    None. (``isprintable`` is false for these, and for other spaces than U+0020.)"""
    if text.isprintable():
        return None
    return next((i for i, c in enumerate(text) if unicodedata.category(c) in _UNPRINTED), None)


def plain_text(text: str, what: str) -> None:
    """Refuse an id or a type that holds a control character: it is printed in the log and
    in tables, where a line break in one made a line of its own (a forged log line)."""
    at = unprinted(text)
    if at is not None:
        raise ValueError(
            f"{what} holds a control character (U+{ord(text[at]):04X}, character {at + 1}); "
            "ids and types are one line of plain text"
        )


def quoted(value: Any, most: int = 80) -> str:
    """``value`` as JSON for an error message, cut to ``most`` characters: an answer or a
    log line quotes what was sent, not all of it (an `at` of 900 KB was echoed whole)."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= most else text[: most - 1] + "…"


def parse_event(raw: Any, default_tz: ZoneInfo | None) -> Event:
    if not isinstance(raw, dict):
        raise ValueError("an event must be a JSON object")
    check_values(raw)
    unknown = set(raw) - {"id", "type", "at", "member", "data"}
    if unknown:
        raise ValueError(f"unknown event field(s): {quoted(', '.join(sorted(unknown)), 200)}")
    etype = raw.get("type")
    if etype is None or etype == "":
        raise ValueError("missing type")
    if not isinstance(etype, str):
        raise ValueError(f"type must be text (a dotted name such as message.posted), not {quoted(etype)}")
    if etype.startswith(RESERVED_PREFIX):
        raise ValueError(f"event types starting with '{RESERVED_PREFIX}' are cmtyflow's own (use cmtyflow launch)")
    plain_text(etype, "type")
    why = event_type_fault(etype)
    if why is not None:
        raise ValueError(f"type {json.dumps(quoted(etype), ensure_ascii=False)} has {why}; write a dotted name such as message.posted")
    at_text = raw.get("at")
    if at_text is None:
        raise ValueError("missing at (an ISO 8601 datetime)")
    if not isinstance(at_text, str):
        raise ValueError(f"at must be text (an ISO 8601 datetime), not {quoted(at_text)}")
    try:
        at = datetime.fromisoformat(at_text)
    except ValueError:
        raise ValueError(f"at '{quoted(at_text)}' is not an ISO 8601 datetime") from None
    # Within the years every timezone can convert (year 1 at +08:00 is before year 1 in
    # UTC: the engine failed on it, and the intake answered 500).
    if not FIRST_YEAR <= at.year <= LAST_YEAR:
        raise ValueError(f"at '{at_text}' is out of range: give a time between {FIRST_YEAR} and {LAST_YEAR}")
    if at.tzinfo is None:
        if default_tz is None:
            raise ValueError(
                f"at '{at_text}' has no UTC offset, and no timezone is known to read it in (no runner has run "
                "a playbook on this state yet): write the offset (2026-12-01T10:00:00+08:00), or give --timezone"
            )
        at = localize(at, default_tz)
    member = raw.get("member")
    update = None
    if isinstance(member, dict):
        try:
            update = _member(member)
        except ValueError as exc:  # said of the member, not of the event ("missing id")
            raise ValueError(f"member: {exc}") from None
        member = update["id"]
    elif member is not None:
        # Without the spaces around it, as the roster's ids are read (" u1 " is u1).
        member = _id_text(member, "member", strip=True)
    data = raw.get("data")
    if data is None:  # as for every field, null is the field left out
        data = {}
    elif not isinstance(data, dict):  # 0, false, "" and [] too: not taken for {}
        raise ValueError("data must be a JSON object")
    event_id = raw.get("id")
    if event_id is None:
        # From the event as written (its fields, sorted). Kept so from one release to the
        # next: a file imported again after an upgrade must find its events seen.
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]
        event_id = f"auto-{digest}"
    event_id = _id_text(event_id, "id")
    if event_id != event_id.strip():
        # Refused, not trimmed: " 7 " was taken as an event of its own, and ids stored so
        # before would no longer be found seen.
        raise ValueError(f"id '{quoted(event_id)}' has spaces around it; send the id without them")
    return Event(id=event_id, type=etype, at=at, member=member, data=data, member_update=update)


class SameIds:
    """The events of one body or file by id: a second event with an id an earlier one had
    and other content is a sender's mistake (two events under one id), where the store
    would keep the first and count the second a duplicate without a word. The same event
    twice is no mistake (a retry); it is let through, to be counted a duplicate."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}  # id -> (where, fingerprint of the content)

    def earlier(self, event: Event, where: int) -> int | None:
        """Where the earlier event with ``event``'s id and other content was, or None."""
        mark = _fingerprint(event)
        first = self._seen.setdefault(event.id, (where, mark))
        return first[0] if first[1] != mark else None


def _fingerprint(event: Event) -> int:
    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    return hash((event.type, event.at, event.member, text(event.data), text(event.member_update)))


def read_events(path: str | Path, problems: list[RowProblem], default_tz: ZoneInfo | None) -> Iterator[Event]:
    text_path = str(path)
    with open_text(path) as fh:
        yield from _events_from_lines(fh, text_path, problems, default_tz)


def _events_from_lines(fh: Any, name: str, problems: list[RowProblem], default_tz: ZoneInfo | None) -> Iterator[Event]:
    same_ids = SameIds()
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            event = parse_event(json_value(line), default_tz)
        except json.JSONDecodeError as exc:
            problems.append(RowProblem(name, lineno, f"not JSON: {exc.msg}", col=exc.colno))
            continue
        except ValueError as exc:
            problems.append(RowProblem(name, lineno, str(exc)))
            continue
        earlier = same_ids.earlier(event, lineno)
        if earlier is not None:
            problems.append(RowProblem(name, lineno, f"id '{quoted(event.id)}' is also the id of line {earlier}, "
                                                     "an event with other content; give each event an id of its own"))
            continue
        yield event


def events_from_text(text: str, problems: list[RowProblem], default_tz: ZoneInfo, name: str = "<events>") -> list[Event]:
    return list(_events_from_lines(io.StringIO(text), name, problems, default_tz))
