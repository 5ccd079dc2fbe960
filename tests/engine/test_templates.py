"""Template lookup in runs (SPEC 2): member locale, playbook locale, then none."""

from __future__ import annotations

LOCALES = """
cmtyflow: 1
name: loc
timezone: Asia/Shanghai
locale: {locale}
channels:
  dm: {{adapter: console}}
triggers:
  - id: t
    at: 2026-12-01T10:00
    for_each: audience
    flow: f
flows:
  f:
    - id: hello
      send: {{channel: dm, template: hello}}
"""


def test_locale_chain_member_then_playbook_then_none(simulate, tmp_path):
    roster = [
        {"id": "en", "locale": "en-US"},
        {"id": "fr", "locale": "fr"},  # no French file: the playbook's locale
        {"id": "none"},
    ]
    templates = {"hello.en-US.txt.j2": "hi {{ member.id }}", "hello.zh-CN.txt.j2": "你好 {{ member.id }}"}
    out, _ = simulate(LOCALES.format(locale="zh-CN"), roster, [], "2026-12-01", 1, tmp_path, templates=templates)
    assert [(d["member"], d["text"]) for d in out] == [("en", "hi en"), ("fr", "你好 fr"), ("none", "你好 none")]


def test_locale_falls_back_to_the_file_without_locale(simulate, tmp_path):
    roster = [{"id": "de", "locale": "de"}]
    templates = {"hello.en.txt.j2": "hi", "hello.txt.j2": "fallback"}
    out, _ = simulate(LOCALES.format(locale="ja"), roster, [], "2026-12-01", 1, tmp_path, templates=templates)
    assert [d["text"] for d in out] == ["fallback"]


def test_locales_match_regardless_of_case_and_separator(simulate, tmp_path):
    """As ``templates.pick`` (what ``validate`` checks against) reads them: ``en_us``
    and ``EN-us`` name the file ``hello.en-US.txt.j2``. Without that, a playbook that
    validates fails every run with 'no file for locales'."""
    roster = [{"id": "a", "locale": "en-us"}, {"id": "b", "locale": "en_US"}, {"id": "c", "locale": "zh-CN"}]
    templates = {"hello.en-US.txt.j2": "hi", "hello.zh-cn.txt.j2": "你好"}
    out, summary = simulate(LOCALES.format(locale="ZH_CN"), roster, [], "2026-12-01", 1, tmp_path, templates=templates)
    assert [(d["member"], d["text"]) for d in out] == [("a", "hi"), ("b", "hi"), ("c", "你好")]
    assert summary["runs"]["failed"] == 0


OPTIONAL_COLUMN = """
cmtyflow: 1
name: city
timezone: Asia/Shanghai
channels:
  dm: {adapter: console}
triggers:
  - {id: j, event: member.joined, flow: f}
flows:
  f:
    - {id: hi, send: {channel: dm, text: "{{ member.name }} 来自 {{ member.city }}"}}
    - {id: soft, send: {channel: dm, text: "{{ member.get('city', '某地') }}"}}
"""


def test_a_member_without_a_column_fails_with_a_message_that_says_what_to_write(simulate, tmp_path):
    # u2's city cell is empty: `member.city` fails that run and says how to read an
    # optional column; `member.get` reads it.
    roster = [{"id": "u1", "name": "阿明", "city": "上海"}, {"id": "u2", "name": "小红"}]
    events = [{"id": f"j{m}", "type": "member.joined", "member": m, "at": "2026-12-01T10:00:00"} for m in ("u1", "u2")]
    out, summary = simulate(OPTIONAL_COLUMN, roster, events, "2026-12-01", 1, tmp_path)
    assert [(d["member"], d["text"]) for d in out] == [("u1", "阿明 来自 上海"), ("u1", "上海")]
    assert summary["warnings"] == [
        "run city/j:ju2 failed at hi: template hi: undefined name or key: member u2 has no 'city': no such roster "
        "column, or an empty cell for this member; member.get('city', '') reads an optional column"
    ]
    out, _ = simulate(OPTIONAL_COLUMN.replace('"{{ member.name }} 来自 {{ member.city }}"', '"{{ member.name }}"'),
                      roster, events, "2026-12-01", 1, tmp_path / "soft")
    assert [(d["member"], d["text"]) for d in out if d["step"] == "soft"] == [("u1", "上海"), ("u2", "某地")]


def test_a_state_key_not_set_yet_says_how_to_read_it(simulate, tmp_path):
    text = OPTIONAL_COLUMN.replace('"{{ member.name }} 来自 {{ member.city }}"', '"{{ state.invites }}"')
    roster = [{"id": "u1", "name": "阿明"}]
    events = [{"id": "j1", "type": "member.joined", "member": "u1", "at": "2026-12-01T10:00:00"}]
    _, summary = simulate(text, roster, events, "2026-12-01", 1, tmp_path)
    assert summary["warnings"] == [
        "run city/j:j1 failed at hi: template hi: undefined name or key: state has no 'invites' yet; "
        "state.get('invites', 0) reads a key that may not be set"
    ]
