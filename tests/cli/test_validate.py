"""``cmtyflow validate`` and ``cmtyflow schema`` from the command line (SPEC 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ruamel.yaml import YAML

from cmtyflow.cli import main
from cmtyflow.cli.schema import SHIPPED, schema_text

GOOD = """\
cmtyflow: 1
name: good
channels:
  group: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: onboard}
flows:
  onboard:
    - send: {text: "Hello {{ member.name }}"}
"""

BAD = """\
cmtyflow: 1
name: bad
channels:
  group: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: onboard}
flows:
  onboard:
    - send: {text: "Hello {{ membr.name }}"}
  spare:
    - stop: done
"""


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_playbooks_exit_0(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("playbooks/good.yaml", GOOD)
    assert run(capsys, "validate", "playbooks") == (0, "1 file, 0 errors, 0 warnings\n", "")


def test_problems_are_printed_with_source_line_and_caret(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("playbooks/bad.yaml", BAD)
    write("playbooks/good.yaml", GOOD)
    code, out, _err = run(capsys, "validate", "playbooks")
    assert code == 1
    assert out == (
        "playbooks/bad.yaml:9:20: error: unknown name 'membr' (did you mean 'member'?); names in scope are "
        "audience, checkin, event, member, now, roles, run, state, today, vars, wait\n"
        '        - send: {text: "Hello {{ membr.name }}"}\n'
        "                       ^\n"
        "playbooks/bad.yaml:10:3: warning: flow 'spare' is never started: no trigger names it\n"
        "      spare:\n"
        "      ^\n"
        "2 files, 1 error, 1 warning\n"
    )


def test_warnings_alone_exit_0(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", GOOD + "  spare:\n    - stop: done\n")
    code, out, _ = run(capsys, "validate", "pb.yaml")
    assert code == 0
    assert out.endswith("1 file, 0 errors, 1 warning\n")


def test_the_caret_accounts_for_wide_characters(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", GOOD.replace("name: good", "name: good\ntitle: 读书\nvars: {书: [a, {}: x]}"))
    code, out, _ = run(capsys, "validate", "pb.yaml")
    assert code == 1
    lines = out.splitlines()
    assert (
        lines[0] == "pb.yaml:4:15: error: a mapping key must be plain text, not a list or mapping"
    )
    assert lines[1] == "    vars: {书: [a, {}: x]}"
    # 书 takes two terminal columns, so the caret moves one further right.
    assert lines[2] == "    " + " " * 15 + "^"


def test_json_format(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("bad.yaml", BAD)
    write("good.yaml", GOOD)
    code, out, _ = run(capsys, "validate", "--format", "json", "bad.yaml", "good.yaml")
    assert code == 1
    assert json.loads(out) == {
        "files": 2,
        "errors": 1,
        "warnings": 1,
        "problems": [
            {
                "path": "bad.yaml",
                "line": 9,
                "col": 20,
                "severity": "error",
                "message": "unknown name 'membr' (did you mean 'member'?); names in scope are "
                "audience, checkin, event, member, now, roles, run, state, today, vars, wait",
            },
            {
                "path": "bad.yaml",
                "line": 10,
                "col": 3,
                "severity": "warning",
                "message": "flow 'spare' is never started: no trigger names it",
            },
        ],
    }


def test_json_format_when_all_is_well(write, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write("good.yaml", GOOD)
    code, out, _ = run(capsys, "validate", "good.yaml", "--format=json")
    assert code == 0
    assert json.loads(out) == {"files": 1, "errors": 0, "warnings": 0, "problems": []}


def test_schema_matches_the_shipped_file(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert out == schema_text()
    assert out == SHIPPED.read_text(encoding="utf-8")
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "cmtyflow playbook"
    assert {"cmtyflow", "name"} <= set(schema["required"])


def test_schema_output_file(tmp_path, capsys):
    target = tmp_path / "schema.json"
    assert run(capsys, "schema", "--output", str(target)) == (0, "", "")
    assert target.read_text(encoding="utf-8") == schema_text()


def test_the_schema_accepts_a_valid_playbook():
    import jsonschema

    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = YAML(typ="safe").load(GOOD)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data)) == []


def test_pre_commit_hook_definition():
    hooks = YAML(typ="safe").load(
        Path(__file__).resolve().parents[2].joinpath(".pre-commit-hooks.yaml").read_text()
    )
    (hook,) = hooks
    assert hook["id"] == "cmtyflow-validate"
    assert hook["entry"] == "cmtyflow validate"
    assert hook["language"] == "python"
    assert hook["files"] == r"\.ya?ml$"
    chosen = [
        path
        for path in [
            "playbooks/onboarding.yaml",
            "playbooks/cmtyflow.yaml",
            "community.yml",
            ".pre-commit-config.yaml",
            ".github/workflows/ci.yml",
            "playbooks/templates/x.yaml",
            "playbooks/onboarding.test.yaml",
            "templates/welcome.txt.j2",
        ]
        if re.search(hook["files"], path) and not re.search(hook["exclude"], path)
    ]
    assert chosen == ["playbooks/onboarding.yaml", "playbooks/cmtyflow.yaml", "community.yml"]


def test_validate_fails_when_it_checked_nothing(tmp_path, capsys):
    """A mistyped folder, a golden spec named as a playbook or a device must not pass a
    CI step with '0 files, 0 errors' and exit 0."""
    from cmtyflow.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "x.test.yaml").write_text("playbook: x.yaml\n", encoding="utf-8")
    (tmp_path / "hi.en.md.j2").write_text("Hi {{ member.name }}\n", encoding="utf-8")
    assert main(["validate", str(tmp_path / "empty")]) == 1
    assert f"no playbooks found in {tmp_path / 'empty'}" in capsys.readouterr().err
    cases = [
        (str(tmp_path / "x.test.yaml"), "a golden test spec, not a playbook; run it with `cmtyflow test"),
        ("/dev/null", "/dev/null:1:1: error: not a playbook file or a folder of them"),
        # It was read as YAML: "did not find expected alphabetic or numeric character".
        (str(tmp_path / "hi.en.md.j2"), "a message template, not a playbook; templates are checked through the playbooks"),
    ]
    for path, message in cases:
        assert main(["validate", path]) == 1
        assert message in capsys.readouterr().out


def test_a_folder_defaults_file_is_checked_with_the_playbooks_that_inherit_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A pre-commit hook passes only the files that changed: a channel removed from
    cmtyflow.yaml passed ("1 file, 0 errors") while every playbook using it broke."""
    (tmp_path / "cmtyflow.yaml").write_text("policies: {max_per_member_per_day: 3}\n", encoding="utf-8")
    (tmp_path / "pb.yaml").write_text(
        "cmtyflow: 1\nname: pb\ntimezone: UTC\n"
        "triggers: [{id: t, event: member.joined, flow: f}]\n"
        "flows: {f: [{send: {channel: dm, text: hi}}]}\n",
        encoding="utf-8",
    )
    assert main(["validate", str(tmp_path / "cmtyflow.yaml")]) == 1
    out = capsys.readouterr().out
    assert "pb.yaml" in out and "dm" in out and "2 files" in out


def test_json_format_when_a_folder_holds_no_playbooks(tmp_path, monkeypatch, capsys):
    """It printed "error: no playbooks found in empty" on stderr and nothing on stdout."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "validate", "--format", "json", "empty")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "files": 0,
        "errors": 1,
        "warnings": 0,
        "problems": [
            {"path": "empty", "line": 1, "col": 1, "severity": "error", "message": "no playbooks found in this folder"},
        ],
    }


WARNED = """\
cmtyflow: 1
name: warned
channels:
  group: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: onboard}
flows:
  onboard:
    - send:
        text: 本周话题 #读书
  spare:
    - stop: done
"""


def test_dry_run_and_plan_print_the_warnings_validate_prints(write, tmp_path, monkeypatch, capsys):
    """dry-run, run --once and plan dropped validate's warnings (they printed problems
    only when there were errors); on stderr, so that the output stays the same."""
    monkeypatch.chdir(tmp_path)
    write("pb.yaml", WARNED)
    write("m.csv", "id,name\nu1,Ann\n")
    code, out, _err = run(capsys, "validate", "pb.yaml")
    warnings = out[: out.rindex("1 file, 0 errors, 2 warnings")]
    assert code == 0 and warnings.count(": warning: ") == 2
    code, out, err = run(capsys, "dry-run", "pb.yaml", "--roster", "m.csv", "--start", "2026-12-01", "--days", "1")
    assert code == 0 and err == warnings and ": warning: " not in out
    code, _out, err = run(capsys, "plan", "pb.yaml", "--state", str(tmp_path / "state.db"))
    assert err.startswith(warnings)
    # A JSON log gets them as lines of its own; report and launch, which read the
    # playbook only for its name or timezone, say nothing (report said them twice).
    import json

    code, _out, err = run(capsys, "run", "pb.yaml", "--once", "--state", str(tmp_path / "state.db"), "--log-format", "json")
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert code == 0 and [d["event"] for d in logged].count("validate_warning") == 2
    assert all(line.startswith("{") for line in err.splitlines()[:-1])  # JSON lines, then run's last line
    code, _out, err = run(capsys, "report", "pb.yaml", "--state", str(tmp_path / "state.db"))
    assert code == 0 and ": warning: " not in err
