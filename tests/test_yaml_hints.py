"""YAML that reads differently from what the author meant: a control character, a
` #` hashtag in unquoted text (a comment to YAML), `{{ }}` at the start of an unquoted
value (a mapping to YAML). Each problem at its exact ``line:col`` (characters, a CJK
character counting one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmtyflow.loader import load, load_text

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"

HEAD = """\
cmtyflow: 1
name: x
channels: {group: {adapter: console}}
triggers: [{id: t, event: message.posted, flow: f}]
flows:
  f:
"""


def problems(text: str) -> list[str]:
    return [f"{p.line}:{p.col}: {p.severity}: {p.message}" for p in load_text(text, "pb.yaml").problems]


# --- control characters ------------------------------------------------------------------


def test_a_control_character_is_placed_by_characters_and_named():
    """libyaml gives the offset in UTF-8 bytes: after 读书会 (9 bytes, 3 characters) the
    problem landed two lines further (4:5)."""
    text = "cmtyflow: 1\nname: x\ntitle: 读书会\x07\nflows: {}\n"
    assert problems(text) == [
        "3:11: error: YAML syntax error: control characters are not allowed: this line holds U+0007 (BELL), "
        "an invisible character (copied from another program?); delete it"
    ]


def test_a_control_character_after_a_crlf_line_is_placed_on_its_line():
    text = "cmtyflow: 1\r\nname: x\r\ntitle: 读书\x1b会\r\nflows: {}\r\n"
    (found,) = problems(text)
    assert found.startswith("3:10: error: YAML syntax error: control characters are not allowed: this line holds U+001B (ESCAPE)")


# --- ' #' in unquoted text ---------------------------------------------------------------

CUT = "the text stops at ' #' (YAML reads the rest of the line as a comment, so this value is '{}'): quote the whole value to keep it"


def test_a_hashtag_in_unquoted_text_is_a_warning_at_the_hash():
    text = HEAD + "    - send:\n        text: 本周话题 #读书 欢迎 {{ member.name }}\n"
    assert problems(text) == [f"8:20: warning: {CUT.format('本周话题')}"]
    assert load_text(text, "pb.yaml").ok  # a warning: the playbook still runs


@pytest.mark.parametrize(
    ("line", "where", "value"),
    [
        ("title: 读书会 #2026\n", "3:12", "读书会"),
        ("vars: {topic: 读书}\n", None, None),
    ],
    ids=["title", "no-comment"],
)
def test_a_hashtag_in_the_title_is_a_warning(line, where, value):
    text = HEAD.replace("name: x\n", "name: x\n" + line) + "    - send: {text: hi}\n"
    expected = [f"{where}: warning: {CUT.format(value)}"] if where else []
    assert problems(text) == expected




def test_a_comment_right_after_an_if_is_a_comment():
    """An expression holds no hashtag: what follows ' #' there is a comment."""
    text = (
        HEAD.replace("flow: f}]", "flow: f, where: \"event.data.channel == 'g'\"}]")
        + "    - if: member.name == 'a' #only-a\n      stop: x\n"
    )
    assert problems(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "        text: hello  # two spaces: an ordinary comment\n",
        "        text: hello # a space after the hash: an ordinary comment\n",
        "        text: hello #\n",
        '        text: "本周话题 #读书 欢迎"\n',
        "        text: '本周话题 #读书'  # quoted\n",
        "        text: 话题#读书\n",  # no space before '#': part of the text
    ],
    ids=["two-spaces", "space-after-hash", "empty-comment", "double-quoted", "single-quoted", "no-space"],
)
def test_ordinary_comments_and_quoted_hashtags_are_not_warned_about(line):
    assert problems(HEAD + "    - send:\n" + line) == []


def test_a_hash_comment_outside_messages_is_not_warned_about():
    """Channel settings and policies hold no message text: a comment there is a comment."""
    text = HEAD.replace("channels: {group: {adapter: console}}\n", "channels:\n  group:\n    adapter: console #dev\n")
    assert problems(text + "    - send: {text: hi}\n") == []


def test_the_shipped_playbooks_have_no_hashtag_warnings():
    result = load([PLAYBOOKS])
    assert result.problems == []


def test_a_hashtag_in_braces_points_at_the_hash():
    """The comment hides the closing '}': the parser stopped on the next line."""
    text = HEAD + "    - send: {text: 本周话题 #读书}\n    - stop: x\n"
    assert problems(text) == [
        "7:25: error: YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping at line 7); "
        "the ' #' here starts a YAML comment, which hides the rest of the line, the closing bracket too: "
        "quote the value that holds it"
    ]


# --- {{ }} at the start of an unquoted value -------------------------------------------------

QUOTE = "a value starting with '{' must be quoted (YAML reads '{' as the start of a mapping)"


def test_a_template_alone_without_quotes_says_to_quote_it():
    """It said "a mapping key must be plain text, not a list or mapping"."""
    text = HEAD + "    - send:\n        text: {{ member.name }}\n"
    assert problems(text) == [f'8:15: error: {QUOTE}: write text: "{{{{ member.name }}}}"']


def test_a_template_in_braces_without_quotes_says_to_quote_it():
    text = HEAD + "    - send: {text: {{ member.name }}}\n"
    assert problems(text) == [f'7:20: error: {QUOTE}: write text: "{{{{ member.name }}}}"']


def test_a_template_followed_by_text_without_quotes_says_to_quote_it():
    """It said only "did not find expected key", at the end of the value."""
    text = HEAD + "    - send:\n        text: {{ member.name }} 你好\n"
    assert problems(text) == [
        "8:15: error: YAML syntax error: did not find expected key; "
        f'{QUOTE}, as in text: "{{{{ member.name }}}} 你好"'
    ]


def test_a_template_followed_by_text_in_braces_says_to_quote_it_without_the_brace():
    text = HEAD + "    - send: {text: {{ member.name }} 你好}\n"
    assert problems(text) == [
        "7:20: error: YAML syntax error: did not find expected ',' or '}'; "
        f'{QUOTE}, as in text: "{{{{ member.name }}}} 你好"'
    ]


def test_a_template_after_another_key_in_braces_is_quoted_alone_in_the_hint():
    """The example took the keys before it too: 'as in dm, text: "..."'."""
    text = HEAD + "    - send: {channel: dm, text: {{ member.name }} 你好}\n"
    (found,) = problems(text)
    assert found.endswith(f'{QUOTE}, as in text: "{{{{ member.name }}}} 你好"'), found


def test_an_expression_in_braces_says_to_leave_them_out():
    text = HEAD + "    - if: {{ member.name }}\n      stop: x\n"
    assert problems(text) == ["7:11: error: an expression is written without {{ }}: write if: member.name"]


def test_a_comment_after_an_id_an_event_type_or_a_duration_is_not_a_cut_text():
    """`flow: f #welcome-flow`, `wait: 3d #three-days`: comments on values that are not
    text for people; quoting them, as the warning said, broke them."""
    from cmtyflow.loader import load_text

    text = (
        "cmtyflow: 1\nname: fp\ntimezone: Asia/Shanghai\nchannels:\n  dm: {adapter: console}\n"
        "triggers:\n  - id: t1 #main\n    event: member.joined #from-discord\n    flow: f #welcome-flow\n"
        "flows:\n  f:\n    - id: hello #step1\n      send:\n        channel: dm #private\n        text: 本周话题 #读书 欢迎\n"
        "    - wait: 3d #three-days\n"
    )
    found = [(p.line, p.severity) for p in load_text(text).problems]
    assert found == [(15, "warning")]  # the text alone
