"""``outbox --format json`` writes its rows as it reads them (cli/inspect.py): the same
text as one ``json.dumps`` of the whole list, without holding the list."""

from __future__ import annotations

import json

import pytest

from cmtyflow.cli.inspect import _echo_json_rows


@pytest.mark.parametrize("docs", [[], [{"a": 1}], [{"text": "第一行\n第二行", "n": None, "l": [1, {"x": []}]}, {"b": "2"}]])
def test_rows_written_one_by_one_read_as_the_whole_list(docs, capsys):
    assert _echo_json_rows(iter(docs)) == len(docs)
    out = capsys.readouterr().out
    assert out == json.dumps(docs, ensure_ascii=False, indent=2) + "\n"
    assert json.loads(out) == docs
