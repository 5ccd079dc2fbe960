from __future__ import annotations

import pytest
from adapter_cases import message, telegram_parse

from cmtyflow.adapters.text import (
    TextTooLong,
    defuse_feishu_at,
    escape_discord,
    escape_html,
    escape_markdown,
    escape_markdown_v2,
    escape_slack,
    fit_escaped,
    fit_parts,
    html_to_text,
    pick,
    plain_to_html,
    split_text,
    utf8_len,
)

NAME = "@everyone <b>x</b> *y*"


def test_pick_prefers_the_adapters_order_then_alternatives() -> None:
    msg = message("*hi*", fmt="markdown", alternatives={"html": "<b>hi</b>", "plain": "hi"})
    assert pick(msg, ("html", "plain")) == ("html", "<b>hi</b>")
    assert pick(msg, ("markdown", "plain")) == ("markdown", "*hi*")
    assert pick(msg, ("plain",)) == ("plain", "hi")


def test_pick_falls_back_to_plain_text() -> None:
    assert pick(message("<p>Hi &amp; <b>bye</b></p>", fmt="html"), ("plain",)) == (
        "plain",
        "Hi & bye",
    )
    assert pick(message("*hi*", fmt="markdown"), ("plain",)) == ("plain", "*hi*")


def test_html_to_text_keeps_paragraphs_and_drops_scripts() -> None:
    markup = "<html><head><title>t</title></head><body><p>One</p><script>x()</script><p>Two<br>three</p></body></html>"
    assert html_to_text(markup) == "One\n\nTwo\nthree"


def test_html_to_text_keeps_link_targets() -> None:
    """A reader of the text part alone can still follow the link (confirm, unsubscribe);
    a link whose text is its target, a script link or a relative one adds nothing."""
    markup = '<p>请点击 <a href="https://club.example.org/confirm?m=u1&amp;k=2">确认参加</a> 完成报名。</p>'
    assert html_to_text(markup) == "请点击 确认参加 <https://club.example.org/confirm?m=u1&k=2> 完成报名。"
    assert html_to_text('<a href="mailto:club@example.org">write to us</a>') == "write to us <mailto:club@example.org>"
    same = '<a href="https://x.org">https://x.org</a> <a href="mailto:a@b.org">a@b.org</a>'
    assert html_to_text(same) == "https://x.org a@b.org"
    assert html_to_text('<a href="javascript:go()">go</a> <a href="/rel">rel</a> <a>none</a>') == "go rel none"


def test_plain_to_html_autoescapes_and_keeps_breaks() -> None:
    assert plain_to_html(f"Hi {NAME}\nline\n\npara") == (
        "<p>Hi @everyone &lt;b&gt;x&lt;/b&gt; *y*<br>\nline</p>\n<p>para</p>"
    )


@pytest.mark.parametrize(
    ("escaper", "expected"),
    [
        (escape_html, "@everyone &lt;b&gt;x&lt;/b&gt; *y*"),
        (escape_slack, "@everyone &lt;b&gt;x&lt;/b&gt; *y*"),
        (escape_markdown_v2, r"@everyone <b\>x</b\> \*y\*"),
        (escape_discord, r"\@everyone \<b\>x\</b\> \*y\*"),
        (escape_markdown, r"@everyone &lt;b\>x&lt;/b\> \*y\*"),
    ],
)
def test_escapers(escaper: object, expected: str) -> None:
    assert escaper(NAME) == expected  # type: ignore[operator]


def test_markdown_v2_escapes_every_reserved_character_and_backslash() -> None:
    hostile = "_*[]()~`>#+-=|{}.!\\ done"
    assert telegram_parse(escape_markdown_v2(hostile), "MarkdownV2") == hostile


def test_feishu_at_tag_is_defused_in_any_case() -> None:
    assert defuse_feishu_at('<AT user_id="all">') == '<\u200bAT user_id="all">'
    assert defuse_feishu_at("<attention>") == "<attention>"


def test_split_prefers_paragraphs_then_lines_then_words() -> None:
    text = "first paragraph here\n\nsecond one\nwith lines and words"
    assert split_text(text, 30) == ["first paragraph here", "second one\nwith lines and", "words"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_text("short", 10) == ["short"]


def test_split_by_bytes_never_cuts_a_character() -> None:
    parts = split_text("打卡" * 10, 7, measure=utf8_len)
    assert parts == ["打卡"] * 10 and all(utf8_len(p) <= 7 for p in parts)


def test_markup_is_cut_only_between_lines() -> None:
    assert split_text("<b>a</b>\n<i>b</i>", 9, words=False) == ["<b>a</b>", "<i>b</i>"]
    with pytest.raises(TextTooLong, match="cannot be split"):
        split_text("<b>" + "a " * 20 + "</b>", 10, words=False)


def test_markup_code_fence_is_closed_and_reopened_in_every_part() -> None:
    text = "intro\n```js\n" + "\n".join(f"x{i}();" for i in range(6)) + "\n```\nend"
    assert split_text(text, 30, words=False) == [
        "intro",
        "```js\nx0();\nx1();\nx2();\n```",
        "```js\nx3();\nx4();\nx5();\n```",
        "end",
    ]


def test_fit_parts_counts_the_reopened_fence_in_bytes() -> None:
    text = "```\n" + "打卡\n" * 8 + "```"
    parts = fit_parts(text, max_length=None, max_bytes=30, markup=True, platform="p")
    assert parts == ["```\n" + "打卡\n" * 3 + "```"] * 2 + ["```\n打卡\n打卡\n```"]
    assert all(utf8_len(p) <= 30 for p in parts)


def test_fit_parts_refuses_when_the_platform_does_not_split() -> None:
    assert fit_parts("x" * 10, max_length=10, platform="p") == ["x" * 10]
    with pytest.raises(TextTooLong, match="p: message is 11 characters, over the 10 allowed"):
        fit_parts("x" * 11, max_length=10, split=False, platform="p")


def test_fit_escaped_counts_the_escaped_length() -> None:
    text = "*a* " * 100
    parts = fit_escaped(text, escape_discord, max_length=50, platform="discord")
    assert all(len(p) <= 50 for p in parts)
    assert " ".join(p.replace("\\", "") for p in parts).split() == text.split()


def test_retry_after_header_as_seconds_or_http_date() -> None:
    from cmtyflow.adapters._http import parse_retry_after

    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    noon = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=lambda: noon) == 30.0


# A line of marked-up text longer than the limit is cut inside the line: it used to be
# refused (TextTooLong), which dead-lettered any one-paragraph Chinese announcement over
# 1,365 characters sent to WeCom as markdown (4,096 bytes).
ANNOUNCEMENT = "".join(f"第{i}天：今天我们一起读完了第{i}章，记得在群里打卡分享你的收获！" for i in range(1, 60))


def test_a_long_chinese_markdown_line_is_cut_after_a_sentence() -> None:
    assert "\n" not in ANNOUNCEMENT and utf8_len(ANNOUNCEMENT) > 4096
    parts = fit_parts("**本周公告**\n" + ANNOUNCEMENT, max_length=None, max_bytes=4096, markup=True, platform="wecom")
    # The heading's line break first (a cut between lines is preferred), then the line
    # after a sentence.
    assert len(parts) == 3 and all(utf8_len(p) <= 4096 for p in parts)
    assert parts[0] == "**本周公告**" and parts[1].startswith("第1天") and parts[1].endswith("！")
    assert parts[1] + parts[2] == ANNOUNCEMENT  # nothing lost or added


def test_a_markdown_line_is_never_cut_inside_inline_markup() -> None:
    """Emphasis, code spans, links and tags (WeCom's <font>) stay whole: the cut goes
    before them, at the last sentence end outside them."""
    for inline in ("**加粗的一句话。还是加粗。**", "`代码。代码。`", "[链接。文字](https://x.org/a.b)", '<font color="info">绿色。绿色。</font>'):
        text = "第一句。" * 3 + inline + "结尾。"
        parts = split_text(text, len(text) - 4, words=False)
        assert parts == ["第一句。" * 3, inline + "结尾。"], inline


def test_a_markdown_line_without_punctuation_is_cut_between_chinese_characters_not_words() -> None:
    assert split_text("打卡" * 10, 7, words=False) == ["打卡打卡打卡打", "卡打卡打卡打卡", "打卡打卡打卡"]
    assert split_text(("stay together " * 3).strip(), 20, words=False) == ["stay together stay", "together stay", "together"]
    with pytest.raises(TextTooLong, match="cannot be split"):  # one long word: no place to cut
        split_text("x" * 30, 10, words=False)
    with pytest.raises(TextTooLong, match="cannot be split"):  # inside a fenced block: not within a line
        split_text("```\n" + "代码" * 20 + "\n```", 16, words=False)


def test_an_html_line_is_cut_after_a_sentence_and_its_tags_closed_and_reopened() -> None:
    text = "<b>" + "读书。" * 6 + "</b>"
    assert split_text(text, 20, words=False, syntax="html") == ["<b>读书。读书。读书。读书。</b>", "<b>读书。读书。</b>"]
    v2 = "*" + "打卡。" * 6 + "*"
    assert split_text(v2, 12, words=False, syntax="markdown_v2") == ["*打卡。打卡。打卡。*", "*打卡。打卡。打卡。*"]


def test_a_cut_inside_a_line_keeps_urls_numbers_and_composed_characters_whole() -> None:
    """ASCII "?", ":" and "," end a sentence or make a pause only before a space (or a
    character that is not ASCII): a cut went after "page?" in a URL's query, after
    "https:", and into "1,000". A flag, a skin tone or a combining accent stays with
    the character it makes."""
    url = "https://club.example.org/page?id=3,4"
    text = "请看" * 10 + url + "共1,000人"
    for limit in range(len(text) - 12, len(text)):
        parts = split_text(text, limit, words=False)
        assert "".join(parts) == text
        assert not any(p.startswith(("//", "id=", "000", "4")) for p in parts[1:]), parts
    for whole in ("🇨🇳", "👍🏽", "é", "👨\u200d👩\u200d👧"):
        sample = "字" * 9 + whole + "字" * 9
        for limit in range(8, len(sample)):
            parts = split_text(sample, limit, words=False)
            assert "".join(parts) == sample and any(whole in p for p in parts), (limit, parts)


def test_code_is_never_cut_inside_a_line_in_telegrams_markup_either() -> None:
    for syntax, code in (("html", "<pre>" + "代码，" * 30 + "</pre>"), ("markdown_v2", "```\n" + "代码，" * 30 + "\n```")):
        with pytest.raises(TextTooLong, match="cannot be split"):
            split_text(code, 40, words=False, syntax=syntax)
