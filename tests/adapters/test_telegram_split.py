"""Telegram HTML and MarkdownV2 past 4096 characters: every part is well-formed."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from adapter_cases import message
from platform_fakes import TelegramFake, telegram_parse

from cmtyflow.adapters.text import TextTooLong, split_text


class _Balance(HTMLParser):
    """The elements of an HTML fragment, which must be closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.starts: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.open.append(tag)
        self.starts.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def balanced_html(part: str) -> _Balance:
    assert not re.search(r"&(?!(lt|gt|amp|quot|#\d+);)", part), "an entity was cut"
    checker = _Balance()
    checker.feed(part)
    checker.close()
    assert checker.open == [], f"left open: {checker.open}"
    return checker


def shown_html(part: str) -> str:
    return "".join(balanced_html(part).text)


async def telegram(adapter_for: Any) -> tuple[Any, TelegramFake]:
    fake = TelegramFake()
    adapter = await adapter_for(
        "telegram", fake, lambda b, f: {"token": f.token, "api_base": b, "chat_id": "98765"}
    )
    return adapter, fake


CODE = "\n".join(f"total = price[{i}] &amp; tax  # &lt;line {i}&gt;" for i in range(200))
PRE = f'<pre><code class="language-python">{CODE}</code></pre>'


async def test_html_pre_longer_than_the_limit_is_closed_and_reopened(adapter_for: Any) -> None:
    adapter, fake = await telegram(adapter_for)
    text = f"<b>Weekly digest</b>\nThe script:\n{PRE}\n<i>See you</i> next week"
    assert len(text) > 4096 * 2
    receipt = await adapter.send(message(text, fmt="html"))
    sent = [r.json["text"] for r in fake.requests]
    assert receipt.detail["parts"] == len(sent) >= 3
    assert all(r.json["parse_mode"] == "HTML" for r in fake.requests)
    assert all(len(p) <= 4096 for p in sent)
    for part in sent:
        telegram_parse(part, "HTML")  # what the fake Telegram accepts
        checker = balanced_html(part)
        if "price" in part:  # a piece of the code block: opened with the same tags
            assert checker.starts[:2] == ["<pre>", '<code class="language-python">']
    # Nothing lost or doubled: the parts show the text, cut between lines.
    assert "\n".join(shown_html(p) for p in sent) == shown_html(text)


async def test_html_prefers_a_line_break_outside_any_element(adapter_for: Any) -> None:
    adapter, fake = await telegram(adapter_for)
    quote = (
        "<blockquote>"
        + "\n".join(f"line {i} <b>of</b> the quote" for i in range(60))
        + "</blockquote>"
    )
    intro = "\n".join(f"intro line {i}" for i in range(200))
    text = f"{intro}\n{quote}\nbye"
    assert len(intro) < 4096 < len(intro) + len(quote)
    await adapter.send(message(text, fmt="html"))
    sent = [r.json["text"] for r in fake.requests]
    assert sent == [intro, f"{quote}\nbye"]


def test_html_never_cuts_inside_a_tag_and_reopens_its_attributes() -> None:
    link = '<a\nhref="https://club.example.org/join?a=1&amp;b=2">'
    text = "x\n" + link + "one\ntwo\nthree</a>"
    parts = split_text(text, 63, words=False, syntax="html")
    assert parts[0] == "x"  # the line break inside the tag is no place for a cut
    assert parts[1:] == [f"{link}one\ntwo</a>", f"{link}three</a>"]
    for part in parts:
        balanced_html(part)


def test_html_nested_elements_are_closed_innermost_first() -> None:
    text = "<blockquote><b>one\ntwo</b>\n<i>three</i></blockquote>"
    assert split_text(text, 38, words=False, syntax="html") == [
        "<blockquote><b>one</b></blockquote>",
        "<blockquote><b>two</b></blockquote>",
        "<blockquote><i>three</i></blockquote>",
    ]


def test_html_line_too_long_with_its_reopened_tags_is_refused() -> None:
    text = '<a href="https://club.example.org/a-long-path">one\ntwo</a>'
    with pytest.raises(TextTooLong, match="a line of 54 .limit 50. cannot be split"):
        split_text(text, 50, words=False, syntax="html")


def _unescaped(part: str, mark: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*" + re.escape(mark), part))


def test_markdown_v2_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i}\\)  \\# \\`x\\`" for i in range(40))
    text = f"*Script* for today\\.\n```python\n{code}\n```\nDone\\!"
    parts = split_text(text, 300, words=False, syntax="markdown_v2")
    assert len(parts) > 2 and all(len(p) <= 300 for p in parts)
    for part in parts:
        assert _unescaped(part, "```") % 2 == 0
        if "print" in part:
            assert part.startswith("```python\n") or part.startswith("*Script*")
            assert part.endswith("\n```") or part.endswith("Done\\!")
    inner = [p.removeprefix("```python\n").removesuffix("\n```") for p in parts[1:-1]]
    assert "\n".join(inner) in text


def test_markdown_v2_entities_and_escapes_across_a_cut() -> None:
    text = "*bold\nstill* a\\.b\n__under a\nlong line__\n>quote one\n>quote two"
    assert split_text(text, 16, words=False, syntax="markdown_v2") == [
        "*bold*",
        "*still* a\\.b",
        "__under a__",
        "__long line__",
        ">quote one",
        ">quote two",
    ]


def test_markdown_v2_expandable_quote_and_link_are_reopened() -> None:
    text = "**>one line\n>two line\n>three||\n[label *b*\nmore](https://a\\)b) end"
    parts = split_text(text, 25, words=False, syntax="markdown_v2")
    assert parts == [
        "**>one line\n>two line||",
        "**>three||",
        "[label *b*](https://a\\)b)",
        "[more](https://a\\)b) end",
    ]


def test_markdown_v2_never_cuts_an_escaped_line_break() -> None:
    text = "a" * 10 + "\\\n" + "b" * 10 + "\n" + "c" * 5
    assert split_text(text, 24, words=False, syntax="markdown_v2") == [
        "a" * 10 + "\\\n" + "b" * 10,
        "c" * 5,
    ]
