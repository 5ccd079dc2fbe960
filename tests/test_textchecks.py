"""validate warns of a ``state.KEY`` read that no step of the playbook writes
(textchecks.py): each run that reaches it would fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cmtyflow.loader import load, load_text
from cmtyflow.problems import WARNING

HEAD = """\
cmtyflow: 1
name: levels
timezone: UTC
channels:
  dm: {adapter: console}
triggers:
  - {id: joined, event: member.joined, flow: hi}
flows:
  hi:
    - set: {level: 2}
"""


def _warnings(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{p.line}:{p.col}: {p.message}" for p in result.problems if p.severity == WARNING]


def test_a_key_no_step_sets_is_a_warning_with_the_near_one() -> None:
    result = load_text(HEAD + '    - {send: {channel: dm, text: "lv {{ state.levle }}"}}\n')
    assert _warnings(result) == [
        "11:34: state 'levle' is read but no step of this playbook sets it (did you mean 'level'?), so a run "
        "that reads it fails; write it with set: {levle: ...}, or read it as state.get('levle', 0)"
    ]
    assert result.ok


def test_keys_set_built_in_or_guarded_are_not_warned() -> None:
    body = (
        "    - if: \"state.level > 1 and state['level'] < 9 and state.points >= 0 and state.streak >= 0\"\n"
        "      send: {channel: dm, text: \"{{ state.get('rank', 0) }} {{ state.badges | length }}\"}\n"
        "    - if: \"state.rank is defined and state.rank > 1\"\n"
        "      send: {channel: dm, text: \"{% if 'medal' in state %}{{ state.medal }}{% endif %}\"}\n"
        "    - if: \"state.items() | length > 0\"\n"
        "      send: {channel: dm, text: \"{% set state = {'x': 1} %}{{ state.x }}\"}\n"
    )
    result = load_text(HEAD + body)
    assert _warnings(result) == []


def test_a_key_read_in_a_template_file_is_warned_there(write: Callable[..., Path], tmp_path: Path) -> None:
    write("pb/templates/hi.txt.j2", "hello\n{{ state.rnak }}\n")
    path = write("pb/levels.yaml", HEAD + "    - {send: {channel: dm, template: hi}}\n")
    result = load([path])
    found = [p for p in result.problems if p.severity == WARNING]
    assert [(Path(p.path).name, p.line, p.col) for p in found] == [("hi.txt.j2", 2, 1)]
    assert found[0].message.startswith("state 'rnak' is read but no step of this playbook sets it (its steps set level),")
    assert found[0].message.endswith("(in playbook levels.yaml)")
