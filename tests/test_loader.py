"""The loader: YAML to data with positions, folders, folder defaults, versions (SPEC 1)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cmtyflow.errors import UserError
from cmtyflow.loader import discover, load, load_text
from cmtyflow.spec.models import SendStep, WaitStep
from cmtyflow.spec.sourcemap import Origin, split_lines
from cmtyflow.spec.yamldata import parse_yaml

VALID = """\
cmtyflow: 1
name: demo
title: 读书打卡
channels:
  group: {adapter: console}
triggers:
  - id: joined
    event: member.joined
    flow: onboard
flows:
  onboard:
    - send: {text: "hi {{ member.name }}"}
    - wait: 1d
    - id: second
      send:
        text: |
          Day two
          Keep going
"""


def parse(text: str):
    return parse_yaml(text, Origin("x.yaml", split_lines(text)))


def only(result):
    assert result.problems == [], [p.message for p in result.problems]
    (loaded,) = result.playbooks
    return loaded


def test_a_valid_playbook_loads_into_the_models():
    loaded = only(load_text(VALID))
    playbook = loaded.playbook
    assert playbook.name == "demo"
    steps = playbook.flows["onboard"]
    assert [type(s) for s in steps] == [SendStep, WaitStep, SendStep]
    assert steps[2].send.text == "Day two\nKeep going\n"
    assert len(loaded.version) == 64


def test_source_map_locates_values_and_keys():
    smap = only(load_text(VALID)).source_map
    assert smap.locate(("flows", "onboard", 0, "send", "text")) == (12, 20)
    assert smap.key_locate(("flows", "onboard", 0, "send", "text")) == (12, 14)
    assert smap.locate(("flows", "onboard", 2, "id")) == (14, 11)
    assert smap.key_locate(("flows", "onboard", 2, "send")) == (15, 7)
    assert smap.locate(("triggers", 0)) == (7, 5)
    # A path below what was written falls back to the nearest recorded value.
    assert smap.locate(("flows", "onboard", 1, "wait", "for")) == (13, 13)


def test_block_scalar_lines_map_to_yaml_lines():
    smap = only(load_text(VALID)).source_map
    mark = smap.text_mark(("flows", "onboard", 2, "send", "text"), 2)
    assert (mark.line, mark.col) == (18, 11)
    assert mark.source_line == "          Keep going"


def test_folded_block_scalar_lines_map_to_yaml_lines():
    parsed = parse("text: >\n  first part\n  joined\n\n  second {{ x }}\n")
    value = parsed.data["text"]
    assert value == "first part joined\nsecond {{ x }}\n"
    mark = parsed.source_map.text_mark(("text",), 2, value)
    assert (mark.line, mark.col) == (5, 3)


def test_columns_count_characters_not_bytes():
    parsed = parse("title: 读书打卡\nvars: [读书, x]\n")
    assert parsed.source_map.locate(("vars", 1)) == (2, 12)


def test_aliases_and_merge_keys():
    parsed = parse(
        "base: &base {adapter: console, prefix: '> '}\n"
        "channels:\n"
        "  a: {<<: *base, prefix: '# '}\n"
        "  b:\n"
        "    <<: [*base, {stream: stderr}]\n"
    )
    assert parsed.problems == []
    assert parsed.data["channels"] == {
        "a": {"adapter": "console", "prefix": "# "},
        "b": {"adapter": "console", "prefix": "> ", "stream": "stderr"},
    }
    # An explicit key is where it was written; a merged one where its anchor is.
    assert parsed.source_map.key_locate(("channels", "a", "prefix")) == (3, 18)
    assert parsed.source_map.key_locate(("channels", "a", "adapter")) == (1, 14)


def test_scalars_keep_their_meaning_and_timestamps_stay_text():
    parsed = parse(
        "a: 12\nb: 0x1F\nc: 1.5\nd: true\ne: ~\nf: 2026-12-01\ng: 2026-12-24T20:00:00\nh: yes\n2024: k\n"
    )
    assert parsed.data == {
        "a": 12,
        "b": 31,
        "c": 1.5,
        "d": True,
        "e": None,
        "f": "2026-12-01",
        "g": "2026-12-24T20:00:00",
        "h": "yes",
        "2024": "k",
    }


def test_window_dates_and_at_datetimes_are_parsed_by_the_models():
    text = VALID.replace("title: 读书打卡\n", "window: {start: 2026-12-01, days: 21}\n").replace(
        "    event: member.joined\n", "    at: 2026-12-20T20:00:00\n    for_each: audience\n"
    )
    playbook = only(load_text(text)).playbook
    assert str(playbook.window.start) == "2026-12-01"
    assert playbook.triggers[0].at == "2026-12-20T20:00:00"


def test_a_recursive_alias_is_refused():
    parsed = parse("a: &a [1, *a]\n")
    assert [(p.line, p.col, p.message) for p in parsed.problems] == [
        (1, 4, "an alias refers to a value that contains it")
    ]
    assert not parsed.usable


def test_a_byte_order_mark_is_accepted(write, tmp_path):
    path = write("pb.yaml", "\ufeff".encode() + VALID.encode())
    only(load([path]))


def test_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load([tmp_path / "nope.yaml"])


def test_folders_are_searched_recursively_with_exclusions(write, tmp_path):
    for name in [
        "a.yaml",
        "sub/b.yml",
        "sub/deeper/c.yaml",
        "cmtyflow.yaml",
        "a.test.yaml",
        "templates/x.yaml",
        "sub/templates/y.yaml",
        ".github/workflows/ci.yml",
        "notes.txt",
    ]:
        write(name, "x: 1\n")
    playbooks, defaults = discover([tmp_path])
    rel = [p.relative_to(tmp_path).as_posix() for p in playbooks]
    assert rel == ["a.yaml", "sub/b.yml", "sub/deeper/c.yaml"]
    assert [p.relative_to(tmp_path).as_posix() for p in defaults] == ["cmtyflow.yaml"]


def test_paths_are_reported_as_given(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("playbooks/pb.yaml", "cmtyflow: 1\nname: x\nbogus: 1\n")
    (problem,) = load(["playbooks"]).problems
    assert problem.path == "playbooks/pb.yaml"


FOLDER_DEFAULTS = """\
policies:
  quiet_hours: {start: "22:00", end: "08:00"}
  max_per_member_per_day: 3
channels:
  group: {adapter: console, prefix: "[group] "}
  log: {adapter: file, path: log.jsonl}
roles:
  moderators: [u001, u002]
  hosts: [u009]
"""


def test_folder_defaults_merge_per_key_and_the_playbook_wins(write, tmp_path):
    write("cmtyflow.yaml", FOLDER_DEFAULTS)
    path = write(
        "pb.yaml",
        """\
        cmtyflow: 1
        name: demo
        policies:
          max_per_member_per_day: 5
        channels:
          group: {adapter: console, prefix: "[own] "}
        roles:
          hosts: [u010]
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {channel: log, text: hi, to: roles.moderators}
        """,
    )
    result = load([path])
    playbook = only(result).playbook
    assert playbook.policies.max_per_member_per_day == 5
    assert playbook.policies.quiet_hours.start == "22:00"
    assert playbook.channels["group"].settings() == {"prefix": "[own] "}
    assert playbook.channels["log"].adapter == "file"
    assert playbook.roles == {"moderators": ["u001", "u002"], "hosts": ["u010"]}
    assert [p.name for p in result.files] == ["pb.yaml", "cmtyflow.yaml"]


def test_problems_in_folder_defaults_point_into_that_file(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        "cmtyflow.yaml",
        """\
        policies:
          quiet_hours: {start: "25:00", end: "08:00"}
        channels:
          group: {adapter: consle}
        rols: {}
        """,
    )
    write(
        "pb.yaml",
        """\
        cmtyflow: 1
        name: demo
        triggers:
          - {id: joined, event: member.joined, flow: onboard}
        flows:
          onboard:
            - send: {text: hi}
        """,
    )
    found = [f"{p.path}:{p.line}:{p.col}: {p.message}" for p in load(["."]).problems]
    assert found == [
        "cmtyflow.yaml:2:24: '25:00' is not a time of day; write HH:MM such as 20:00",
        "cmtyflow.yaml:4:20: unknown adapter 'consle' (did you mean 'console'?); installed adapters are "
        + ", ".join(sorted(__import__("cmtyflow.adapters.registry", fromlist=["names"]).names())),
        "cmtyflow.yaml:5:1: unknown key 'rols' in cmtyflow.yaml (did you mean 'roles'?)",
    ]


def test_load_text_uses_the_folder_of_a_real_path(write, tmp_path):
    write("cmtyflow.yaml", FOLDER_DEFAULTS)
    text = VALID.replace("channels:\n  group: {adapter: console}\n", "")
    text = text.replace('{text: "hi', '{channel: group, text: "hi').replace(
        "      send:\n", "      send:\n        channel: log\n"
    )
    assert (
        only(load_text(text, tmp_path / "pb.yaml")).playbook.channels["group"].adapter == "console"
    )
    # Without a real path there is no folder, so no channels at all.
    assert not load_text(text).ok


def test_templates_are_collected_and_part_of_the_version(write, tmp_path):
    write("templates/welcome.txt.j2", "Hello {{ member.name }}\n")
    write("templates/welcome.zh-CN.md.j2", "你好 **{{ member.name }}**\n")
    path = write("pb.yaml", VALID.replace('{text: "hi {{ member.name }}"}', "{template: welcome}"))
    first = only(load([path]))
    assert sorted((s.locale or "", s.format) for s in first.templates["welcome"]) == [
        ("", "plain"),
        ("zh-CN", "markdown"),
    ]
    write("templates/welcome.txt.j2", "Hi {{ member.name }}\n")
    assert only(load([path])).version != first.version


def test_the_version_depends_on_folder_defaults(write, tmp_path):
    path = write("pb.yaml", VALID)
    before = only(load([path])).version
    write("cmtyflow.yaml", "policies:\n  max_per_member_per_day: 3\n")
    assert only(load([path])).version != before


def test_an_explicit_folder_defaults_file_is_validated(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("cmtyflow.yaml", "polices:\n  max_per_member_per_day: 3\n")
    result = load(["cmtyflow.yaml"])
    assert [f"{p.line}:{p.col}: {p.message}" for p in result.problems] == [
        "1:1: unknown key 'polices' in cmtyflow.yaml (did you mean 'policies'?)"
    ]
    assert result.playbooks == []


@pytest.mark.parametrize(
    "text",
    [
        "cmtyflow: 1\nname: x\nflows: {a: [{send: {text: hi, to: 5}}]}\n",
        "cmtyflow: 1\nname: x\nflows: {a: [{send: {text: hi, to: [1, {}]}}]}\n",
        "cmtyflow: 1\nname: x\nflows: {a: [{repeat: {times: [1], steps: []}}]}\n",
        "cmtyflow: 1\nname: x\nwindow: {start: 2026-13-01, days: 0}\ngoals: {g: {event: x}}\n",
        "cmtyflow: 1\nname: x\ntriggers: {a: 1}\nroles: {r: x}\nvars: []\naudience: x\n",
        "cmtyflow: 1\nname: x\nflows: {a: [{checkin: 5}, {award: {points: 1.5}}, {tag: {}}, send]}\n",
        "cmtyflow: 1\nname: x\ntriggers: [{id: t, flow: a, manual: {inputs: {n: {type: date}}}}]\n",
        "cmtyflow: 1\nname: x\nflows: {a: [{send: {variants: {a: {weight: 0}}}}]}\n",
        "cmtyflow: 1\nname: 5\ntitle: [x]\npolicies: {retry: {attempts: 1000}}\n",
        "cmtyflow: true\nname: x\n",
        "cmtyflow: 1\nname: x\nchannels: {c: {stream: x}}\n",
    ],
)
def test_messages_never_use_pydantic_wording(text):
    result = load_text(text)
    assert result.problems
    for problem in result.problems:
        for phrase in (
            "Input should",
            "Extra inputs",
            "Field required",
            "valid dictionary",
            "[key]",
        ):
            assert phrase not in problem.message


def test_type_errors_read_in_playbook_terms():
    result = load_text(
        "cmtyflow: 1\nname: x\nchannels: {c: {adapter: console}}\n"
        "triggers: [{id: t, event: e, flow: a}]\n"
        "flows: {a: [{send: {text: hi, to: 5}}]}\nvars: []\n"
    )
    assert [f"{p.line}:{p.col}: {p.message}" for p in result.problems] == [
        "5:35: 'to' should be member, channel, a role such as roles.moderators, or a list of member ids, "
        "not the number 5",
        "6:1: 'vars' should be a mapping of names to values, not a list",
    ]


def test_a_file_named_twice_is_loaded_once(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", VALID)
    result = load([".", "pb.yaml", "./pb.yaml"])
    assert result.problems == []
    assert len(result.playbooks) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_in_a_folder_is_a_problem_not_a_hang(write, tmp_path, monkeypatch):
    """`validate DIR` blocked forever in open() on a FIFO named p.yaml."""
    monkeypatch.chdir(tmp_path)
    write("a.yaml", VALID)
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)

    def unblock() -> None:  # a reader blocked on the pipe gets text, so a regression fails, not hangs
        for _ in range(50):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader (ENXIO): nothing opened it (yet)
                time.sleep(0.1)
                continue
            os.write(fd, b"x\n")
            os.close(fd)
            return

    threading.Thread(target=unblock, daemon=True).start()
    result = load(["."])
    assert [f"{p.path}:{p.line}:{p.col}: {p.message}" for p in result.problems] == [
        "p.yaml:1:1: not a regular file but a named pipe (FIFO); a playbook is a text file",
    ]
    assert [p.playbook.name for p in result.playbooks] == ["demo"]  # the other file is still checked


def test_a_named_pipe_for_folder_defaults_is_a_problem_not_skipped(write, tmp_path, monkeypatch):
    """A cmtyflow.yaml that is a FIFO was skipped without a word: the playbooks then
    had no channels, and nothing said why."""
    monkeypatch.chdir(tmp_path)
    write("a.yaml", VALID)
    os.mkfifo(tmp_path / "cmtyflow.yaml")
    result = load(["."])
    assert "cmtyflow.yaml:1:1: not a regular file but a named pipe (FIFO); a playbook is a text file" in [
        f"{p.path}:{p.line}:{p.col}: {p.message}" for p in result.problems
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_a_link_to_a_playbook_beside_it_is_read_once(write, tmp_path, monkeypatch):
    """It was read twice and said "playbook name 'demo' is also used by a.yaml"."""
    monkeypatch.chdir(tmp_path)
    write("a.yaml", VALID)
    (tmp_path / "link.yaml").symlink_to("a.yaml")
    result = load(["."])
    assert result.problems == []
    assert [str(p.path) for p in result.playbooks] == ["a.yaml"]


def test_a_version_written_as_text_is_quoted():
    (problem,) = load_text('cmtyflow: "1"\nname: x\n').problems
    assert (problem.line, problem.col) == (1, 11)
    assert problem.message == "cmtyflow: should be the number 1, not the text '1': write cmtyflow: 1 without quotes"


def test_a_missing_version_says_it_is_missing():
    """`cmtyflow:` with nothing after it said "unsupported language version nothing"."""
    (problem,) = load_text("cmtyflow:\nname: x\n").problems
    assert (problem.line, problem.col) == (1, 1)
    assert problem.message == "cmtyflow: needs the language version: write cmtyflow: 1"


def test_channels_of_folder_defaults_are_checked_without_playbooks(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("cmtyflow.yaml", "channels:\n  log: {adapter: file, pth: x.jsonl}\n")
    assert [f"{p.path}:{p.line}:{p.col}: {p.message}" for p in load(["."]).problems] == [
        "cmtyflow.yaml:2:3: channel 'log' needs setting 'path' (adapter 'file')",
        "cmtyflow.yaml:2:24: unknown setting 'pth' for adapter 'file' (did you mean 'path'?); "
        "its settings are fsync, path",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: !!python/name:os.system ''\n",
            "tag '!!python/name:os.system' is not allowed in a playbook; it holds plain data only",
        ),
        (
            "%TAG !py! tag:yaml.org,2002:python/\n---\na: !py!object/apply:os.system [ls]\n",
            "tag '!!python/object/apply:os.system' is not allowed in a playbook; it holds plain data only",
        ),
        ("a: !!binary aGVsbG8=\n", "binary values (!!binary) are not allowed in a playbook"),
        (
            "a: !secret token\n",
            "tag '!secret' is not allowed in a playbook; it holds plain data only",
        ),
        ("a: !!set {x, y}\n", "tag '!!set' is not allowed in a playbook; it holds plain data only"),
        ("a: !!bool yes\n", "'yes' is not true or false"),
    ],
)
def test_only_standard_tags_are_read(text, message):
    parsed = parse(text)
    assert [p.message for p in parsed.problems] == [message]
    assert not parsed.usable


def test_a_playbooks_version_does_not_depend_on_how_its_path_is_written(tmp_path, monkeypatch):
    """Templates counted in the version by the path as given: `pb.yaml` and its absolute
    path were two versions, so a cron job and a person on one state saw an edit each
    time the other had run."""
    folder = tmp_path / "club"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "hi.txt.j2").write_text("hi {{ member.name }}", encoding="utf-8")
    (folder / "pb.yaml").write_text(
        "cmtyflow: 1\nname: pb\ntimezone: UTC\nchannels:\n  dm: {adapter: console}\n"
        "triggers:\n  - {id: j, event: member.joined, flow: f}\nflows:\n  f:\n    - {id: hi, send: {template: hi}}\n",
        encoding="utf-8",
    )
    absolute = load([folder / "pb.yaml"]).playbooks[0].version
    monkeypatch.chdir(folder)
    assert load(["pb.yaml"]).playbooks[0].version == absolute
    monkeypatch.chdir(folder / "templates")
    assert load(["../pb.yaml"]).playbooks[0].version == absolute
    (folder / "templates" / "hi.txt.j2").write_text("hello {{ member.name }}", encoding="utf-8")
    assert load([folder / "pb.yaml"]).playbooks[0].version != absolute  # a template's text still counts
