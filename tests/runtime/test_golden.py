"""Reading golden transcript specs (``cmtyflow test``): what keeps one from being read
is said as ``file:line:col: message``, never a traceback or the YAML library's text."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmtyflow.cli import main
from cmtyflow.errors import UserError
from cmtyflow.runtime.golden import read_spec

GOOD = "playbook: pb.yaml\nroster: r.csv\nstart: 2026-12-01\ndays: 2\n"


def _refusal(tmp_path: Path, content: str | bytes) -> str:
    spec = tmp_path / "x.test.yaml"
    if isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_spec(spec)
    return str(caught.value).replace(str(spec), "x.test.yaml")


def test_a_spec_that_is_not_utf8_is_an_error_naming_its_line_and_column(tmp_path, capsys):
    """It crashed (exit 3, UnicodeDecodeError in the crash log)."""
    spec = tmp_path / "x.test.yaml"
    spec.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    assert main(["test", str(spec)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {spec}:5:6: not UTF-8 text: save the file as UTF-8\n" in out


def test_a_syntax_error_is_placed_without_the_yaml_librarys_text(tmp_path):
    assert _refusal(tmp_path, GOOD.replace("roster: r.csv", "roster: [r.csv")) == (
        "x.test.yaml:3:6: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 2)"
    )


def test_a_duplicate_key_is_placed_without_a_link_to_suppress_the_check(tmp_path):
    """It printed ruamel's "To suppress this check see https://yaml.dev/..."."""
    assert _refusal(tmp_path, "playbook: a.yaml\n" + GOOD) == "x.test.yaml:2:1: duplicate key 'playbook' (first at line 1)"


def test_a_tag_is_refused_at_its_place(tmp_path):
    assert _refusal(tmp_path, GOOD.replace("playbook: pb.yaml", "playbook: !!python/name:os.system pb.yaml")) == (
        "x.test.yaml:1:11: tag '!!python/name:os.system' is not allowed in a golden spec; it holds plain data only"
    )


def test_an_unknown_key_is_named_with_the_key_it_may_stand_for(tmp_path):
    """It said only "roster: Field required"."""
    assert _refusal(tmp_path, GOOD.replace("roster:", "rooster:")) == (
        "x.test.yaml:2:1: unknown key 'rooster' in golden spec (did you mean 'roster'?)\n"
        "x.test.yaml: roster: Field required"
    )


@pytest.mark.parametrize("start", ["2026-12-01", "2026-12-01T09:00:00+08:00", "'2026-12-01'"])
def test_a_start_is_read_as_written(tmp_path, start):
    spec = tmp_path / "x.test.yaml"
    spec.write_text(GOOD.replace("2026-12-01", start), encoding="utf-8")
    assert read_spec(spec).start == start.strip("'")
