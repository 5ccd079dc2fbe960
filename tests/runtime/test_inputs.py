from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from cmtyflow.errors import UserError
from cmtyflow.runtime.inputs import RowProblem, events_from_text, read_roster

SH = ZoneInfo("Asia/Shanghai")


def test_roster_csv_fields_and_bad_rows_are_reported_and_skipped(tmp_path):
    path = tmp_path / "members.csv"
    path.write_text(
        "id,name,tags,opted_out,joined_at,timezone,city\n"
        "u1,王晓明,reading;fitness,false,2025-03-01,Asia/Shanghai,上海\n"
        ",no id,,false,,,\n"
        "u3,Ann,,maybe,,,\n"
        "u4,Bo,,true,2025-13-01,,\n"
        "u5,Cy,,TRUE,2025-01-02T10:00:00,Mars/Base,\n"
        "u6,Di,,,,,\n",
        encoding="utf-8",
    )
    problems: list[RowProblem] = []
    members = list(read_roster(path, problems))
    assert members == [
        {"id": "u1", "name": "王晓明", "tags": ["reading", "fitness"], "opted_out": False, "joined_at": "2025-03-01", "timezone": "Asia/Shanghai", "city": "上海"},
        {"id": "u6", "name": "Di"},
    ]
    assert [str(p) for p in problems] == [
        f"{path}:3: id is empty",
        f"{path}:4: opted_out must be true or false, not 'maybe'",
        f"{path}:5: joined_at '2025-13-01' is not an ISO date or datetime",
        f"{path}:6: unknown timezone 'Mars/Base'",
    ]


def test_a_csv_column_without_a_name_is_left_out_while_its_cells_are_empty(tmp_path):
    """Excel's trailing commas: the first unnamed column's values were lost, a second's
    kept under the field name ""."""
    path = tmp_path / "m.csv"
    path.write_text("id,name,,\nu1,A,,\nu2,B,x,\nu3,C,,y\nu4,D,,\n", encoding="utf-8")
    problems: list[RowProblem] = []
    assert list(read_roster(path, problems)) == [{"id": "u1", "name": "A"}, {"id": "u4", "name": "D"}]
    assert [(p.line, p.message.split(",")[0]) for p in problems] == [
        (3, "a value in column 3"), (4, "a value in column 4"),
    ]


def test_roster_jsonl(tmp_path):
    path = tmp_path / "members.jsonl"
    path.write_text(
        '{"id": 7, "name": "A", "tags": ["x"]}\n[1]\n\n{"name": "no id"}\n{"id": 0}\n{"id": true}\n{"id": 1.0}\n{"id": " "}\n',
        encoding="utf-8",
    )
    problems: list[RowProblem] = []
    # Ids as an event's are: 0 is one (it was "missing"), true and 1.0 are not (they became "True" and "1.0").
    assert list(read_roster(path, problems)) == [{"id": "7", "name": "A", "tags": ["x"]}, {"id": "0"}]
    assert [(p.line, p.message) for p in problems] == [
        (2, "a member must be a JSON object"), (4, "missing id"), (6, "id must be text or an integer, not true"),
        (7, "id must be text or an integer, not 1.0"), (8, "id is empty"),
    ]


def test_a_roster_without_an_id_column_or_without_a_header_is_refused(tmp_path):
    # No row of such a file can be read: an error, not a roster of nobody.
    path = tmp_path / "m.csv"
    path.write_text("name,city\nA,Shanghai\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        list(read_roster(path, []))
    assert str(err.value) == f"{path}:1: the header row has no 'id' column (it reads 'name', 'city'); name the column of member ids 'id'"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"m.csv:1: no header row: a roster is a CSV file whose first row names the columns"):
        list(read_roster(path, []))


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_roster_separated_by_semicolons_or_tabs_is_read_as_such(tmp_path, sep):
    # Excel's "CSV" where the decimal mark is a comma uses ';'; a sheet copied as text, tabs.
    path = tmp_path / "m.csv"
    rows = [["id", "name", "tags"], ["u1", "王晓明", '"staff;reading"'], ["u2", "Bea, Jr.", "fitness"]]
    path.write_text("".join(sep.join(r) + "\r\n" for r in rows), encoding="utf-8")
    problems: list[RowProblem] = []
    assert [(m["id"], m["name"], m["tags"]) for m in read_roster(path, problems)] == [
        ("u1", "王晓明", ["staff", "reading"]), ("u2", "Bea, Jr.", ["fitness"]),
    ]
    assert problems == []


def test_events_parse_offsets_members_and_errors():
    problems: list[RowProblem] = []
    text = "\n".join([
        '{"id": "e1", "type": "member.joined", "at": "2026-12-01T10:00:00", "member": {"id": "u9", "name": "新人"}}',
        '{"id": "e2", "type": "message.posted", "at": "2026-12-01T10:05:00+00:00", "member": "u9", "data": {"text": "hi"}}',
        'not json',
        '{"type": "x.y"}',
        '{"id": "e3", "type": "a.b", "at": "2026-12-01", "extra": 1}',
        '{"type": "crisis.declared", "at": "2026-12-02T09:00:00+08:00"}',
    ])
    events = events_from_text(text, problems, SH, name="ev.jsonl")
    assert [e.id for e in events[:2]] == ["e1", "e2"]
    assert events[0].at == datetime(2026, 12, 1, 10, tzinfo=SH)
    assert events[0].member == "u9" and events[0].member_update == {"id": "u9", "name": "新人"}
    assert events[1].data == {"text": "hi"}
    assert events[2].id.startswith("auto-") and events[2].member is None
    assert [(p.line, p.message) for p in problems] == [
        (3, "not JSON: Expecting value"),
        (4, "missing at (an ISO 8601 datetime)"),
        (5, "unknown event field(s): extra"),
    ]
    again = events_from_text(text, [], SH)
    assert again[2].id == events[2].id  # derived ids are stable: re-import is idempotent


def test_a_gbk_roster_from_excel_is_read_with_a_note(tmp_path, capsys):
    # Excel's "CSV" on a Chinese Windows is GBK: read as GB18030 (its superset), said on stderr.
    path = tmp_path / "members.csv"
    path.write_bytes("id,name,city\nu1,王晓明,上海\nu2,小红,深圳\n".encode("gbk"))
    problems: list[RowProblem] = []
    assert list(read_roster(path, problems)) == [
        {"id": "u1", "name": "王晓明", "city": "上海"}, {"id": "u2", "name": "小红", "city": "深圳"},
    ]
    assert problems == []
    assert capsys.readouterr().err == (
        f"{path}: not UTF-8 (line 2); read as GB18030/GBK, which Excel and other Windows programs write on a "
        'Chinese system. Save it as UTF-8 (in Excel: "CSV UTF-8") to be sure of every character.\n'
    )


def test_gbk_events_are_read_too(tmp_path):
    from cmtyflow.runtime.inputs import read_events

    path = tmp_path / "events.jsonl"
    path.write_bytes('{"id": "e1", "type": "checkin.posted", "member": "u1", "at": "2026-12-01T08:00:00", "data": {"text": "打卡"}}\n'.encode("gbk"))
    (event,) = read_events(path, [], SH)
    assert event.data == {"text": "打卡"}


def test_a_file_in_neither_encoding_is_refused_with_its_line(tmp_path):
    # The bad byte lies past the first read chunk: the line is still right.
    import pytest

    from cmtyflow.errors import UserError

    path = tmp_path / "members.csv"
    rows = "".join(f"u{i},member {i}\n" for i in range(80_000))  # over 1 MiB
    path.write_bytes(b"id,name\n" + rows.encode() + b"u\xff,bad\n")
    with pytest.raises(UserError, match=rf"^{path}:80002: not UTF-8 text; save the file as UTF-8"):
        list(read_roster(path, []))


def test_utf8_with_a_bom_needs_no_note(tmp_path, capsys):
    path = tmp_path / "members.csv"
    path.write_bytes("\ufeffid,name\nu1,王晓明\n".encode())
    assert list(read_roster(path, [])) == [{"id": "u1", "name": "王晓明"}]
    assert capsys.readouterr().err == ""


def test_a_spreadsheet_is_refused_by_name(tmp_path):
    import pytest

    from cmtyflow.errors import UserError

    path = tmp_path / "members.xlsx"
    path.write_bytes(b"PK\x03\x04 a workbook")
    with pytest.raises(UserError, match=r'members.xlsx: a spreadsheet, not text; save it as "CSV UTF-8"'):
        list(read_roster(path, []))


def test_a_quote_left_open_refuses_the_roster_at_its_line_instead_of_eating_the_rest(tmp_path):
    """Before, r1's name took every later row: one member imported, r2 and r3 lost, exit 0."""
    path = tmp_path / "m.csv"
    path.write_text('id,name,city\nr1,"李雷,北京\nr2,韩梅梅,上海\nr3,张三,广州\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"m\.csv:2: unexpected end of data .*written twice"):
        list(read_roster(path, []))
    path.write_text('id,name\nq1,"王 "小" 明"\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"m\.csv:2: ',' expected after '\"'"):
        list(read_roster(path, []))
    path.write_text('id,city,city\nq1,a,b\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"m\.csv:1: the header names 'city' more than once"):
        list(read_roster(path, []))
    path.write_text('id,name\nq1,"say ""hi"""\n', encoding="utf-8")
    assert list(read_roster(path, [])) == [{"id": "q1", "name": 'say "hi"'}]


def test_json_roster_fields_must_be_plain_values(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"id": "j4", "tags": [1, null]}\n{"id": "j7", "name": {"nested": 1}}\n{"id": "j17", "id ": "space"}\n'
        '{"id": "j10", "name": "\\ud800"}\n{"id": "ok", "name": "好", "tags": ["a"]}\n{"id": "n\\u0000ul"}\n'
        '{"id": "l5", "locale": 5}\n',
        encoding="utf-8",
    )
    problems: list[RowProblem] = []
    assert list(read_roster(path, problems)) == [{"id": "ok", "name": "好", "tags": ["a"]}]
    assert [(p.line, p.message) for p in problems] == [
        (1, "tags must be text (a;b) or a list of text"),
        (2, "name must be a single value, not dict"),
        (3, "two fields named 'id'"),
        (4, "name holds '\\ud800', a lone surrogate, not text"),
        (6, "id holds a NUL character (\\u0000), which is not text"),
        (7, "locale must be text such as zh-CN, not 5"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "", "type": "a.b", "at": "2026-12-01T10:00:00+08:00"}', "id is empty"),
        ('{"id": [1], "type": "a.b", "at": "2026-12-01T10:00:00+08:00"}', "id must be text or an integer, not [1]"),
        ('{"id": true, "type": "a.b", "at": "2026-12-01T10:00:00+08:00"}', "id must be text or an integer, not true"),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "member": ["u1"]}', 'member must be text or an integer, not ["u1"]'),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "member": ""}', "member is empty"),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"t": "\\ud800"}}', "data.t holds '\\ud800', a lone surrogate, not text"),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"n": NaN}}', "data.n is nan, not a finite number"),
        # taken, it failed every run reading it, and the runner at every start decoding it
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"v": ' + "[" * 70 + "]" * 70 + "}}",
         "data.v is nested deeper than 64 lists and objects"),
        # PostgreSQL refuses NUL in text: a message quoting it stopped the runner at every start
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"t": "x\\u0000y"}}',
         "data.t holds a NUL character (\\u0000), which is not text"),
        ('{"id": "e\\u0000x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00"}', "id holds a NUL character (\\u0000), which is not text"),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "member": "m\\u0000z"}',
         "member holds a NUL character (\\u0000), which is not text"),
        ('{"id": "x", "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"n": 1e999}}', "data.n is inf, not a finite number"),
    ],
)
def test_events_the_state_could_not_keep_are_bad_rows(line, message):
    problems: list[RowProblem] = []
    good = '{"id": 42, "type": "a.b", "at": "2026-12-01T10:00:00+08:00", "member": 7}'
    events = events_from_text(f"{line}\n{good}\n", problems, ZoneInfo("UTC"))
    assert [(e.id, e.member) for e in events] == [("42", "7")]  # the next line still goes in
    assert [(p.line, p.message) for p in problems] == [(1, message)]


def test_a_pipe_is_read_once_whole(tmp_path):
    """`cat members.csv | cmtyflow members import /dev/stdin`: a pipe cannot be read twice
    (the encoding check read it first: events imported nothing, a roster crashed)."""
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as fh:
            fh.write("id,name\nu1,阿明\nu2,Bea\n")

    writer = threading.Thread(target=feed)
    writer.start()
    members = list(read_roster(fifo, []))
    writer.join()
    assert [m["id"] for m in members] == ["u1", "u2"]


def test_a_derived_event_id_stays_the_same_from_one_release_to_the_next():
    """An event without an id gets one from its fields as written. It must not change
    between releases: a file of such events imported again after an upgrade (a daily
    import of a growing export) would otherwise be taken a second time, every event."""
    from cmtyflow.runtime.inputs import parse_event

    event = {"type": "checkin.posted", "member": "u1", "at": "2026-12-01T10:00:00+08:00"}
    assert parse_event(event, ZoneInfo("UTC")).id == "auto-091b8cbcb5f0e8df1158"
    assert parse_event(dict(reversed(event.items())), ZoneInfo("UTC")).id == "auto-091b8cbcb5f0e8df1158"


def test_a_left_column_is_read_as_true_or_false(tmp_path):
    """The text "false" in a `left` column was kept as text, which reads as true: the
    member was taken as gone."""
    path = tmp_path / "m.csv"
    path.write_text("id,left\na,false\nb,true\nc,no\nd,maybe\n", encoding="utf-8")
    problems: list[RowProblem] = []
    rows = list(read_roster(path, problems))
    assert [(r["id"], r["left"]) for r in rows] == [("a", False), ("b", True), ("c", False)]
    assert [str(p) for p in problems] == [f"{path}:5: left must be true or false, not 'maybe'"]


def test_columns_that_spell_a_known_field_otherwise_are_that_field(tmp_path, capsys):
    """An export's 'Opted_Out' (or 'opted-out', 'Name', 'Email') was a custom column: the
    opt-out was ignored and the member messaged, the name printed blank."""
    path = tmp_path / "m.csv"
    path.write_text("ID,Name,Time Zone,Opted_Out,E-mail,Email,City\nx1,Ann,,true,old@x,ann@x,Paris\n", encoding="utf-8")
    assert list(read_roster(path, [])) == [
        {"id": "x1", "name": "Ann", "opted_out": True, "E-mail": "old@x", "email": "ann@x", "City": "Paris"}
    ]
    assert capsys.readouterr().err.strip() == (
        f"note: {path}:1: column 'ID' read as id, column 'Name' read as name, column 'Opted_Out' read as opted_out, "
        "column 'Email' read as email"
    )
    path.write_text("id,email,Email\nx1,a@x,b@x\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"the header names 'email' and 'Email', the same column more than once"):
        list(read_roster(path, []))
