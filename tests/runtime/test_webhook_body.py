"""The webhook's request body written out directly is ``_http.dumps`` of its payload,
byte for byte, and a reply's JSON read directly is what ``json.loads`` reads: the
dispatcher's hot path keeps the documented wire format."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from cmtyflow.adapters._http import Reply, dumps
from cmtyflow.adapters.webhook import body_of

STRINGS = ["", "k", 'a "quoted" \\ path/', "ctl \x00\x01\x1f\x7f\t\n\r", "你好 🎉 \u2028\u2029 é", "</script>&<>"]


class Sub(str):
    pass


def payload(key: Any, channel: Any, playbook: Any, member: Any, text: Any, fmt: Any, urgent: Any) -> dict[str, Any]:
    return {"key": key, "channel": channel, "playbook": playbook, "member": member, "text": text, "format": fmt, "urgent": urgent}


@pytest.mark.parametrize("text", STRINGS)
def test_the_body_is_dumps_of_the_payload_byte_for_byte(text: str) -> None:
    for key, playbook, member, urgent in itertools.product(STRINGS[:3] + [text], [None, "pb", text], [None, "m1", text], [True, False]):
        args = (key, "hook" + text, playbook, member, text, "plain", urgent)
        assert body_of(*args) == dumps(payload(*args))


@pytest.mark.parametrize("odd", [Sub("sub"), 1, 1.5, None])
def test_values_of_other_types_go_through_dumps(odd: Any) -> None:
    args = ("k", "hook", "pb", "m1", "hi", "plain", False)
    for i in range(7):
        if i in (2, 3) and odd is None:
            continue  # None is a plain value there
        changed = list(args)
        changed[i] = odd
        assert body_of(*changed) == dumps(payload(*changed))


@pytest.mark.parametrize("body", [
    b'{"id":"1"}', b'{"id": 1}  \r\n', b'[1,2]', b'{"id":1} x', b"{", b"", b"null", b'"x"', b'{"a":NaN}',
    b' {"a":1}', b'\xef\xbb\xbf{"a":1}', b'{"a":"\xff"}', b'{"a":"\\ud800"}', b'{"a":1}\x0c',
    '{"a":"é"}'.encode("utf-16"), '{"a":"é"}'.encode("utf-16-le"), '{"a":"é"}'.encode("utf-32"),
])
def test_a_replys_json_is_what_json_loads_reads(body: bytes) -> None:
    try:
        want = json.loads(body)
    except ValueError:
        want = None
    got = Reply(200, None, body).json()  # type: ignore[arg-type]
    assert got == want or (got != got and want != want) or json.dumps(got) == json.dumps(want)
