"""The store commands end to end through `cmtyflow ...`: members import|list, emit,
events import, launch, run --once --now, status, report."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from runner_harness import write_playbook

from cmtyflow.cli import main

PLAYBOOK = """
cmtyflow: 1
name: club
timezone: Asia/Shanghai
channels:
  out: {adapter: file, path: "%s"}
roles: {moderators: [m1]}
triggers:
  - {id: ck, event: checkin.posted, flow: ck}
  - {id: alarm, event: report.filed, flow: page}
  - id: poke
    manual: {inputs: {times: {type: integer, default: 1}}}
    flow: poke
flows:
  ck:
    - checkin: {}
    - {id: ok, if: "not checkin.duplicate", send: {channel: out, text: "第{{ state.checkins }}次打卡"}}
  page:
    - {id: page, send: {channel: out, to: roles.moderators, text: "有举报", urgent: true}}
    - {id: ack, wait: {event: report.acknowledged, where: "true", timeout: 1h}}
  poke:
    - repeat:
        times: 2
        steps:
          - {id: hello, send: {channel: out, to: channel, text: "poke {{ run.inputs.times }}"}}
"""

ROSTER = "id,name,timezone\nu1,阿明,Asia/Shanghai\nu2,Bea,Europe/Berlin\nm1,版主,Asia/Shanghai\n"


@pytest.fixture
def club(tmp_path: Path) -> tuple[Path, str]:
    path = write_playbook(tmp_path / "pb", PLAYBOOK % (tmp_path / "out.jsonl"))
    (tmp_path / "members.csv").write_text(ROSTER, encoding="utf-8")
    return path, str(tmp_path / "state.db")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_members_events_launch_run_status_and_report(tmp_path, club, capsys):
    path, state = club
    code, out, _ = cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)
    assert code == 0 and "imported 3 members" in out
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    assert [m["id"] for m in json.loads(out)] == ["u1", "u2", "m1"]
    code, out, _ = cli(capsys, "members", "list", "--state", state)
    # CJK names take two terminal columns a character: the columns stay aligned.
    assert out.splitlines()[1:3] == ["u1  阿明  Asia/Shanghai", "u2  Bea   Europe/Berlin"]

    events = tmp_path / "events.jsonl"
    lines = [
        {"id": "c1", "type": "checkin.posted", "at": "2026-12-01T08:00:00+08:00", "member": "u1"},
        {"id": "c2", "type": "checkin.posted", "at": "2026-12-02T08:00:00+08:00", "member": "u1"},
        {"id": "c3", "type": "checkin.posted", "at": "2026-12-02T09:00:00+08:00", "member": "u1"},
        {"id": "c4", "type": "checkin.posted", "at": "2026-12-02T09:00:00+01:00", "member": "u2"},
        {"id": "r1", "type": "report.filed", "at": "2026-12-02T10:00:00+08:00"},
        {"id": "a1", "type": "report.acknowledged", "at": "2026-12-02T10:12:00+08:00", "member": "m1"},
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines) + "not json\n", encoding="utf-8")
    code, out, err = cli(capsys, "events", "import", str(events), "--state", state)
    assert code == 1 and "queued 6 events, 1 line skipped" in out and ":7:" in err
    code, out, _ = cli(capsys, "events", "import", str(events), "--state", state)
    assert "queued 0 events, 6 duplicates not queued again (an id already queued, by an earlier import or earlier in this file)" in out
    code, out, _ = cli(capsys, "emit", "checkin.posted", "--member", "u2", "--at", "2026-12-03T09:00:00+01:00", "--id", "c5", "--state", state)
    assert (code, out.strip()) == (0, "queued event c5")

    code, _, err = cli(capsys, "launch", str(path), "poke", "--input", "times=x", "--state", state)
    assert code == 1 and "'x' is not an integer" in err
    code, _, err = cli(capsys, "launch", str(path), "ck", "--state", state)
    assert code == 1 and "only manual triggers can be launched" in err
    code, out, _ = cli(capsys, "launch", str(path), "poke", "--input", "times=3", "--id", "L1", "--state", state)
    assert code == 0 and "launch L1 queued" in out

    code, _, err = cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")
    assert code == 0, err
    sent = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    # Events taken days late count for the days they were made: two check-ins each.
    texts = sorted(m["text"] for m in sent)
    assert texts == sorted(["第1次打卡", "第2次打卡", "第1次打卡", "第2次打卡", "有举报", "poke 3", "poke 3"])

    code, out, _ = cli(capsys, "status", "--state", state, "--format", "json")
    doc = json.loads(out)
    assert doc["members"] == 3 and doc["active_runs"] == {} and doc["outbox"]["sent"] == 7
    code, out, _ = cli(capsys, "report", str(path), "--state", state, "--format", "json")
    report = json.loads(out)
    # Only the paging run waited (for its acknowledgement): the check-in and poke runs
    # ended in the input that started them and are not kept, their deliveries are.
    assert report["runs"] == {"done": 1}
    assert report["deliveries"]["per_step"] == {"ok": 4, "page": 1, "hello": 2}
    assert report["checkins"]["participants"] == 2 and report["checkins"]["total"] == 4
    assert report["checkins"]["best_streaks"]["1-2"] == 2  # u1: Dec 1 + Dec 2; u2: Dec 2 + Dec 3
    assert report["acknowledgement"] == {
        "page/ack": {"answered": 1, "timed_out": 0, "median_seconds": 720.0, "max_seconds": 720.0}
    }
    code, out, _ = cli(capsys, "report", "club", "--state", state)
    assert "check-ins: 4 by 2 members" in out and "page/ack: 1 answered, 0 timed out, median 12m00s" in out
    assert out.splitlines()[1] == "runs that waited: done 1"

    # Once a runner has run it, a launch names the playbook, as report does (the file
    # was required: `launch crisis-response declare` failed in the middle of a crisis).
    code, out, err = cli(capsys, "launch", "club", "poke", "--input", "times=2", "--id", "L2", "--state", state)
    assert (code, out.strip()) == (0, "launch L2 queued: club/poke"), err
    code, _, err = cli(capsys, "launch", "clubb", "poke", "--state", state)
    assert (code, err) == (1, "error: no playbook 'clubb' in this state; it knows: club; or give the playbook's file\n")
    code, _, err = cli(capsys, "launch", "nowhere/club.yaml", "poke", "--state", state)
    assert (code, err) == (1, "error: nowhere/club.yaml: no such file\n")
    code, _, err = cli(capsys, "launch", "club", "poke", "--state", str(tmp_path / "none.db"))
    assert code == 1 and "no state at" in err


def test_the_shipped_events_say_which_line_repeats_an_id_on_a_new_state(tmp_path, capsys):
    """The example file repeats an id on purpose: on a new state that is a duplicate
    earlier in the file, not an event the state had ("1 seen before")."""
    example = Path(__file__).resolve().parents[2] / "examples" / "onboarding.events.jsonl"
    code, out, _ = cli(capsys, "events", "import", str(example), "--state", str(tmp_path / "state.db"))
    assert code == 0
    assert out.strip().endswith(", 1 duplicate not queued again (an id already queued, by an earlier import or earlier in this file)")


def test_a_roster_naming_a_member_twice_is_imported_with_a_note(tmp_path, capsys):
    """A member in two rows of one file (exported from two groups) was merged without a
    word, and the count said rows, not members."""
    (tmp_path / "m.csv").write_text("id,name,tags\nu1,Ann,reading\nu2,Bob,\nu1,Ann L,fitness\n", encoding="utf-8")
    state = str(tmp_path / "state.db")
    code, out, err = cli(capsys, "members", "import", str(tmp_path / "m.csv"), "--state", state)
    assert code == 0 and out.startswith("imported 2 members (3 rows) into ")
    assert err == f"note: {tmp_path / 'm.csv'}:4: member u1 again: this row's fields are merged over the earlier row's\n"
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    (ann,) = [m for m in json.loads(out) if m["id"] == "u1"]
    assert ann["name"] == "Ann L"


def test_reading_commands_refuse_a_missing_state(tmp_path, capsys):
    code, _, err = cli(capsys, "status", "--state", str(tmp_path / "none.db"))
    assert code == 1 and "no state at" in err
    assert not (tmp_path / "none.db").exists()


def test_a_folder_given_as_the_state_is_named(tmp_path, capsys):
    folder = tmp_path / "states"
    folder.mkdir()
    for args in (("status",), ("members", "import", str(tmp_path / "m.csv"))):
        (tmp_path / "m.csv").write_text("id\nu1\n", encoding="utf-8")
        code, _, err = cli(capsys, *args, "--state", str(folder))
        assert (code, err) == (1, f"error: {folder}: a folder; the state is a file in it, e.g. {folder / 'state.db'}\n")


def test_report_counts_today_where_each_member_is(tmp_path, capsys):
    """'Checked in today' and the current streaks use each member's local date, as the
    engine does: at any instant, members at UTC+14 and UTC-11 who checked in on their
    own today are both counted, though at most one of their dates is the UTC date."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    path = write_playbook(tmp_path / "pb", PLAYBOOK % (tmp_path / "out.jsonl"))
    state = str(tmp_path / "state.db")
    (tmp_path / "members.csv").write_text(
        "id,name,timezone\neast,E,Pacific/Kiritimati\nwest,W,Pacific/Pago_Pago\n", encoding="utf-8"
    )
    assert cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)[0] == 0
    now = datetime.now(UTC)
    for member, zone in (("east", "Pacific/Kiritimati"), ("west", "Pacific/Pago_Pago")):
        local = now.astimezone(ZoneInfo(zone)).replace(microsecond=0)
        assert cli(capsys, "emit", "checkin.posted", "--member", member, "--at", local.isoformat(), "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", now.isoformat())[0] == 0
    code, out, _ = cli(capsys, "report", "club", "--state", state, "--format", "json")
    assert code == 0
    checkins = json.loads(out)["checkins"]
    assert checkins["checked_in_today"] == 2
    assert checkins["current_streaks"]["1-2"] == 2


def test_report_as_of_a_rehearsed_time(tmp_path, capsys):
    """After rehearsing with run --once --now, report --now reads 'today' and the current
    streaks as of then; without it, a last check-in after the real today (the state is
    ahead of the clock) is not a current streak (it counted as one)."""
    path = write_playbook(tmp_path / "pb", PLAYBOOK % (tmp_path / "out.jsonl"))
    state = str(tmp_path / "state.db")
    (tmp_path / "members.csv").write_text("id,name,timezone\nann,A,Asia/Shanghai\n", encoding="utf-8")
    assert cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)[0] == 0
    for day in ("2030-01-01", "2030-01-02"):
        assert cli(capsys, "emit", "checkin.posted", "--member", "ann", "--at", f"{day}T20:00:00+08:00", "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2030-01-05T09:00:00+08:00")[0] == 0

    def checkins(*now: str) -> dict[str, Any]:
        code, out, err = cli(capsys, "report", "club", "--state", state, "--format", "json", *now)
        assert code == 0, err
        return json.loads(out)["checkins"]  # type: ignore[no-any-return]

    on_the_day = checkins("--now", "2030-01-02T21:00:00+08:00")
    assert (on_the_day["checked_in_today"], on_the_day["current_streaks"]["1-2"]) == (1, 1)
    later = checkins("--now", "2030-01-05T09:00:00+08:00")
    assert (later["checked_in_today"], later["current_streaks"]["0"]) == (0, 1)
    assert checkins()["current_streaks"]["0"] == 1  # today is 2026 or so: not current
    code, _, err = cli(capsys, "report", "club", "--state", state, "--now", "2030-01-05")
    assert (code, err) == (1, "error: --now '2030-01-05' needs a UTC offset, e.g. 2030-01-05T00:00+08:00\n")


def test_report_refuses_a_playbook_the_state_does_not_know(club, capsys):
    path, state = club
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")[0] == 0
    code, _, err = cli(capsys, "report", "Club", "--state", state)
    assert code == 1 and "no playbook 'Club' in this state; it knows: club" in err
    code, _, err = cli(capsys, "report", str(path.parent / "missing.yaml"), "--state", state)
    assert code == 1 and "(no such file)" in err
    assert cli(capsys, "report", "club", "--state", state)[0] == 0  # known, though nothing happened yet


def test_read_only_commands_refuse_an_empty_state_file(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for command in (["status"], ["outbox"], ["members", "list"], ["report", "club"]):
        code, _, err = cli(capsys, *command, "--state", str(empty))
        assert code == 1 and "(an empty file)" in err, command
    assert empty.stat().st_size == 0  # not written


def test_outbox_options_before_retry_are_refused_not_dropped(club, capsys):
    path, state = club
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")[0] == 0
    code, _, err = cli(capsys, "outbox", "--state", state, "--status", "failed", "retry", "--all")
    assert code == 1 and "--status before 'retry'" in err
    code, out, _ = cli(capsys, "outbox", "--state", state, "retry", "--all", "--status", "failed")
    assert code == 0 and "queued 0 messages again" in out


def _opted_out_u1(tmp_path: Path, club: tuple[Path, str], capsys: Any, rows: str) -> Path:
    """A roster (``rows`` under an id,name,opted_out header) imported, then u1's opt-out
    recorded by an event the runner takes; returns the roster file."""
    path, state = club
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,opted_out\n" + rows, encoding="utf-8")
    assert cli(capsys, "members", "import", str(roster), "--state", state)[0] == 0
    assert cli(capsys, "emit", "member.opted_out", "--member", "u1", "--id", "o1", "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")[0] == 0
    return roster


def test_an_older_roster_export_does_not_undo_a_recorded_opt_out(tmp_path, club, capsys):
    """SPEC 5.2: nothing goes out after a member's opt-out is recorded. Importing the
    roster again with opted_out=false kept nobody from receiving a message before."""
    path, state = club
    roster = _opted_out_u1(tmp_path, club, capsys, "u1,阿明,false\nu2,Bea,false\n")
    code, out, err = cli(capsys, "members", "import", str(roster), "--state", state)
    assert code == 0 and "imported 2 members" in out
    assert "kept the opt-out of 1 member the file says have not opted out (u1)" in err
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    assert {m["id"]: m.get("opted_out") for m in json.loads(out)} == {"u1": True, "u2": False}
    # The way back in is an event.
    assert cli(capsys, "emit", "member.opted_in", "--member", "u1", "--id", "i1", "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:01:00+08:00")[0] == 0
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    assert {m["id"]: m.get("opted_out") for m in json.loads(out)}["u1"] is False


def test_run_roster_does_not_undo_a_recorded_opt_out_either(tmp_path, club, capsys):
    """``run --roster`` imports as ``members import`` does (it cleared the opt-out)."""
    path, state = club
    roster = _opted_out_u1(tmp_path, club, capsys, "u1,阿明,false\n")
    code, _, err = cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:01:00+08:00",
                       "--roster", str(roster))
    assert code == 0 and "kept the opt-out of 1 member the file says have not opted out (u1)" in err
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    assert {m["id"]: m.get("opted_out") for m in json.loads(out)} == {"u1": True}


def test_members_import_commits_as_it_goes_and_says_how_far_it_got(tmp_path, club, capsys, monkeypatch):
    """Each batch is its own transaction, so a runner beside a large import never waits
    for all of it (one transaction of 400,000 rows outlasted the runner's 10 s wait for
    the lock, and the runner stopped). A file that breaks part way leaves the rows
    before it imported, and says so."""
    import cmtyflow.cli.state as state_cli

    monkeypatch.setattr(state_cli, "IMPORT_BATCH", 2)
    path, state = club
    roster = tmp_path / "roster.csv"
    roster.write_text('id,name\nu1,A\nu2,B\nu3,C\nu4,D\nu5,"E\n', encoding="utf-8")
    commits: list[int] = []
    from cmtyflow.store.sqlite import SqliteStore

    real = SqliteStore.put_members
    monkeypatch.setattr(SqliteStore, "put_members", lambda self, rows: commits.append(len(list(rows))) or real(self, rows))
    code, _, err = cli(capsys, "members", "import", str(roster), "--state", state)
    assert code == 1
    assert "note: the 4 rows before it were imported; import the file again to finish" in err
    assert "roster.csv:6: unexpected end of data" in err
    assert commits == [2, 2]
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json")
    assert [m["id"] for m in json.loads(out)] == ["u1", "u2", "u3", "u4"]


def test_json_nested_past_pythons_limit_is_bad_input_not_a_crash(tmp_path, club, capsys):
    """A RecursionError from json.loads stopped these commands as a fault of their own
    (exit 3, a crash log); the intake already answered 400 "nested too deeply"."""
    _, state = club
    deep = "[" * 100_000 + "]" * 100_000
    events = tmp_path / "deep.jsonl"
    events.write_text('{"type": "a.b", "at": "2026-12-01T10:00:00+08:00", "data": {"x": ' + deep + '}}\n', encoding="utf-8")
    code, _, err = cli(capsys, "events", "import", str(events), "--state", state)
    assert code == 1 and "deep.jsonl:1: nested too deeply: line skipped" in err
    roster = tmp_path / "deep_m.jsonl"
    roster.write_text('{"id": "a", "x": ' + deep + '}\n{"id": "b"}\n', encoding="utf-8")
    code, out, err = cli(capsys, "members", "import", str(roster), "--state", state)
    assert code == 1 and "deep_m.jsonl:1: nested too deeply: row skipped" in err and "imported 1 members" in out
    code, _, err = cli(capsys, "emit", "a.b", "--data", '{"x": ' + deep + "}", "--state", state)
    assert code == 1 and "error: --data is not JSON: nested too deeply" in err


def test_members_list_streams_the_roster_and_keeps_a_row_to_a_line(tmp_path, capsys):
    """Listed from the store as it is read (200,000 members held whole took 790 MB for
    JSON); a name with a line break in it broke the table's lines."""
    state = str(tmp_path / "s.db")
    roster = tmp_path / "m.csv"
    roster.write_text('id,name,tags\nu1,"A\nB",x;y\nu2,王小明,\nu3,C,x\n', encoding="utf-8")
    assert cli(capsys, "members", "import", str(roster), "--state", state)[0] == 0
    code, out, _ = cli(capsys, "members", "list", "--state", state)
    assert code == 0 and out.splitlines() == [
        "id  name    timezone  tags  opted out", "u1  A B               x;y", "u2  王小明", "u3  C                 x",
    ]
    code, out, _ = cli(capsys, "members", "list", "--state", state, "--format", "json", "--tag", "x")
    expected = [{"id": "u1", "name": "A\nB", "tags": ["x", "y"]}, {"id": "u3", "name": "C", "tags": ["x"]}]
    assert out == json.dumps(expected, ensure_ascii=False, indent=2) + "\n"
    assert cli(capsys, "members", "list", "--state", state, "--format", "json", "--tag", "none")[1] == "[]\n"
    assert cli(capsys, "members", "list", "--state", state, "--limit", "1")[1].splitlines()[1:] == ["u1  A B             x;y"]


def test_an_event_time_without_offset_is_refused_until_a_timezone_is_known(tmp_path, club, capsys, monkeypatch):
    """Imported before the first run, such a time was read as UTC, silently: 8 hours off
    for a Shanghai playbook, where the dry run read it in the playbook's timezone."""
    path, state = club
    monkeypatch.delenv("TZ", raising=False)
    events = tmp_path / "naive.jsonl"
    events.write_text('{"id": "n1", "type": "checkin.posted", "at": "2026-12-01T10:00:00", "member": "u1"}\n', encoding="utf-8")
    code, out, err = cli(capsys, "events", "import", str(events), "--state", state)
    assert code == 1 and "at '2026-12-01T10:00:00' has no UTC offset, and no timezone is known to read it in" in err
    code, _, err = cli(capsys, "emit", "checkin.posted", "--member", "u1", "--at", "2026-12-01T10:00:00", "--state", state)
    assert code == 1 and "error: event: at '2026-12-01T10:00:00' has no UTC offset" in err
    assert cli(capsys, "events", "import", str(events), "--state", state, "--timezone", "Asia/Shanghai")[0] == 0
    # Once a runner has run the (Shanghai) playbook on the state, its timezone is known.
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-01T09:00:00+08:00")[0] == 0
    events.write_text('{"id": "n2", "type": "checkin.posted", "at": "2026-12-01T11:00:00", "member": "u1"}\n', encoding="utf-8")
    assert cli(capsys, "events", "import", str(events), "--state", state)[0] == 0
    from cmtyflow.store.sqlite import SqliteStore

    with SqliteStore(state) as store:
        assert [e.at.isoformat() for e in store.pending_events(datetime.fromisoformat("2026-12-02T00:00:00+08:00"))] == [
            "2026-12-01T10:00:00+08:00", "2026-12-01T11:00:00+08:00",
        ]


def test_report_median_answer_time_of_an_even_count_is_the_middle(tmp_path, club, capsys):
    path, state = club
    assert cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)[0] == 0
    events = tmp_path / "ev.jsonl"
    events.write_text(
        '{"id": "r1", "type": "report.filed", "at": "2026-12-02T10:00:00+08:00"}\n'
        '{"id": "a1", "type": "report.acknowledged", "at": "2026-12-02T10:10:00+08:00", "member": "m1"}\n'
        '{"id": "r2", "type": "report.filed", "at": "2026-12-02T11:00:00+08:00"}\n'
        '{"id": "a2", "type": "report.acknowledged", "at": "2026-12-02T11:20:00+08:00", "member": "m1"}\n',
        encoding="utf-8",
    )
    assert cli(capsys, "events", "import", str(events), "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-02T12:00:00+08:00")[0] == 0
    code, out, _ = cli(capsys, "report", "club", "--state", state, "--format", "json")
    assert json.loads(out)["acknowledgement"]["page/ack"] == {
        "answered": 2, "timed_out": 0, "median_seconds": 900.0, "max_seconds": 1200.0,
    }


def test_retrying_an_in_doubt_message_on_a_platform_that_cannot_drop_repeats_warns(tmp_path, capsys):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    at = datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC"))
    with SqliteStore(state) as store:
        store.apply(Decision(messages=[
            QueuedMessage(key, "pb", "r", "f", "s", 1, "ch", adapter, None, "channel", "hi", "plain", None, False, at, at)
            for key, adapter in (("a" * 32, "telegram"), ("b" * 32, "webhook"))
        ]))
        store.claim_due_messages(at)
        assert len(store.mark_in_doubt()) == 2
    code, out, err = cli(capsys, "outbox", "retry", "aaaa", "bbbb", "--state", state)
    assert code == 0 and "queued 2 messages again" in out
    assert "aaaaaaaaaaaa may have arrived already (in doubt), and its platform cannot drop a repeat" in err
    assert "bbbb" not in err  # the webhook sends an Idempotency-Key


def test_outbox_says_what_a_killed_runner_left_being_sent(tmp_path, capsys):
    """After kill -9 the rows being sent stay inflight until the next start marks them in
    doubt; `outbox` said "nothing failed, dead or in doubt" meanwhile."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.runtime.runner import StateLock
    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    at = datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC"))
    with SqliteStore(state) as store:
        store.apply(Decision(messages=[
            QueuedMessage("a" * 32, "pb", "r", "f", "s", 1, "ch", "telegram", None, "channel", "hi", "plain", None, False, at, at)
        ]))
        store.claim_due_messages(at)
    code, _, err = cli(capsys, "outbox", "--state", state)
    assert code == 0 and "note: 1 message was being sent when the runner stopped; the next `cmtyflow run` settles" in err
    lock = StateLock(state)
    lock.acquire()  # a runner holds the state: it is sending them now
    try:
        assert "being sent" not in cli(capsys, "outbox", "--state", state)[2]
    finally:
        lock.release()
    assert not StateLock.held(tmp_path / "never-run.db") and not (tmp_path / "never-run.db.lock").exists()


def test_status_says_a_runner_that_started_and_never_stopped_is_not_running(tmp_path, capsys):
    """After kill -9 `status` said "runner: started at ...", as for a live runner."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cmtyflow.runtime.runner import StateLock
    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    with SqliteStore(state) as store:
        store.record(datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC")), "runner_started", pid=1)
    code, out, _ = cli(capsys, "status", "--state", state)
    assert code == 0 and "; not running now (it stopped without a clean stop" in out
    lock = StateLock(state)
    lock.acquire()  # a live runner
    try:
        code, out, _ = cli(capsys, "status", "--state", state)
        assert "runner: started at" in out and "not running" not in out
    finally:
        lock.release()


def test_a_launch_refused_by_a_runner_without_its_playbook_says_so_when_launched_again(tmp_path, club, capsys):
    path, state = club
    assert cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)[0] == 0
    other = write_playbook(tmp_path / "other", PLAYBOOK.replace("name: club", "name: other") % (tmp_path / "o.jsonl"))
    assert cli(capsys, "launch", str(path), "poke", "--id", "NL1", "--state", state)[0] == 0
    # A runner of the other playbook takes the launch and refuses it.
    assert cli(capsys, "run", str(other), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")[0] == 0
    code, _, err = cli(capsys, "launch", str(path), "poke", "--id", "NL1", "--state", state)
    assert code == 1
    # When: the time the runner took it (it printed "refused at None").
    assert "launch NL1 was refused at 2026-12-04T12:00:00+08:00" in err
    assert "no such manual trigger among the playbooks this runner has loaded" in err
    assert cli(capsys, "launch", str(path), "poke", "--id", "NL2", "--state", state)[0] == 0


def test_a_launch_outside_the_playbooks_window_is_refused(tmp_path, capsys):
    """SPEC 1: triggers fire only inside the window; a manual one did (launch said
    "queued", the run sent). The runner refuses it too, by the date it was made."""
    from cmtyflow.engine.core import Engine
    from cmtyflow.engine.model import Launch
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.store.memory import MemoryStore

    path = write_playbook(tmp_path / "pb", PLAYBOOK.replace("timezone: Asia/Shanghai\n", "timezone: Asia/Shanghai\nwindow: {start: 2026-01-01, days: 3}\n", 1) % (tmp_path / "out.jsonl"))
    state = str(tmp_path / "state.db")
    code, _, err = cli(capsys, "launch", str(path), "poke", "--state", state)
    assert code == 1 and "club: its window is 2026-01-01 to 2026-01-03 (Asia/Shanghai); today is " in err
    assert "trigger 'poke' fires only inside it" in err

    _, (prog,) = load_programs([path])
    engine, store = Engine([prog]), MemoryStore()
    inside, after = datetime.fromisoformat("2026-01-03T23:00:00+08:00"), datetime.fromisoformat("2026-01-04T00:00:00+08:00")
    assert engine.handle(store, after, Launch("club", "poke", "in", inside)).counters == {"runs_started": 1, "runs_done": 1}
    late = engine.handle(store, after, Launch("club", "poke", "out", after))
    assert (late.runs, late.counters) == ({}, {"outside_window": 1})
    assert [n["kind"] for n in late.notes] == ["launch_outside_window"]


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1_000.5"])
def test_launch_number_inputs_are_finite_numbers(tmp_path, club, capsys, value):
    path, state = club
    spec = PLAYBOOK.replace("{times: {type: integer, default: 1}}", "{times: {type: number, default: 1}}")
    path = write_playbook(tmp_path / "num", spec % (tmp_path / "out.jsonl"))
    code, _, err = cli(capsys, "launch", str(path), "poke", "--input", f"times={value}", "--state", state)
    assert code == 1 and f"--input 'times': '{value}' is not a number" in err


@pytest.mark.parametrize("value", ["1_000", "12345678901234567890123", "1.0", ""])
def test_launch_integer_inputs_are_plain_digits(tmp_path, club, capsys, value):
    path, state = club
    code, _, err = cli(capsys, "launch", str(path), "poke", "--input", f"times={value}", "--state", state)
    assert code == 1 and f"--input 'times': '{value}' is not an integer" in err


def _ran(tmp_path, capsys, spec: str, roster: str, emitted: list[tuple[str, str, str]], nows: list[str]) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    """``spec`` (a file channel's path left as %s) on a new state with ``roster`` (CSV)
    imported, each (type, member, id) emitted at 10:00, and a runner run once at each
    of ``nows``; returns the playbook's path and the state."""
    path = write_playbook(tmp_path / "pb", spec % (tmp_path / "out.jsonl"))
    state = str(tmp_path / "state.db")
    (tmp_path / "m.csv").write_text(roster, encoding="utf-8")
    assert cli(capsys, "members", "import", str(tmp_path / "m.csv"), "--state", state)[0] == 0
    for event_type, member, eid in emitted:
        assert cli(capsys, "emit", event_type, "--member", member, "--id", eid, "--at", "2026-12-01T10:00:00+00:00",
                   "--state", state)[0] == 0
    for now in nows:
        assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", now)[0] == 0
    return path, state


def test_status_shows_failed_runs_with_why_and_starts_not_made(tmp_path, capsys):
    """SPEC 2: a failed run "is reported"; SPEC 3: a firing dropped is "counted". Both
    were only in the runner's log and the state's counters: status showed neither."""
    spec = """
cmtyflow: 1
name: fl
timezone: UTC
channels:
  out: {adapter: file, path: "%s"}
audience: {where: "'in' in member.tags"}
triggers:
  - {id: go, event: go.now, flow: f}
flows:
  f:
    - {id: hi, send: {channel: out, text: "hi"}}
    - {id: ww, wait: 1h}
    - {id: city, send: {channel: out, text: "{{ member.city }}"}}
"""
    _, state = _ran(tmp_path, capsys, spec, "id,name,tags\nu1,Ann,in\nu2,Bo,out\n",
                    [("go.now", "u1", "a"), ("go.now", "u1", "b"), ("go.now", "u2", "c")],
                    ["2026-12-01T10:00:00+00:00", "2026-12-01T11:00:00+00:00"])
    code, out, _ = cli(capsys, "status", "--state", state)
    assert code == 0
    assert "runs failed: 1 (each is reported, the others went on); the last:" in out
    assert "  2026-12-01T11:00:00+00:00  fl/f at city member u1: " in out and "city" in out.split("at city member u1: ")[1]
    assert "starts not made: dropped, a run was still active (mode single) [go] 1, outside the audience 1" in out
    doc = json.loads(cli(capsys, "status", "--state", state, "--format", "json")[1])
    assert doc["runs_failed"]["count"] == 1 and doc["runs_failed"]["last"][0]["step"] == "city"
    assert doc["not_started"] == {"dropped:go": 1, "outside_audience": 1}


def test_report_json_says_a_goal_per_run_with_a_null_step(tmp_path, capsys):
    """As a goal's missing variant is null: the step of the per-run line was ""."""
    spec = """
cmtyflow: 1
name: gl
timezone: UTC
channels:
  out: {adapter: file, path: "%s"}
goals:
  first_post: {event: message.posted, within: 7d}
triggers:
  - {id: go, event: member.joined, flow: f}
flows:
  f:
    - {id: hi, send: {channel: out, text: "hi"}}
"""
    path, state = _ran(tmp_path, capsys, spec, "id,name\nu1,Ann\n", [("member.joined", "u1", "j")],
                       ["2026-12-01T10:00:00+00:00"])
    goals = json.loads(cli(capsys, "report", str(path), "--state", state, "--format", "json")[1])["goals"]
    assert [(g["step"], g["variant"], g["exposed"]) for g in goals] == [(None, None, 1), ("hi", None, 1)]


def test_event_times_without_an_offset_are_in_the_playbooks_timezone(tmp_path, club, capsys, monkeypatch):
    """SPEC 2; the intake read them so, `events import` and `emit` in TZ or UTC: the same
    event went in eight hours apart."""
    from cmtyflow.store.sqlite import SqliteStore

    monkeypatch.delenv("TZ", raising=False)
    path, state = club
    assert cli(capsys, "members", "import", str(tmp_path / "members.csv"), "--state", state)[0] == 0
    assert cli(capsys, "run", str(path), "--state", state, "--once", "--now", "2026-12-04T12:00:00+08:00")[0] == 0
    events = tmp_path / "naive.jsonl"
    events.write_text('{"id": "n1", "type": "checkin.posted", "at": "2026-12-05T10:00:00", "member": "u1"}\n', encoding="utf-8")
    assert cli(capsys, "events", "import", str(events), "--state", state)[0] == 0
    assert cli(capsys, "emit", "checkin.posted", "--member", "u2", "--at", "2026-12-05T11:00:00", "--id", "n2", "--state", state)[0] == 0
    assert cli(capsys, "emit", "checkin.posted", "--member", "u2", "--at", "2026-12-05T12:00:00", "--id", "n3",
               "--timezone", "Europe/Berlin", "--state", state)[0] == 0
    with SqliteStore(state) as store:
        found = {e.id: e.at.isoformat() for e in store.pending_events(datetime.fromisoformat("2027-01-01T00:00:00+00:00"))}
    assert found == {"n1": "2026-12-05T10:00:00+08:00", "n2": "2026-12-05T11:00:00+08:00", "n3": "2026-12-05T12:00:00+01:00"}


def test_status_says_how_many_timers_there_are_beyond_the_ten_it_shows(tmp_path, capsys):
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from cmtyflow.engine.model import Decision, Timer
    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    at = datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC"))
    with SqliteStore(state) as store:
        store.apply(Decision(timers=[Timer(f"t{i:02d}", f"r{i}", at + timedelta(hours=i), "resume", at) for i in range(12)]))
    code, out, _ = cli(capsys, "status", "--state", state)
    assert code == 0 and "next timers (the first 10 of 12):" in out
    code, out, _ = cli(capsys, "status", "--state", state, "--format", "json")
    doc = json.loads(out)
    assert (doc["timers"], len(doc["next_timers"])) == (12, 10)


def test_a_sigterm_stops_an_import_as_ctrl_c_does_and_says_how_far_it_got(tmp_path, capsys, monkeypatch):
    """It ended the process at once, without a word (exit 143): the note that says how
    far it got, and to import again, was for Ctrl-C only."""
    import signal

    from cmtyflow.cli import state as state_cli
    from cmtyflow.store.sqlite import SqliteStore

    monkeypatch.setattr(state_cli, "IMPORT_BATCH", 2)
    lines = [json.dumps({"id": f"e{i}", "type": "a.b", "at": "2026-12-01T10:00:00+00:00"}) for i in range(7)]
    (tmp_path / "ev.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    add = SqliteStore.add_events
    calls = []

    def add_then_terminated(self, events):  # type: ignore[no-untyped-def]
        calls.append(1)
        counts = add(self, events)
        if len(calls) == 3:
            # As `kill` or systemd would, just after the third batch's commit: the stop
            # waits for its count (the note said 4, and the next import "4 seen before"
            # of the 6 queued).
            signal.raise_signal(signal.SIGTERM)
        return counts

    monkeypatch.setattr(SqliteStore, "add_events", add_then_terminated)
    state = str(tmp_path / "state.db")
    code, _, err = cli(capsys, "events", "import", str(tmp_path / "ev.jsonl"), "--state", state, "--timezone", "UTC")
    assert code == 130 and "note: stopped after queuing 6 events (0 duplicates not queued again); import the file again" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    monkeypatch.setattr(SqliteStore, "add_events", add)
    code, out, _ = cli(capsys, "events", "import", str(tmp_path / "ev.jsonl"), "--state", state, "--timezone", "UTC")
    assert (code, out.strip()) == (0, "queued 1 event, 6 duplicates not queued again (an id already queued, by an earlier import or earlier in this file)")


def test_ctrl_c_just_after_a_roster_batch_commits_is_counted_in_the_note(tmp_path, capsys, monkeypatch):
    """A stop between a batch's commit and its count said one batch fewer than were
    imported; it now waits for the count."""
    import signal

    from cmtyflow.cli import state as state_cli
    from cmtyflow.store.sqlite import SqliteStore

    monkeypatch.setattr(state_cli, "IMPORT_BATCH", 2)
    (tmp_path / "m.csv").write_text("id,name\n" + "".join(f"m{i},张{i}\n" for i in range(5)), encoding="utf-8")
    put = SqliteStore.put_members
    calls = []

    def put_then_interrupted(self, rows):  # type: ignore[no-untyped-def]
        calls.append(1)
        n = put(self, rows)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return n

    monkeypatch.setattr(SqliteStore, "put_members", put_then_interrupted)
    state = str(tmp_path / "state.db")
    code, _, err = cli(capsys, "members", "import", str(tmp_path / "m.csv"), "--state", state)
    assert code == 130 and "note: stopped after importing 4 rows; import the file again" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    store = SqliteStore(tmp_path / "state.db")
    assert len(list(store.iter_members())) == 4
    store.close()


def test_outbox_text_reads_its_rows_a_page_at_a_time_and_aligns_wide_characters(tmp_path, capsys):
    """A text listing with a large --limit held every row, its text too (a listing of a
    million dead messages); it now reads them twice, a page at a time, as `members
    list`. Columns stay aligned with names in Chinese."""
    import tracemalloc
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cmtyflow.engine.model import Decision, QueuedMessage
    from cmtyflow.store.sqlbase import PAGE
    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    at = datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("UTC"))
    n = 8 * PAGE
    text = "通知" * 500  # 2 KB each as a str
    with SqliteStore(state) as store:
        store.apply(Decision(messages=[
            QueuedMessage(f"{i:032x}", "pb", "r", "f", "s", 1, "ch", "webhook", "张三" if i % 2 else "m1", "member",
                          text, "plain", None, False, at, at)
            for i in range(n)
        ]))
        claimed = store.claim_due_messages(at, limit=n)
        store.finish_messages([(row.message.key, "dead", {"attempts": 1, "last_error": "HTTP 403"}) for row in claimed])
    tracemalloc.start()
    try:
        code, out, _ = cli(capsys, "outbox", "--state", state, "--limit", str(n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = out.splitlines()
    assert code == 0 and len(lines) == n + 1
    assert peak < 2 * PAGE * 4000  # a page of rows or two at a time, not all eight
    # The channel's column starts at the same terminal column in every row (张三 is 4 wide).
    assert {len(line[: line.index(" ch ")].replace("张三", "xxxx")) for line in lines[1:]} == {
        len(lines[0][: lines[0].index(" channel ")])
    }


def test_emit_takes_a_member_object_and_notes_an_unknown_member(tmp_path, capsys):
    """SPEC 3: an event's member is an id or an object that updates the roster. `emit
    --member '{...}'` took the whole JSON text for an id: a member with that id, greeted
    by it in the group. An id the roster does not know is taken, with a note (a typo
    showed only as a line in the runner's log); events that add a member are not noted."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cmtyflow.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    code, _, err = cli(capsys, "emit", "member.joined", "--member", '{"id": "m12", "name": "小明 😀", "tags": ["打卡"]}',
                       "--at", "2026-12-03T14:00:00+08:00", "--state", state)
    assert code == 0 and err == ""
    with SqliteStore(state) as store:
        (event,) = store.pending_events(datetime(2026, 12, 4, tzinfo=ZoneInfo("UTC")))
    assert (event.member, event.member_update) == ("m12", {"id": "m12", "name": "小明 😀", "tags": ["打卡"]})
    code, _, err = cli(capsys, "emit", "member.joined", "--member", "m98", "--state", state)
    assert code == 0 and err == ""
    code, _, err = cli(capsys, "emit", "message.posted", "--member", "m97", "--state", state)
    assert code == 0 and "note: no member 'm97' in the roster yet" in err
    # An opt-out for a typo made a record of the typo; the member meant was never opted out.
    code, _, err = cli(capsys, "emit", "member.opted_out", "--member", "m1O", "--state", state)
    assert code == 0 and "note: no member 'm1O' in the roster yet; check the id" in err
    code, _, err = cli(capsys, "emit", "member.joined", "--member", '{"id": ', "--state", state)
    assert code == 1 and "--member is not an id nor a JSON object" in err


def test_launch_refuses_a_missing_input_that_has_no_default(tmp_path, capsys):
    """An input without a default was taken as none: a launched announcement went out
    to the group as "📢 " alone."""
    path = tmp_path / "announce.yaml"
    path.write_text(
        "cmtyflow: 1\nname: announce\ntimezone: Asia/Shanghai\nchannels:\n  group: {adapter: console}\n"
        "triggers:\n  - id: post\n    manual:\n      inputs:\n        title: {type: string, description: 公告标题}\n"
        "        pin: {type: boolean, default: false}\n    flow: f\n"
        "flows:\n  f:\n    - {id: s, send: {text: \"📢 {{ run.inputs.title }}\"}}\n",
        encoding="utf-8",
    )
    state = str(tmp_path / "state.db")
    code, _, err = cli(capsys, "launch", str(path), "post", "--input", "pin=true", "--state", state)
    assert code == 1 and "trigger 'post' needs --input title=... — 公告标题" in err
    code, out, _ = cli(capsys, "launch", str(path), "post", "--input", "title=周五读书会", "--state", state)
    assert code == 0 and "queued" in out


def test_a_file_channel_that_cannot_be_written_stops_run_with_a_clear_error(tmp_path, capsys):
    """A path under a folder that cannot be made, or a folder itself: the runner hit
    "a bug" (exit 3, a traceback in a crash log). It is now said, and nothing starts."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "flat").write_text("", encoding="utf-8")
    for path, why in ((tmp_path / "flat" / "out.jsonl", "flat: a file, not a folder"), (tmp_path / "adir", "Is a directory")):
        pb = tmp_path / "hook.yaml"
        pb.write_text(
            f"cmtyflow: 1\nname: hook\ntimezone: Asia/Shanghai\nchannels:\n  bad: {{adapter: file, path: '{path}'}}\n"
            "triggers:\n  - {id: j, event: member.joined, flow: f}\nflows:\n  f:\n    - {id: hi, send: {text: hi}}\n",
            encoding="utf-8",
        )
        code, _, err = cli(capsys, "run", str(pb), "--once", "--state", str(tmp_path / "s.db"))
        assert code == 1 and "error: channel 'bad' (file): cannot open " in err and why in err, err


def test_status_shows_the_next_firings_and_its_times_in_the_playbooks_timezone(tmp_path, capsys):
    """The nightly reminder and the weekly leaderboard were nowhere in `status`; timers
    showed in each member's own offset (07:30+05:30, 02:00+00:00: one instant, read as
    five), and the runner's start in UTC."""
    pb = write_playbook(tmp_path / "pb", """
        cmtyflow: 1
        name: night
        timezone: Asia/Shanghai
        channels:
          dm: {adapter: console}
        triggers:
          - {id: nightly, cron: "0 21 * * *", timezone: member, for_each: audience, flow: f}
          - {id: weekly, cron: "0 20 * * 0", flow: g}
          - {id: j, event: member.joined, flow: w}
        flows:
          f:
            - {id: r, send: {text: "打卡了吗"}}
          g:
            - {id: b, send: {text: "榜单"}}
          w:
            - wait: 1d
            - {id: n, send: {text: "hi"}}
        """)
    (tmp_path / "m.csv").write_text("id,timezone\nsh,Asia/Shanghai\nld,Europe/London\n", encoding="utf-8")
    state = str(tmp_path / "state.db")
    assert cli(capsys, "members", "import", str(tmp_path / "m.csv"), "--state", state)[0] == 0
    assert cli(capsys, "emit", "member.joined", "--member", "ld", "--at", "2026-12-02T09:00:00+00:00", "--state", state)[0] == 0
    assert cli(capsys, "run", str(pb), "--once", "--state", state, "--now", "2026-12-02T09:00:00+00:00")[0] == 0
    code, out, _ = cli(capsys, "status", "--state", state)
    assert code == 0
    assert "runner: stopped at 2026-12-02T17:00:00+08:00" in out
    assert "  2026-12-03T17:00:00+08:00  wait     night/j:" in out  # the London member's day, in Shanghai time
    firings = out.split("next firings:\n")[1].splitlines()[:3]
    assert firings == [
        "  2026-12-02T21:00:00+08:00  night/nightly",
        "  2026-12-03T05:00:00+08:00  night/nightly (2026-12-02T21:00+00:00 Europe/London time)",
        "  2026-12-06T20:00:00+08:00  night/weekly",
    ]
    code, out, _ = cli(capsys, "status", "--state", state, "--format", "json")
    doc = json.loads(out)
    assert doc["next_firings"][1] == {"due": "2026-12-02T21:00:00+00:00", "playbook": "night", "trigger": "nightly",
                                      "timezone": "Europe/London"}


def test_a_second_ctrl_c_stops_an_import_whose_batch_waits(tmp_path, capsys, monkeypatch):
    """The first stop waits for the batch and its count; a second one stops at once
    (each was held, so a batch that took long took every Ctrl-C with it). SQLite's own
    wait for a lock is C code, in which no signal handler runs until it returns."""
    import signal

    from cmtyflow.cli import state as state_cli
    from cmtyflow.store.sqlite import SqliteStore

    monkeypatch.setattr(state_cli, "IMPORT_BATCH", 2)
    (tmp_path / "m.csv").write_text("id\n" + "".join(f"m{i}\n" for i in range(5)), encoding="utf-8")
    reached = []

    def waits_for_a_lock(self, rows):  # type: ignore[no-untyped-def]
        reached.append(1)
        signal.raise_signal(signal.SIGINT)  # the first: it waits
        signal.raise_signal(signal.SIGINT)  # the second: stops now, nothing of the batch written
        raise AssertionError("not reached")

    monkeypatch.setattr(SqliteStore, "put_members", waits_for_a_lock)
    code, _, err = cli(capsys, "members", "import", str(tmp_path / "m.csv"), "--state", str(tmp_path / "state.db"))
    assert code == 130 and reached == [1] and "not reached" not in err
