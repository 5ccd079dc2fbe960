import json
from pathlib import Path

from cmtyflow.cli import main

PLAYBOOK = """\
cmtyflow: 1
name: hello
timezone: Asia/Shanghai
locale: zh-CN
channels:
  dm: {adapter: console}
  group: {adapter: console}
policies:
  quiet_hours: {start: "22:00", end: "08:00"}
triggers:
  - {id: joined, event: member.joined, flow: welcome}
  - {id: daily, cron: "0 9 * * *", flow: morning}
flows:
  welcome:
    - {id: hi, send: {channel: dm, text: "你好 {{ member.name }}"}}
    - wait: 1d
    - {id: again, send: {channel: dm, text: "第二天 {{ member.name }}"}}
  morning:
    - {id: brief, send: {channel: group, text: "早安"}}
"""
ROSTER = "id,name,timezone\nu1,{{ 7*7 }},\nu2,Bob,Europe/Berlin\n"
EVENTS = (
    '{"id": "e1", "type": "member.joined", "at": "2026-12-01T23:30:00+08:00", "member": "u1"}\n'
    '{"id": "e2", "type": "member.joined", "at": "2026-12-01T10:00:00+01:00", "member": "u2"}\n'
    '{"id": "e0", "type": "member.joined", "at": "2026-11-01T10:00:00+01:00", "member": "u2"}\n'
)


def _files(tmp_path: Path) -> list[str]:
    (tmp_path / "hello.yaml").write_text(PLAYBOOK, encoding="utf-8")
    (tmp_path / "m.csv").write_text(ROSTER, encoding="utf-8")
    (tmp_path / "e.jsonl").write_text(EVENTS, encoding="utf-8")
    return [str(tmp_path / "hello.yaml"), "--roster", str(tmp_path / "m.csv"), "--events", str(tmp_path / "e.jsonl"),
            "--start", "2026-12-01", "--days", "2"]


def test_jsonl_is_spec_6_exactly(tmp_path, capsys):
    assert main(["dry-run", *_files(tmp_path), "--format", "jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    deliveries = [x for x in lines if x["kind"] == "delivery"]
    assert [(d["at"], d["step"], d["member"], d["to"], d["text"]) for d in deliveries] == [
        ("2026-12-01T09:00:00+08:00", "brief", None, "channel", "早安"),
        ("2026-12-01T17:00:00+08:00", "hi", "u2", "member", "你好 Bob"),
        # 23:30 Shanghai is inside quiet hours: moved to 08:00 the next morning
        ("2026-12-02T08:00:00+08:00", "hi", "u1", "member", "你好 {{ 7*7 }}"),
        ("2026-12-02T09:00:00+08:00", "brief", None, "channel", "早安"),
        ("2026-12-02T17:00:00+08:00", "again", "u2", "member", "第二天 Bob"),
    ]
    assert set(deliveries[0]) == {"kind", "at", "playbook", "flow", "step", "channel", "adapter", "member", "to", "text", "variant"}
    assert deliveries[0]["adapter"] == "console" and deliveries[0]["variant"] is None
    summary = lines[-1]
    assert summary["kind"] == "summary"
    assert summary["pending"] == 1  # u1's "again" is due 2026-12-02T23:30 -> deferred past the span
    assert summary["skipped"]["events_outside_span"] == 1
    assert summary["deferred"]["quiet_hours"] == 2


def test_text_timeline_groups_by_day_and_summarises(tmp_path, capsys):
    assert main(["dry-run", *_files(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== 2026-12-01 Tue ==\n09:00:00  hello/brief  group -> #group\n    早安\n" in out
    assert "== 2026-12-02 Wed ==" in out
    assert "deliveries: 5, pending after the span: 1" in out
    assert "quiet_hours  2" in out


def test_report_is_written(tmp_path, capsys):
    report = tmp_path / "r.html"
    assert main(["dry-run", *_files(tmp_path), "--report", str(report)]) == 0
    html = report.read_text(encoding="utf-8")
    assert "早安" in html and "{{ 7*7 }}" in html
    # Members by id and name from the roster, in the heading and the search key (the
    # transcript showed ids only, and a search for a name found nothing).
    assert "成员 u2 — Bob" in html and 'data-key="u2 bob"' in html
    # The jsonl output is unchanged by it.
    assert main(["dry-run", *_files(tmp_path), "--format", "jsonl"]) == 0
    assert "member_name" not in capsys.readouterr().out


def test_bad_playbook_refused_with_location(tmp_path, capsys):
    args = _files(tmp_path)
    (tmp_path / "hello.yaml").write_text(PLAYBOOK.replace("flow: morning", "flow: mornin"), encoding="utf-8")
    assert main(["dry-run", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the playbooks have errors, so nothing was done:\n")
    assert "hello.yaml:12:42: error: trigger starts flow 'mornin', which does not exist (did you mean 'morning'?)" in err


def test_a_member_in_two_roster_rows_is_noted_as_members_import_notes_it(tmp_path, capsys):
    args = _files(tmp_path)
    (tmp_path / "m.csv").write_text(ROSTER + "u2,Bobby,Europe/Berlin\n", encoding="utf-8")
    assert main(["dry-run", *args]) == 0
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'm.csv'}:4: member u2 again: this row's fields are merged over the earlier row's" in err


def test_bad_rows_reported_not_fatal(tmp_path, capsys):
    args = _files(tmp_path)
    (tmp_path / "m.csv").write_text(ROSTER + ",nobody,\n", encoding="utf-8")
    assert main(["dry-run", *args, "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'm.csv'}:4: id is empty: row skipped" in err
    assert json.loads(out.splitlines()[-1])["input_problems"] == 1
    # The text summary says so too, at its end, where a long timeline does not hide it.
    assert main(["dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("warning: 1 roster or event row skipped, each named on stderr with its line")


def test_simulate_is_reproducible(tmp_path, capsys):
    args = _files(tmp_path)
    body = PLAYBOOK + "  posted:\n    - {id: thanks, send: {channel: dm, text: ok}}\n"
    body = body.replace("triggers:\n", "triggers:\n  - {id: post, event: message.posted, flow: posted}\n")
    (tmp_path / "hello.yaml").write_text(body, encoding="utf-8")
    runs = []
    for _ in range(2):
        assert main(["dry-run", *args, "--format", "jsonl", "--simulate", "post=0.5", "--seed", "3"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and '"step": "thanks"' in runs[0]
    assert main(["dry-run", *args, "--simulate", "dance=1"]) == 1
    assert "unknown behaviour 'dance'" in capsys.readouterr().err


def _setup(tmp_path):
    (tmp_path / "hello.yaml").write_text(PLAYBOOK, encoding="utf-8")
    (tmp_path / "m.csv").write_text(ROSTER, encoding="utf-8")
    (tmp_path / "e.jsonl").write_text(EVENTS, encoding="utf-8")
    (tmp_path / "hello.test.yaml").write_text(
        "playbook: hello.yaml\nroster: m.csv\nevents: e.jsonl\nstart: 2026-12-01T00:00:00+08:00\ndays: 2\n", encoding="utf-8"
    )


def test_golden_missing_update_pass_and_diff(tmp_path, capsys):
    _setup(tmp_path)
    assert main(["test", str(tmp_path)]) == 1
    assert "does not exist; run with --update" in capsys.readouterr().out
    assert main(["test", str(tmp_path), "--update"]) == 0
    expected = tmp_path / "hello.expected.jsonl"
    assert len(expected.read_text(encoding="utf-8").splitlines()) == 5
    assert main(["test", str(tmp_path / "hello.yaml")]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    (tmp_path / "hello.yaml").write_text(PLAYBOOK.replace("早安", "早上好"), encoding="utf-8")
    assert main(["test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and '-{"kind": "delivery", "at": "2026-12-01T09:00:00+08:00"' in out and "早上好" in out


def test_preview_renders_literally_and_lists_steps(tmp_path, capsys):
    _setup(tmp_path)
    args = ["preview", str(tmp_path / "hello.yaml"), "hi", "--member", "u1", "--roster", str(tmp_path / "m.csv")]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == ["hello/hi -> u1 via dm (console, plain)", "你好 {{ 7*7 }}"]
    assert main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "你好 {{ 7*7 }}"
    assert main(["preview", str(tmp_path / "hello.yaml"), "nope", "--member", "u1"]) == 1
    assert "no send step 'nope'; send steps are: again, brief, hi" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "hello.yaml"), "hi", "--member", "zz", "--roster", str(tmp_path / "m.csv")]) == 1
    assert "member 'zz' is not in the roster" in capsys.readouterr().err
    # --state (or --member-state) is the member's state as JSON, not a state file.
    assert main([*args, "--state", '{"streak": 7}']) == 0
    capsys.readouterr()
    assert main([*args, "--state", ".cmtyflow/state.db"]) == 1
    assert "--member-state is not JSON: Expecting value (it reads like a state file: preview reads no store" in capsys.readouterr().err
    # Without a roster the member has only an id: said, not rendered silently empty.
    assert main(["preview", str(tmp_path / "hello.yaml"), "hi", "--member", "u1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == "你好 " and "no --roster, so u1 has an id and nothing else" in err


def test_preview_of_a_streak_given_alone_reads_it_as_current(tmp_path, capsys):
    """``--member-state '{"streak": 7}'`` (the help's own example) rendered a streak of 0:
    SPEC 2 reads a streak as 0 a day after the last check-in, and none was given."""
    (tmp_path / "s.yaml").write_text(
        "cmtyflow: 1\nname: s\ntimezone: Asia/Shanghai\nchannels:\n  dm: {adapter: console}\n"
        "triggers:\n  - {id: c, event: checkin.posted, flow: f}\n"
        "flows:\n  f:\n    - id: s\n      send: {text: \"streak {{ state.streak }} points {{ state.points }}\"}\n",
        encoding="utf-8",
    )
    args = ["preview", str(tmp_path / "s.yaml"), "s", "--member", "u1", "--at", "2026-12-05T21:00:00+08:00"]
    assert main([*args, "--member-state", '{"streak": 7, "points": 30}']) == 0
    assert capsys.readouterr().out.splitlines()[1] == "streak 7 points 30"
    # With its last check-in, as SPEC 2 reads it: two days ago is a lapsed streak.
    assert main([*args, "--member-state", '{"streak": 7, "last_checkin": "2026-12-03"}']) == 0
    assert capsys.readouterr().out.splitlines()[1] == "streak 0 points 0"
    # Nested past Python's limit: said as such, not a crash.
    assert main([*args, "--member-state", "[" * 100_000 + "]" * 100_000]) == 1
    assert "--member-state is not JSON: nested too deeply" in capsys.readouterr().err


def test_preview_of_a_campaign_step_with_a_member_renders_the_campaign_post(tmp_path, capsys):
    """A leaderboard's flow runs for no member (a schedule without for_each): its template
    reads ``audience``. With --member it failed ('audience' is undefined); it is rendered
    as its runs post it, and the note says --member is not used."""
    (tmp_path / "lb.yaml").write_text(
        "cmtyflow: 1\nname: lb\ntimezone: UTC\nchannels:\n  group: {adapter: console}\n"
        "triggers:\n  - {id: weekly, cron: \"0 20 * * 0\", flow: board}\n"
        "  - {id: joined, event: member.joined, flow: hi}\nflows:\n"
        "  board:\n    - {id: top, send: {channel: group, to: channel, text: \"{{ audience | length }} on the board\"}}\n"
        "  hi:\n    - {id: hello, send: {channel: group, text: \"hi {{ member.name }}\"}}\n",
        encoding="utf-8",
    )
    (tmp_path / "m.csv").write_text("id,name\nu1,Ann\nu2,Bob\n", encoding="utf-8")
    args = ["preview", str(tmp_path / "lb.yaml"), "top", "--member", "u1", "--roster", str(tmp_path / "m.csv")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["lb/top -> #group via group (console, plain)", "2 on the board"]
    assert "flow board runs for no member (trigger weekly has no for_each), so --member u1 is not used" in err
    # A member flow's step is still rendered for the member, without that note.
    assert main(["preview", str(tmp_path / "lb.yaml"), "hello", "--member", "u2", "--roster", str(tmp_path / "m.csv")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == "hi Bob" and "not used" not in err


def test_playbooks_whose_triggers_share_an_id_each_start_their_runs(tmp_path, capsys):
    """Two playbooks, each with a trigger called ``joined``: run ids named the trigger and
    the event but not the playbook, so the second playbook's start was taken for a
    replay of the first's and its members got nothing."""
    for name in ("welcome", "buddy"):
        (tmp_path / f"{name}.yaml").write_text(
            f"cmtyflow: 1\nname: {name}\ntimezone: UTC\nchannels:\n  dm: {{adapter: console}}\n"
            "triggers:\n  - {id: joined, event: member.joined, flow: f}\n"
            f"flows:\n  f:\n    - wait: 1h\n    - {{id: hi, send: {{channel: dm, text: \"{name} {{{{ member.name }}}}\"}}}}\n",
            encoding="utf-8",
        )
    (tmp_path / "m.csv").write_text("id,name\nu1,Ann\nu2,Bob\n", encoding="utf-8")
    (tmp_path / "e.jsonl").write_text(
        '{"id": "j1", "type": "member.joined", "at": "2026-12-01T10:00:00Z", "member": "u1"}\n'
        '{"id": "j2", "type": "member.joined", "at": "2026-12-01T11:00:00Z", "member": "u2"}\n',
        encoding="utf-8",
    )
    args = [str(tmp_path / "welcome.yaml"), str(tmp_path / "buddy.yaml"), "--roster", str(tmp_path / "m.csv"),
            "--events", str(tmp_path / "e.jsonl"), "--start", "2026-12-01", "--days", "1", "--format", "jsonl"]
    assert main(["dry-run", *args]) == 0
    sent = sorted(json.loads(line)["text"] for line in capsys.readouterr().out.splitlines() if '"delivery"' in line)
    assert sent == ["buddy Ann", "buddy Bob", "welcome Ann", "welcome Bob"]


def test_a_flow_that_emits_its_own_trigger_is_cut_not_endless(tmp_path, capsys):
    """g emits the event that starts g: the chain stops at MAX_EMIT_DEPTH events, each
    handled once, the rest reported; before, the dry run never ended and its memory
    grew without bound."""
    from cmtyflow.runtime.driver import MAX_EMIT_DEPTH

    (tmp_path / "loop.yaml").write_text(
        "cmtyflow: 1\nname: loop\ntimezone: Asia/Shanghai\nchannels: {dm: {adapter: console}}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\n  - {id: k, event: ping.pong, flow: g}\n"
        "flows:\n  f: [{emit: {event: ping.pong}}]\n  g: [{emit: {event: ping.pong}}, {send: {channel: dm, text: hop}}]\n",
        encoding="utf-8",
    )
    (tmp_path / "m.csv").write_text("id,name\nu1,A\n", encoding="utf-8")
    (tmp_path / "ev.jsonl").write_text(
        '{"id":"e1","type":"member.joined","at":"2026-12-01T10:00:00+08:00","member":"u1"}\n', encoding="utf-8"
    )
    code = main(["dry-run", str(tmp_path / "loop.yaml"), "--roster", str(tmp_path / "m.csv"), "--events",
                 str(tmp_path / "ev.jsonl"), "--start", "2026-12-01", "--days", "1"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"deliveries: {MAX_EMIT_DEPTH}," in out  # g ran once per event handled
    assert f"1 emitted event was dropped, not handled: a chain of emits went past {MAX_EMIT_DEPTH} events deep" in out + err


def test_golden_specs_that_cannot_run_are_errors_and_the_rest_still_run(tmp_path, capsys):
    _setup(tmp_path)
    spec = (tmp_path / "hello.test.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.test.yaml").write_text(spec.replace("m.csv", "nope.csv"), encoding="utf-8")
    (tmp_path / "b.test.yaml").write_text("- a list\n", encoding="utf-8")
    days = next(line for line in spec.splitlines() if line.startswith("days:"))
    (tmp_path / "c.test.yaml").write_text(spec.replace(days, "days: 0"), encoding="utf-8")
    (tmp_path / "d.test.yaml").write_text(spec.replace(days, "days: true"), encoding="utf-8")
    assert main(["test", str(tmp_path), "--update"]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {tmp_path / 'a.test.yaml'}: roster: no such file {tmp_path / 'nope.csv'}" in out
    assert f"ERROR {tmp_path / 'b.test.yaml'}: a golden spec is a mapping" in out
    assert f"ERROR {tmp_path / 'c.test.yaml'}: days: Input should be greater than or equal to 1" in out
    assert f"ERROR {tmp_path / 'd.test.yaml'}: days: Input should be a valid integer" in out
    assert "updated" in out and (tmp_path / "hello.expected.jsonl").exists()  # the good one still ran
    assert "4 of 5 could not run" in out


def test_dry_run_refuses_a_start_off_the_calendar_and_a_report_folder_that_is_not_there(tmp_path, capsys):
    args = ["dry-run", *_files(tmp_path)]
    at = args.index("--start")
    for start in ("0001-01-01", "9999-12-25"):
        assert main([*args[:at], "--start", start, *args[at + 2:]]) == 1
        assert f"--start '{start}' is out of range" in capsys.readouterr().err
    assert main([*args, "--report", str(tmp_path / "no" / "r.html")]) == 1
    out, err = capsys.readouterr()
    assert "the folder" in err and "does not exist" in err and out == ""  # refused before the dry run


def test_a_campaigns_audience_reads_each_members_streak_on_their_own_date(tmp_path, capsys):
    """SPEC 2: a streak reads 0 once a whole *local* day passed without a check-in. The
    board at 20:00 in Shanghai is 01:00 the next day in Auckland: Kiwi, last in on the
    5th there, has missed the whole 6th; the board read her streak by Shanghai's date."""
    (tmp_path / "board.yaml").write_text(
        "cmtyflow: 1\nname: board\ntimezone: Asia/Shanghai\nchannels: {group: {adapter: console}}\n"
        "triggers:\n  - {id: ci, event: checkin.posted, flow: ci}\n  - {id: b, cron: \"0 20 6 12 *\", flow: board}\n"
        "flows:\n  ci: [{checkin: {}}]\n"
        "  board:\n    - send: {channel: group, text: \"{% for m in audience %}{{ m.name }}={{ m.state.streak }} {% endfor %}\"}\n",
        encoding="utf-8",
    )
    (tmp_path / "m.csv").write_text("id,name,timezone\nk1,Kiwi,Pacific/Auckland\ns1,Sam,Asia/Shanghai\n", encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("".join(
        f'{{"id": "{i}", "type": "checkin.posted", "at": "{at}", "member": "{m}"}}\n' for i, (m, at) in enumerate([
            ("k1", "2026-12-04T12:00:00+13:00"), ("k1", "2026-12-05T12:00:00+13:00"),
            ("s1", "2026-12-05T12:00:00+08:00"), ("s1", "2026-12-06T12:00:00+08:00"),
        ])
    ), encoding="utf-8")
    code = main(["dry-run", str(tmp_path / "board.yaml"), "--roster", str(tmp_path / "m.csv"), "--events",
                 str(tmp_path / "e.jsonl"), "--start", "2026-12-01", "--days", "7", "--format", "jsonl"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["text"] for d in lines if d.get("step") == "board[0]"] == ["Kiwi=0 Sam=2 "]


def test_the_challenges_streak_bonus_comes_once_with_its_badge(tmp_path, capsys):
    """Seven days in a row, a break, seven again: the second run earns no second bonus
    and its reply does not say a badge was earned (it paid again and said so)."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "m.csv").write_text("id,name,locale,timezone,tags\ns1,Sam,en,Asia/Shanghai,reading\n", encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("".join(
        f'{{"id": "c{d}", "type": "checkin.posted", "at": "2026-12-{d:02d}T10:00:00+08:00", "member": "s1"}}\n'
        for d in range(1, 16) if d != 8
    ), encoding="utf-8")
    code = main(["dry-run", str(root / "playbooks" / "checkin-challenge.yaml"), "--roster", str(tmp_path / "m.csv"),
                 "--events", str(tmp_path / "e.jsonl"), "--start", "2026-12-01T00:00+08:00", "--days", "16", "--format", "jsonl"])
    assert code == 0
    done = {d["at"][:10]: d["text"] for d in map(json.loads, capsys.readouterr().out.splitlines()) if d.get("step") == "checkin-done"}
    assert 'You earned the "7-day reader" badge and a 20-point bonus' in done["2026-12-07"]
    assert "badge" not in done["2026-12-15"] and "+10 points, 160 in total" in done["2026-12-15"]


def test_the_summary_aligns_chinese_step_and_variant_names(tmp_path, capsys):
    """Counted in characters, a name in Chinese pushed its count out of line."""
    (tmp_path / "z.yaml").write_text(
        "cmtyflow: 1\nname: z\ntimezone: Asia/Shanghai\nchannels:\n  群聊: {adapter: console}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: 欢迎流程}\n"
        "flows:\n  欢迎流程:\n    - send: {text: hi}\n    - id: hello\n      send:\n        variants:\n"
        "          甲: {text: a, weight: 1}\n          乙方案很长的名字: {text: b, weight: 1}\n",
        encoding="utf-8",
    )
    (tmp_path / "m.csv").write_text("id\n" + "".join(f"m{i}\n" for i in range(8)), encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("".join(
        json.dumps({"id": str(i), "type": "member.joined", "at": "2026-12-01T10:00:00+08:00", "member": f"m{i}"}) + "\n"
        for i in range(8)
    ), encoding="utf-8")
    assert main(["dry-run", str(tmp_path / "z.yaml"), "--roster", str(tmp_path / "m.csv"), "--events",
                 str(tmp_path / "e.jsonl"), "--start", "2026-12-01", "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert "(1 day)" in out
    steps = out.split("deliveries per step:\n")[1].split("deliveries per channel:")[0].splitlines()
    assert steps == ["  z/欢迎流程[0]  8", "  z/hello        8"]
    variants = out.split("deliveries per variant:\n")[1].split("runs:")[0].splitlines()
    assert sorted(v.rstrip("0123456789") for v in variants) == ["  z/hello:乙方案很长的名字  ", "  z/hello:甲                "]


def test_failed_runs_fail_the_dry_run_and_the_golden_test(tmp_path, capsys):
    """A template reading a roster column that no member has failed every run: the dry
    run exited 0, `test --update` recorded 0 deliveries and `test` then said ok."""
    args = _files(tmp_path)
    _setup(tmp_path)
    broken = PLAYBOOK.replace("你好 {{ member.name }}", "你好 {{ member.first_name }}")
    (tmp_path / "hello.yaml").write_text(broken, encoding="utf-8")
    assert main(["dry-run", *args]) == 1
    captured = capsys.readouterr()
    assert "warning: run hello/joined:e1 failed at hi" in captured.out
    assert captured.err.strip().endswith(
        "error: 2 runs failed (see the warnings): what `run` would send includes their messages only once they are fixed")
    assert main(["test", str(tmp_path), "--update"]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {tmp_path / 'hello.test.yaml'}: runs failed in the dry run, so no transcript is compared or written:" in out
    assert "  run hello/joined:e1 failed at hi:" in out
    assert not (tmp_path / "hello.expected.jsonl").exists()


def test_playbooks_in_several_timezones_share_one_clock_in_the_timeline(tmp_path, capsys):
    """Each line was in its own playbook's zone: 20:00 in New York was printed after 23:00
    UTC under the same day, with nothing to say which clock each was."""
    body = "channels:\n  c: {adapter: console}\nflows:\n  f:\n    - send: {text: hi}\n"
    (tmp_path / "a.yaml").write_text("cmtyflow: 1\nname: a-utc\ntimezone: UTC\ntriggers:\n"
                                     "  - {id: utc, cron: \"0 23 * * *\", flow: f}\n" + body, encoding="utf-8")
    (tmp_path / "b.yaml").write_text("cmtyflow: 1\nname: b-ny\ntimezone: America/New_York\ntriggers:\n"
                                     "  - {id: ny, cron: \"0 20 * * *\", flow: f}\n" + body, encoding="utf-8")
    (tmp_path / "r.csv").write_text("id\nu1\n", encoding="utf-8")
    assert main(["dry-run", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--roster", str(tmp_path / "r.csv"),
                 "--start", "2026-12-01", "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("(times in UTC: the playbooks are in several timezones)\n== 2026-12-01 Tue ==\n"
                          "01:00:00  b-ny/f[0]  c -> #c\n    hi\n23:00:00  a-utc/f[0]  c -> #c\n")


def test_preview_renders_the_variant_asked_for(capsys):
    """An A/B test's other variant could be seen only by hunting for a member who falls
    into it."""
    root = Path(__file__).resolve().parents[2]
    args = ["preview", str(root / "playbooks" / "onboarding.yaml"), "welcome-dm", "--member", "u003",
            "--roster", str(root / "examples" / "members.csv")]
    assert main(args) == 0
    mine = capsys.readouterr().out.splitlines()[0]
    other = "a" if mine.split(" variant ")[1].startswith("b") else "b"
    assert main([*args, "--variant", other]) == 0
    assert capsys.readouterr().out.startswith(f"onboarding/welcome-dm variant {other} -> u003")
    assert main([*args, "--variant", "c"]) == 1
    assert "step welcome-dm has no variant 'c'; its variants are a, b" in capsys.readouterr().err


def test_preview_names_who_the_step_sends_to(capsys):
    """A step that posts to the channel, or pages a role, was headed '-> u003' (the member
    it was rendered for) or '-> #dm'."""
    root = Path(__file__).resolve().parents[2]
    assert main(["preview", str(root / "playbooks" / "onboarding.yaml"), "group-intro", "--member", "u003",
                 "--roster", str(root / "examples" / "members.csv")]) == 0
    assert capsys.readouterr().out.startswith("onboarding/group-intro -> #group via group")
    assert main(["preview", str(root / "playbooks" / "crisis-response.yaml"), "page-moderators"]) == 0
    assert capsys.readouterr().out.startswith("crisis-response/page-moderators -> roles.moderators via dm")
