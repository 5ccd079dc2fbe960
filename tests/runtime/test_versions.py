"""Live edits: runs finish on the version they started on; `cmtyflow plan` tells what
an edit changes for runs in flight before `run` picks it up."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from runner_harness import UTC, event, write_playbook

from cmtyflow.cli import main

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

V1 = """
cmtyflow: 1
name: drip
timezone: UTC
channels:
  hook: {{adapter: webhook, url: "{url}"}}
triggers:
  - {{id: joined, event: member.joined, flow: hello}}
flows:
  hello:
    - {{id: first, send: {{channel: hook, text: "first"}}}}
    - {{id: pause, wait: 1d}}
    - {{id: second, send: {{channel: hook, text: "second v1"}}}}
"""

V2 = V1.replace("second v1", "second v2").replace("wait: 1d}}", "wait: 2d}}") + """    - {{id: third, send: {{channel: hook, text: "third"}}}}
"""


async def _join(h, member, at):
    h.store.put_members([{"id": member, "name": member}])
    h.store.add_event(event({"id": f"j-{member}", "type": "member.joined", "member": member, "at": at.isoformat()}))


async def _first_run(h, locale=None):
    """u1 joins at T0 and the runner takes it (u1's run then waits on its first
    version); the runner is closed after."""
    await h.open()
    await _join(h, "u1", T0)
    if locale is not None:
        h.store.put_members([{"id": "u1", "name": "u1", "locale": locale}])
    await h.at(T0)
    await h.close()


async def test_a_run_finishes_on_its_version_and_plan_says_so(tmp_path, sink, harness, capsys):
    path = write_playbook(tmp_path / "pb", V1.format(url=sink.url))
    h = harness([path], T0)
    await _first_run(h)
    assert [r.body["text"] for r in sink.requests] == ["first"]

    path.write_text(V2.format(url=sink.url).lstrip("\n"), encoding="utf-8")
    assert main(["plan", str(path), "--state", str(h.state)]) == 0
    out = capsys.readouterr().out
    assert "drip: version" in out
    assert "step hello/pause changed: wait 1d -> wait 2d" in out
    assert "step hello/second changed" in out and "second v2" in out
    assert "step hello/third added" in out
    assert "1 run of hello on" in out and "at pause: pause changed; second changed; third added" in out
    assert main(["plan", str(path), "--state", str(h.state), "--format", "json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["old"] != doc["new"] and doc["runs"][0]["count"] == 1

    await h.open()  # the runner picks the edit up
    await _join(h, "u2", T0 + timedelta(hours=1))
    await h.run_until(T0 + timedelta(days=5))
    by_member = {}
    for r in sink.requests:
        by_member.setdefault(r.body["member"], []).append(r.body["text"])
    # u1 started on v1: its wait stays 1d, its text v1, and v2's new step is not its.
    assert by_member["u1"] == ["first", "second v1"]
    assert by_member["u2"] == ["first", "second v2", "third"]
    times = {(d["member"], d["step"]): d["at"] for d in h.store.deliveries()}
    assert times[("u1", "second")] == T0 + timedelta(days=1)
    assert times[("u2", "second")] == T0 + timedelta(hours=1, days=2)
    await h.close()
    assert main(["plan", str(path), "--state", str(h.state)]) == 0
    assert "drip: unchanged" in capsys.readouterr().out


async def test_runs_in_flight_still_send_when_an_edit_renames_their_channel(tmp_path, sink, harness, capsys):
    """Channels were opened from the current version only: renaming `hook` to `main`
    dead-lettered every remaining message of the runs in flight ("channel 'hook' is not
    configured"), while plan said nothing was affected."""
    path = write_playbook(tmp_path / "pb", V1.format(url=sink.url))
    h = harness([path], T0)
    await _first_run(h)
    renamed = V1.replace("  hook: {{", "  main: {{").replace("channel: hook", "channel: main")
    path.write_text(renamed.format(url=sink.url).lstrip("\n"), encoding="utf-8")
    # plan says what changed (it said "no step or trigger changed" and nothing else)
    assert main(["plan", str(path), "--state", str(h.state)]) == 0
    out = capsys.readouterr().out
    assert "  channel hook removed (runs in flight on the older version still send through it)\n" in out
    assert "  channel main added\n" in out
    await h.open()
    await _join(h, "u2", T0 + timedelta(hours=1))
    await h.run_until(T0 + timedelta(days=3))
    texts = sorted((r.body["member"], r.body["text"], r.body["channel"]) for r in sink.requests)
    assert texts == [("u1", "first", "hook"), ("u1", "second v1", "hook"),
                     ("u2", "first", "main"), ("u2", "second v1", "main")]
    assert h.store.outbox_counts().get("dead", 0) == 0
    await h.close()


async def test_a_rebuilt_version_reads_only_its_own_templates(tmp_path, sink, harness, monkeypatch):
    """An older version was rebuilt in the system's temporary folder, whose `templates/`
    (anyone may write /tmp/templates) the template lookup searched too: text put there
    reached the members of runs in flight."""
    import tempfile

    shared_tmp = tmp_path / "tmp"
    (shared_tmp / "templates").mkdir(parents=True)
    # A member's own locale is looked for first, in every template folder.
    (shared_tmp / "templates" / "later.zh-CN.txt.j2").write_text("INJECTED", encoding="utf-8")
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    v1 = V1.replace('text: "second v1"', "template: later")
    path = write_playbook(tmp_path / "pb", v1.format(url=sink.url))
    (tmp_path / "pb" / "templates").mkdir()
    (tmp_path / "pb" / "templates" / "later.txt.j2").write_text("own later", encoding="utf-8")
    h = harness([path], T0)
    await _first_run(h, locale="zh-CN")
    path.write_text(v1.replace('"first"', '"first v2"').format(url=sink.url).lstrip("\n"), encoding="utf-8")
    await h.open()
    await h.run_until(T0 + timedelta(days=2))
    assert [r.body["text"] for r in sink.requests] == ["first", "own later"]
    await h.close()


async def test_an_edit_undone_is_the_version_running_for_plan(tmp_path, sink, harness, capsys):
    """v1, then v2, then v1 again: the last version recorded was v2 (a version was kept
    once, when first seen), so plan of the v1 running now showed a change to make."""
    path = write_playbook(tmp_path / "pb", V1.format(url=sink.url))
    h = harness([path], T0)
    for text in (V1, V2, V1):
        path.write_text(text.format(url=sink.url).lstrip("\n"), encoding="utf-8")
        await h.open()
        await h.at(T0)
        await h.close()
    assert main(["plan", str(path), "--state", str(h.state)]) == 0
    assert "drip: unchanged" in capsys.readouterr().out


async def test_an_older_version_renders_with_its_own_adapters_formats(tmp_path, sink, harness):
    """v1 sends an HTML-only template through a webhook; v2 moves the channel to the
    console (plain, markdown) with a text template. The older version was rebuilt with
    v2's formats, found no template for them, and failed its runs in flight."""
    v1 = V1.replace('text: "second v1"', "template: later")
    path = write_playbook(tmp_path / "pb", v1.format(url=sink.url))
    (tmp_path / "pb" / "templates").mkdir()
    (tmp_path / "pb" / "templates" / "later.html.j2").write_text("<b>later</b>", encoding="utf-8")
    lines: list[tuple[str, dict]] = []
    h = harness([path], T0, log=lambda event, /, **fields: lines.append((event, fields)))
    await _first_run(h)
    v2 = v1.replace('{{adapter: webhook, url: "{url}"}}', "{{adapter: console}}")
    path.write_text(v2.format(url=sink.url).lstrip("\n"), encoding="utf-8")
    (tmp_path / "pb" / "templates" / "later.txt.j2").write_text("later", encoding="utf-8")
    await h.open()
    await h.run_until(T0 + timedelta(days=2))
    assert [n for n in h.store.notes() if n["kind"] == "run_failed"] == []
    (later,) = [r for r in h.store.outbox() if r.message.step == "second"]
    assert (later.message.format, later.message.text, later.status) == ("html", "<b>later</b>", "sent")
    # The log names the adapter that sent it, not the one it was queued for.
    assert [f["adapter"] for e, f in lines if e == "sent" and f["step"] == "second"] == ["console"]
    await h.close()


async def test_plan_for_a_playbook_never_run(tmp_path, sink, capsys):
    path = write_playbook(tmp_path / "pb", V1.format(url=sink.url))
    state = tmp_path / "s.db"
    assert main(["members", "import", str(_roster(tmp_path)), "--state", str(state)]) == 0
    capsys.readouterr()
    assert main(["plan", str(path), "--state", str(state)]) == 0
    assert "drip: not run yet" in capsys.readouterr().out


def _roster(tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("id,name\nu1,阿明\n", encoding="utf-8")
    return path


def test_diff_aligns_steps_without_ids_so_an_inserted_step_is_one_change(tmp_path):
    """Steps without ids are known by their position: one step put first shifted every
    label, and plan read the whole flow as changed."""
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.versions import diff

    def program(steps: str, folder: str):
        text = (
            "cmtyflow: 1\nname: noid\ntimezone: UTC\nchannels: {dm: {adapter: console}}\n"
            "triggers:\n  - {id: j, event: member.joined, flow: w}\nflows:\n  w:\n" + steps
        )
        path = write_playbook(tmp_path / folder, text)
        return load_programs([path])[1][0]

    base = '    - send: {channel: dm, text: "一"}\n    - wait: 1d\n    - send: {channel: dm, text: "二"}\n'
    old = program(base, "a")
    new = program('    - send: {channel: dm, text: "零"}\n' + base.replace("wait: 1d", "wait: 2d"), "b")
    assert [(c.step, c.change, c.detail) for c in diff(old, new)] == [
        ("w[0]", "added", "send channel: dm, text: 零"),
        ("w[1]", "changed", "wait 1d -> wait 2d"),
    ]


def test_plan_writes_values_as_the_playbook_does(tmp_path):
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.versions import diff

    text = (
        "cmtyflow: 1\nname: p\ntimezone: UTC\nchannels: {dm: {adapter: console}}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: w}\n"
        "flows:\n  w:\n    - {id: s, send: {channel: dm, text: hi, urgent: true}}\n"
    )
    old = load_programs([write_playbook(tmp_path / "a", text)])[1][0]
    new = load_programs([write_playbook(tmp_path / "b", text.replace("text: hi", "text: hey"))])[1][0]
    (change,) = diff(old, new)
    assert change.detail == "send channel: dm, text: hi, urgent: true -> send channel: dm, text: hey, urgent: true"


def test_plan_says_which_schedules_start_anew(tmp_path):
    """The runner keys a schedule's position by what decides its firings; plan said only
    "trigger daily changed", and nothing when the playbook's timezone or window moved."""
    from cmtyflow.runtime.prepare import load_programs
    from cmtyflow.runtime.versions import trigger_changes

    text = (
        "cmtyflow: 1\nname: s\ntimezone: Asia/Shanghai\nchannels: {dm: {adapter: console}}\n"
        "triggers:\n  - {id: daily, cron: '0 20 * * *', flow: f}\n  - {id: nightly, cron: '0 21 * * *', flow: f}\n"
        "  - {id: j, event: member.joined, flow: f}\nflows:\n  f: [{send: {to: channel, text: hi}}]\n"
    )
    old = write_playbook(tmp_path / "a", text)
    new = write_playbook(tmp_path / "b", text.replace("Asia/Shanghai", "Europe/Berlin").replace("0 21", "30 21"))
    (before,), (after,) = load_programs([old])[1], load_programs([new])[1]
    assert trigger_changes(before, after) == [
        "trigger nightly changed; its schedule starts anew when a runner loads this version "
        "(firings the old one missed are not caught up)",
        "trigger daily: the playbook's timezone or window changed; its schedule starts anew when a runner loads "
        "this version (firings the old one missed are not caught up)",
    ]


def _plan_after_edit(tmp_path, capsys, v1: str, v2: str, templates: tuple[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A run of ``v1`` started and waiting, then the playbook edited to ``v2`` (and its
    template ``remind`` from the first text to the second): `plan --format json`."""
    head = ("cmtyflow: 1\nname: ed\ntimezone: UTC\nchannels: {dm: {adapter: file, path: \"%s\"}}\n"
            "triggers:\n  - {id: j, event: member.joined, flow: w}\nflows:\n  w:\n") % (tmp_path / "out.jsonl")
    folder, state = tmp_path / "pb", str(tmp_path / "state.db")
    path = write_playbook(folder, head + v1)
    if templates:
        (folder / "templates").mkdir(exist_ok=True)
        (folder / "templates" / "remind.txt.j2").write_text(templates[0], encoding="utf-8")
    (tmp_path / "m.csv").write_text("id,name\nu1,Ann\n", encoding="utf-8")
    assert main(["members", "import", str(tmp_path / "m.csv"), "--state", state]) == 0
    assert main(["emit", "member.joined", "--member", "u1", "--id", "j1", "--at", T0.isoformat(), "--state", state]) == 0
    assert main(["run", str(path), "--state", state, "--once", "--now", T0.isoformat()]) == 0
    path.write_text(head + v2, encoding="utf-8")
    if templates:
        (folder / "templates" / "remind.txt.j2").write_text(templates[1], encoding="utf-8")
    capsys.readouterr()
    assert main(["plan", str(path), "--state", state, "--format", "json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    (group,) = doc["runs"]
    assert main(["plan", str(path), "--state", state]) == 0
    return group, capsys.readouterr().out


def test_plan_names_a_changed_template_ahead_and_not_a_step_added_behind(tmp_path, capsys):
    """A template fixed on disk reaches new runs only; plan said "no changed step ahead"
    for the runs that will send its older text. A step added before where the runs
    wait was listed as ahead of them."""
    v1 = '    - send: {channel: dm, text: "一"}\n    - wait: 1d\n    - send: {channel: dm, template: remind}\n'
    v2 = '    - send: {channel: dm, text: "零"}\n' + v1
    group, out = _plan_after_edit(tmp_path, capsys, v1, v2, ("明天见，记得打卡!", "明天见，记得打卡！"))
    assert (group["at"], group["ahead"], group["templates"]) == ("w[1]", [], ["remind"])
    assert "at w[1]: template remind changed (they send its older text); they finish on" in out


def test_plan_counts_steps_a_loop_comes_back_to_as_ahead(tmp_path, capsys):
    v1 = ('    - repeat:\n        times: 3\n        steps:\n'
          '          - {id: a, send: {channel: dm, text: "round"}}\n          - {id: pause, wait: 1h}\n'
          '    - {id: z, send: {channel: dm, text: "done"}}\n')
    v2 = v1.replace('"round"', '"round, again"')
    group, out = _plan_after_edit(tmp_path, capsys, v1, v2)
    assert group["at"] == "pause" and [(c["step"], c["change"]) for c in group["ahead"]] == [("a", "changed")]
    assert "at pause: a changed; they finish on" in out


def test_plan_names_a_playbook_renamed_with_runs_in_flight(tmp_path, capsys):
    """The runner goes on with the runs of a playbook renamed away; plan said only
    "<new name>: not run yet"."""
    v1 = '    - send: {channel: dm, text: "一"}\n    - wait: 1d\n    - send: {channel: dm, text: "二"}\n'
    folder, state = tmp_path / "pb", str(tmp_path / "state.db")
    head = ("cmtyflow: 1\nname: %s\ntimezone: UTC\nchannels: {dm: {adapter: file, path: \"%s\"}}\n"
            "triggers:\n  - {id: j, event: member.joined, flow: w}\nflows:\n  w:\n")
    path = write_playbook(folder, head % ("live", tmp_path / "out.jsonl") + v1)
    (tmp_path / "m.csv").write_text("id,name\nu1,Ann\n", encoding="utf-8")
    assert main(["members", "import", str(tmp_path / "m.csv"), "--state", state]) == 0
    assert main(["emit", "member.joined", "--member", "u1", "--id", "j1", "--at", T0.isoformat(), "--state", state]) == 0
    assert main(["run", str(path), "--state", state, "--once", "--now", T0.isoformat()]) == 0
    path.write_text(head % ("live2", tmp_path / "out.jsonl") + v1, encoding="utf-8")
    capsys.readouterr()
    assert main(["plan", str(path), "--state", state]) == 0
    out = capsys.readouterr().out
    assert "live2: not run yet" in out
    assert "live: not among the playbooks given; its runs in flight go on to their end, each on its version" in out
    assert "  1 run of w on " in out and " at w[1]\n" in out
    assert main(["plan", str(path), "--state", state, "--format", "json"]) == 0
    left = next(p for p in json.loads(capsys.readouterr().out) if p["name"] == "live")
    # Its last version is the old one; there is no new one (the JSON said new == old).
    assert left["left_behind"] == 1 and left["new"] is None and left["old"] is not None


QUEUED_HEAD = ("cmtyflow: 1\nname: qv\ntimezone: UTC\nchannels: {dm: {adapter: file, path: \"%s\"}}\n"
               "triggers:\n  - {id: go, event: go.now, flow: w, mode: %s}\nflows:\n  w:\n"
               '    - {id: a, send: {channel: dm, text: "%s start {{ event.id }}"}}\n'
               "    - {id: ww, wait: 1h}\n"
               '    - {id: b, send: {channel: dm, text: "%s end {{ event.id }}"}}\n')


def _queued_runs(tmp_path, steps):  # type: ignore[no-untyped-def]
    """For each (mode, label, event id or None, now): the playbook written as that version,
    the event emitted, and a runner run once then. Returns the texts sent."""
    folder, state, out = tmp_path / "pb", str(tmp_path / "state.db"), tmp_path / "out.jsonl"
    (tmp_path / "m.csv").write_text("id,name\nu1,Ann\n", encoding="utf-8")
    assert main(["members", "import", str(tmp_path / "m.csv"), "--state", state]) == 0
    path = None
    for mode, label, event_id, now in steps:
        path = write_playbook(folder, QUEUED_HEAD % (out, mode, label, label))
        if event_id:
            assert main(["emit", "go.now", "--member", "u1", "--id", event_id, "--at", now, "--state", state]) == 0
        assert main(["run", str(path), "--state", state, "--once", "--now", now]) == 0
    return [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]


def test_a_start_queued_under_a_version_no_run_is_on_runs_on_it_after_another_edit(tmp_path):
    """A on v1 waits; C is queued behind it under v2; the runner restarts on v3. C ran on
    v3 while recorded as v2 (v2 was not loaded: no run was on it), and then stopped at
    its wait, resumed on v2 with v3's place in the flow."""
    sent = _queued_runs(tmp_path, [
        ("queued", "v1", "A", "2026-12-01T10:00:00+00:00"),
        ("queued", "v2", "C", "2026-12-01T10:10:00+00:00"),
        ("queued", "v3", None, "2026-12-01T11:00:00+00:00"),
        ("queued", "v3", None, "2026-12-01T12:00:00+00:00"),
    ])
    assert sent == ["v1 start A", "v1 end A", "v2 start C", "v2 end C"]


def test_a_start_queued_behind_a_run_of_a_version_without_the_queued_trigger_goes(tmp_path):
    """P on v1 (mode parallel) waits; v2 makes the trigger queued and Q waits behind P.
    When P ended (on v1, which queues nothing) Q was never let go."""
    sent = _queued_runs(tmp_path, [
        ("parallel", "v1", "P", "2026-12-01T10:00:00+00:00"),
        ("queued", "v2", "Q", "2026-12-01T10:10:00+00:00"),
        ("queued", "v2", None, "2026-12-01T11:00:00+00:00"),
        ("queued", "v2", None, "2026-12-01T12:00:00+00:00"),
    ])
    assert sent == ["v1 start P", "v1 end P", "v2 start Q", "v2 end Q"]


def test_plan_does_not_count_a_step_put_just_before_the_waiting_one_as_ahead(tmp_path, capsys):
    """The runs wait in w[1]: a step put before it (now w[1]) is behind them, while one
    put after it is ahead."""
    v1 = '    - send: {channel: dm, text: "一"}\n    - wait: 1d\n    - send: {channel: dm, text: "二"}\n'
    before = v1.replace("    - wait: 1d\n", '    - send: {channel: dm, text: "插入"}\n    - wait: 1d\n')
    group, _ = _plan_after_edit(tmp_path / "before", capsys, v1, before)
    assert (group["at"], group["ahead"]) == ("w[1]", [])
    after = v1.replace("    - wait: 1d\n", '    - wait: 1d\n    - send: {channel: dm, text: "插入"}\n')
    group, _ = _plan_after_edit(tmp_path / "after", capsys, v1, after)
    assert [(c["step"], c["change"]) for c in group["ahead"]] == [("w[2]", "added")]


def test_plan_lists_a_start_queued_behind_an_active_run_on_its_version(tmp_path, capsys):
    """A queued start runs on the version it was queued under, from its first step: plan
    said 'no runs in flight on an older version' of it, and it then sent v2's texts after
    v2 was undone."""
    _queued_runs(tmp_path, [
        ("queued", "v1", "A", "2026-12-01T10:00:00+00:00"),
        ("queued", "v1", "B", "2026-12-01T10:10:00+00:00"),
    ])
    folder, state = tmp_path / "pb", str(tmp_path / "state.db")
    path = write_playbook(folder, QUEUED_HEAD % (tmp_path / "out.jsonl", "queued", "v3", "v3"))
    capsys.readouterr()
    assert main(["plan", str(path), "--state", state, "--format", "json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    groups = sorted((g["flow"], g["at"], g["count"], [c["step"] for c in g["ahead"]]) for g in doc["runs"])
    assert groups == [("w", "(queued behind an active run, not begun)", 1, ["a", "b"]), ("w", "ww", 1, ["b"])]
