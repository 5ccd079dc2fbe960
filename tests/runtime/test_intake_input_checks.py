"""What the intake, `emit` and `events import` refuse in an event: control characters in
ids and types, keys named twice, two events under one id, padded event ids, field names
echoed whole, files in Latin-1, and `--data` that is not an object."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.cli import main
from cmtyflow.engine.model import Event
from cmtyflow.errors import UserError
from cmtyflow.runtime.inputs import RowProblem, events_from_text, read_events, read_roster
from cmtyflow.runtime.intake import IntakeConfig, make_app

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOKEN = "tok-5be0c2d9a817"
AT = "2026-12-01T10:00:00+08:00"


class Store:
    def __init__(self) -> None:
        self.events: dict[str, Event] = {}

    def accept(self, events: list[Event]) -> tuple[int, int]:
        before = len(self.events)
        for event in events:  # the first of an id is kept, as the store's one transaction does
            self.events.setdefault(event.id, event)
        return len(self.events) - before, len(events) - (len(self.events) - before)


@pytest.fixture
async def post(aiohttp_client: Any) -> Any:
    """``await post(body)``: (status, answer) from an intake; ``post.store`` its events."""
    store = Store()
    app = make_app(store.accept, IntakeConfig(token=TOKEN), default_tz=TZ, now=lambda: NOW)
    client = await aiohttp_client(app)

    async def send(body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await client.post("/events", data=data, headers={"Authorization": f"Bearer {TOKEN}",
                                                                 "Content-Type": "application/json"})
        return resp.status, await resp.json()

    send.store = store  # type: ignore[attr-defined]
    return send


# --- control characters in ids and types ----------------------------------------------------


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"id": "inj1\n2026-11-23 16:00:00 runner: FAKE", "type": "a.b"}, "id holds a control character (U+000A, character 5)"),
        ({"id": "e1", "type": "a.b", "member": "ghost\n2026 FAKE"}, "member holds a control character (U+000A, character 6)"),
        ({"id": "e1", "type": "member.joined", "member": {"id": "evil\r\n2026 FAKE", "name": "n"}},
         "member: id holds a control character (U+000D, character 5)"),
        ({"id": "inj2\u2028x", "type": "a.b"}, "id holds a control character (U+2028, character 5)"),
        ({"id": "e1", "type": "a.b\x1b[31m"}, "type holds a control character (U+001B, character 4)"),
        ({"id": "e1", "type": "a.b", "member": "u\u202e1"}, "member holds a control character (U+202E, character 2)"),
        ({"id": "e\u200b1", "type": "a.b"}, "id holds a control character (U+200B, character 2)"),
    ],
)
async def test_ids_and_types_with_control_characters_are_refused_naming_the_field(post, event, error):
    """Member ids with CR/LF forged lines of the runner's log, and a roster member."""
    status, answer = await post({**event, "at": AT})
    assert (status, answer) == (400, {
        "error": f"events[0]: {error}; ids and types are one line of plain text", "index": 0
    })
    assert post.store.events == {}


async def test_plain_ids_and_text_elsewhere_are_taken(post):
    event = {"id": "e1", "type": "message.posted", "at": AT, "member": {"id": " 小明 ", "name": "小明\n王"},
             "data": {"text": "第一行\n第二行\u2028"}}
    assert (await post(event))[0] == 202
    assert post.store.events["e1"].member == "小明"
    assert post.store.events["e1"].data["text"] == "第一行\n第二行\u2028"  # data is the sender's text


def test_a_roster_row_whose_id_holds_a_line_break_is_a_bad_row(tmp_path):
    path = tmp_path / "members.csv"
    path.write_text('id,name\nu1,Ann\n"evil\n2026 FAKE",n\nu2,Bo\n', encoding="utf-8")
    problems: list[RowProblem] = []
    assert [m["id"] for m in read_roster(path, problems)] == ["u1", "u2"]
    assert [(p.line, p.message) for p in problems] == [
        (3, "id holds a control character (U+000A, character 5); ids and types are one line of plain text")
    ]


# --- keys named twice ----------------------------------------------------------------------


async def test_an_object_that_names_a_key_twice_is_refused(post):
    """Read as the last: a message.posted that named its type twice was stored as
    member.left, and its member was marked as gone."""
    body = b'{"id":"dk1","type":"message.posted","type":"member.left","member":"u1","at":"' + AT.encode() + b'"}'
    status, answer = await post(body)
    assert (status, answer) == (400, {"error": 'the body is refused: an object names the key "type" twice '
                                               "(JSON readers differ on which one counts); send each key once"})
    status, _ = await post(b'{"events": [], "events": []}')
    assert status == 400
    assert post.store.events == {}


def test_events_import_and_emit_refuse_keys_named_twice(tmp_path, capsys):
    state = str(tmp_path / "s.db")
    events = tmp_path / "ev.jsonl"
    events.write_text(
        json.dumps({"id": "ok", "type": "a.b", "at": AT}) + "\n"
        + '{"id": "e1", "type": "a.b", "at": "' + AT + '", "data": {"n": 1, "n": 2}}\n',
        encoding="utf-8",
    )
    assert main(["events", "import", str(events), "--state", state]) == 1
    out, err = capsys.readouterr()
    assert "queued 1 event, 1 line skipped" in out
    assert f'{events}:2: an object names the key "n" twice' in err
    assert main(["emit", "a.b", "--data", '{"a": 1, "a": 2}', "--state", state]) == 1
    assert 'error: --data: an object names the key "a" twice' in capsys.readouterr().err
    assert main(["emit", "a.b", "--member", '{"id": "u1", "id": "u2"}', "--state", state]) == 1
    assert 'error: --member: an object names the key "id" twice' in capsys.readouterr().err


# --- two events under one id ----------------------------------------------------------------


async def test_two_events_of_a_body_with_one_id_and_other_content_are_refused(post):
    first = {"id": "dd1", "type": "message.posted", "at": AT, "member": "u1", "data": {"text": "x"}}
    status, answer = await post([first, {**first, "data": {"text": "other"}}])
    assert (status, answer) == (400, {
        "error": "events[1]: id 'dd1' is also the id of events[0], an event with other content; give each event "
                 "an id of its own", "index": 1
    })
    assert post.store.events == {}
    # The same event twice is a retry within the body: taken once.
    assert await post([first, {**first, "at": "2026-12-01T02:00:00+00:00"}]) == (202, {"accepted": 1, "duplicates": 1})


def test_events_import_skips_a_line_whose_id_an_earlier_line_had_with_other_content():
    problems: list[RowProblem] = []
    lines = [
        {"id": "e1", "type": "a.b", "at": AT, "data": {"n": 1}},
        {"id": "e2", "type": "a.b", "at": AT},
        {"id": "e1", "type": "a.b", "at": AT, "data": {"n": 1}},  # the same again: let through
        {"id": "e1", "type": "a.b", "at": AT, "data": {"n": 2}},
    ]
    events = events_from_text("\n".join(json.dumps(x) for x in lines), problems, TZ, name="ev.jsonl")
    assert [e.id for e in events] == ["e1", "e2", "e1"]
    assert [str(p) for p in problems] == [
        "ev.jsonl:4: id 'e1' is also the id of line 1, an event with other content; give each event an id of its own"
    ]


# --- event ids: spaces and integers -----------------------------------------------------------


async def test_an_event_id_with_spaces_around_it_is_refused_and_7_is_the_id_7(post):
    """" 7 " was taken as an event of its own beside "7": a sender that padded its ids
    defeated deduplication."""
    status, answer = await post({"id": " 7 ", "type": "a.b", "at": AT})
    assert (status, answer) == (400, {"error": "events[0]: id ' 7 ' has spaces around it; send the id without "
                                               "them", "index": 0})
    assert await post({"id": 7, "type": "a.b", "at": AT}) == (202, {"accepted": 1, "duplicates": 0})
    assert await post({"id": "7", "type": "a.b", "at": AT}) == (202, {"accepted": 0, "duplicates": 1})


# --- field names echoed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"data": {"k" * 300_000: float("inf")}},
        {"data": {"k" * 300_000: "\x00"}},
        {"data": {"k" * 300_000: json.loads("[" * 70 + "]" * 70)}},
        {"member": {"id": "u1", "k" * 300_000: {}}},
    ],
)
async def test_an_answer_quotes_at_most_80_characters_of_a_field_name(post, event):
    """A 300,000-character key came back whole in the error (300 KB answers)."""
    body = json.dumps({"id": "e1", "type": "a.b", "at": AT, **event}).replace("Infinity", "1e999").encode()
    status, answer = await post(body)
    assert status == 400 and len(answer["error"]) < 200 and "k" * 70 + "…" in answer["error"]


async def test_two_member_fields_that_are_one_once_trimmed_are_quoted_short(post):
    body = {"id": "e1", "type": "a.b", "at": AT, "member": {"id": "u1", "k" * 1000: 1, "k" * 1000 + " ": 2}}
    status, answer = await post(body)
    assert status == 400 and answer["error"] == f"events[0]: member: two fields named '{'k' * 79}…'"


# --- events import: where a line is not JSON; files in Latin-1 -------------------------------------


def test_events_import_says_the_column_of_a_json_error(tmp_path, capsys):
    events = tmp_path / "ev.jsonl"
    events.write_text(json.dumps({"id": "ok", "type": "a.b", "at": AT}) + '\n{"id": }\n', encoding="utf-8")
    assert main(["events", "import", str(events), "--state", str(tmp_path / "s.db")]) == 1
    assert f"{events}:2:8: not JSON: Expecting value: line skipped" in capsys.readouterr().err


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_a_latin_1_event_file_is_refused_not_read_as_gb18030(tmp_path, encoding):
    """It read whole as GB18030 and "Les cafés et thés" went out as "Les caf閟 et th閟"."""
    path = tmp_path / "events.jsonl"
    lines = [{"id": "ok", "type": "a.b", "at": AT, "data": {"text": "ascii only"}},
             {"id": "cp2", "type": "a.b", "at": AT, "data": {"text": "Les cafés et thés, Grüße aus München"}}]
    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode(encoding)
    data.decode("gb18030")  # it does read whole as that
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        list(read_events(path, [], TZ))
    assert str(info.value) == (
        f"{path}:2: not UTF-8 text (it reads like Latin-1 or Windows-1252, which are not read); save the file as "
        'UTF-8 (in Excel: "CSV UTF-8")'
    )


def test_a_gbk_file_with_a_latin_word_beside_its_chinese_is_still_read(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_bytes('{"id": "e1", "type": "a.b", "at": "2026-12-01T08:00:00", "data": {"text": "我用iPhone打卡, 祝大家新年快乐"}}\n'
                     .encode("gbk"))
    (event,) = read_events(path, [], TZ)
    assert event.data == {"text": "我用iPhone打卡, 祝大家新年快乐"}
    assert "read as GB18030/GBK" in capsys.readouterr().err


# --- emit --data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("", "error: --data is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("null", "error: --data must be a JSON object such as '{\"text\": \"hi\"}', not null"),
        ("[]", "error: --data must be a JSON object such as '{\"text\": \"hi\"}', not []"),
        ('"x"', "error: --data must be a JSON object such as '{\"text\": \"hi\"}', not \"x\""),
    ],
)
def test_emit_data_that_is_empty_or_null_is_an_error_not_an_empty_object(tmp_path, capsys, data, error):
    """Both queued the event with {} as its data, exit 0."""
    state = tmp_path / "s.db"
    assert main(["emit", "a.b", "--data", data, "--state", str(state)]) == 1
    assert capsys.readouterr().err.strip() == error
    assert not Path(state).exists()  # refused before the state was made


def test_emit_refuses_a_member_id_with_a_line_break(tmp_path, capsys):
    assert main(["emit", "a.b", "--member", "u1\n2026 FAKE", "--state", str(tmp_path / "s.db")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: event: member holds a control character (U+000A, character 3); ids and types are one line of plain text"
    )
