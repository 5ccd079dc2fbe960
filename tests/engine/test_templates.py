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
