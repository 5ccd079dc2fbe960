"""Text for platforms: picking a format, escaping member data, splitting long messages.

Rules:
- ``pick`` chooses what to send: the first of the adapter's formats (in preference
  order) that the message holds, as its own text or as an alternative. A message in
  no supported format goes as plain text (HTML reduced to its text first).
- Escapers make a value inert in one platform's markup: nothing in it can become a
  tag, a link, a mention or emphasis. Platforms that disable parsing for plain text
  (Slack ``mrkdwn: false``, WeCom/DingTalk/Feishu ``text`` messages) need less.
- ``split_text`` cuts on paragraph, then line, then word boundaries, and only cuts
  inside a word when a single word is longer than the limit. Marked-up text is cut
  so that every part is well-formed on its own (``markup_split``, its rules).
- Discord plain text is escaped except inside URLs (``http(s)://...`` as Discord
  finds them, and ``<https://...>``), which Discord does not unescape.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser

from .base import OutboundMessage
from .markup_split import Markup, TextTooLong, fit_prefix, split_markup

# ---------------------------------------------------------------- picking a format


def pick(message: OutboundMessage, formats: tuple[str, ...]) -> tuple[str, str]:
    if not message.alternatives and message.format in formats:  # the usual case
        return message.format, message.text
    for fmt in formats:
        if message.format == fmt:
            return fmt, message.text
        if fmt in message.alternatives:
            return fmt, message.alternatives[fmt]
    if message.format == "html":
        return "plain", html_to_text(message.text)
    return "plain", message.text


# A link target worth keeping in text: an absolute URL (not a script or inline data).
_LINK_TARGET = re.compile(r"(?!(?:javascript|vbscript|data):)[a-z][a-z0-9+.-]*:\S+", re.IGNORECASE)


class _TextOnly(HTMLParser):
    """The text of an HTML document; a link's target follows its text, as ``text
    <https://...>``, unless the text is the target already (a reader of the text alone
    can still confirm or unsubscribe)."""

    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._links: list[tuple[str | None, int]] = []  # open <a>: its target, where its text starts

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.out.append("\n")
        elif tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            self._links.append((href if _LINK_TARGET.fullmatch(href) else None, len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("p", "div", "tr", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            if href is not None and not self._skip:
                shown = "".join(self.out[start:]).strip()
                if shown not in (href, href.removeprefix("mailto:"), href.removeprefix("tel:")):
                    self.out.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def plain_to_html(text: str) -> str:
    """Plain text as an HTML fragment: autoescaped, line breaks kept."""
    paragraphs = re.split(r"\n{2,}", text.strip("\n"))
    return "\n".join(
        "<p>" + escape_html(p).replace("\n", "<br>\n") + "</p>" for p in paragraphs if p
    )


# ---------------------------------------------------------------- escaping


def escape_html(value: str) -> str:
    return html.escape(value, quote=True)


# Telegram MarkdownV2: these must be escaped anywhere outside code entities; any
# character 1-126 may be escaped with a preceding backslash.
_MDV2 = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")


def escape_markdown_v2(value: str) -> str:
    return _MDV2.sub(r"\\\1", value)


def escape_slack(value: str) -> str:
    """Slack's three control characters; with them escaped no ``<!everyone>``, ``<@U1>``
    or ``<url|label>`` can be formed."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ZWSP = "\u200b"
_SLACK_EMPHASIS = re.compile(r"([*_~`])")


def escape_slack_mrkdwn(value: str) -> str:
    # Slack documents no escape for emphasis characters; a zero-width space after each
    # keeps a pair from enclosing a word, and is invisible.
    return _SLACK_EMPHASIS.sub(r"\1" + _ZWSP, escape_slack(value))


# Discord renders "\<punctuation>" as the character itself. Mentions are also stopped
# by allowed_mentions; escaping "@" and "<" keeps them from rendering as pills too.
_DISCORD = re.compile(r"([\\*_~`|>#\-\[\]()<@.:])")


def escape_discord(value: str) -> str:
    return _DISCORD.sub(r"\\\1", value)


# Discord's autolink (simple-markdown's ``url`` rule): a URL runs to whitespace or "<",
# then gives back the . , : ; " ' ) ] it ends with. The . , : ; " ' it gives back are
# kept as they are (a backslash there would become part of the link: "?a=1." must not
# end in "\."); a ")", "]" or "<" there is escaped all the same, as nothing may form
# markup or a mention around a URL. ``<https://...>`` is a link without an embed.
_DISCORD_URL = re.compile(r"<https?://[^\s<>]+>|https?://[^\s<]+[^<.,:;\"')\]\s][.,:;\"']*")


def escape_discord_text(text: str) -> str:
    """Plain ``text`` for Discord: ``escape_discord`` everywhere but in URLs.

    Discord does not unescape inside a link (``https\\://a\\.b`` is a broken link), so
    the URLs Discord will find are left as they are; everything around them is escaped,
    so no emphasis, mention, masked link or code can be formed with a URL either.
    """
    out: list[str] = []
    at = 0
    for found in _DISCORD_URL.finditer(text):
        out.append(escape_discord(text[at : found.start()]))
        out.append(found.group(0))
        at = found.end()
    out.append(escape_discord(text[at:]))
    return "".join(out)


# CommonMark: any ASCII punctuation may be backslash-escaped; these are the ones that
# can start markup. "<" and "&" become entities so no raw HTML or entity survives.
_COMMONMARK = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~])")


def escape_markdown(value: str) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;")
    return _COMMONMARK.sub(r"\\\1", value)


def defuse_feishu_at(value: str) -> str:
    """Feishu text messages turn ``<at user_id="all">`` into a mention of everyone."""
    return re.sub(r"<(\s*)(at\b)", "<" + _ZWSP + r"\1\2", value, flags=re.I)


def escape(value: str, fmt: str) -> str:
    """Generic escaper for adapters without their own ``escape``."""
    if fmt == "html":
        return escape_html(value)
    if fmt == "markdown":
        return escape_markdown(value)
    return value


# ---------------------------------------------------------------- splitting


def utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


def split_text(
    text: str,
    limit: int,
    *,
    measure: Callable[[str], int] = len,
    words: bool = True,
    syntax: Markup = "markdown",
) -> list[str]:
    """Cut ``text`` into parts that each measure at most ``limit``.

    ``words=False`` (marked-up text in ``syntax``) cuts on line boundaries, a line
    longer than ``limit`` inside it (``_inline_cut``), and each part is well-formed
    on its own.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if not words:
        return [p for p in split_markup(text, limit, measure, syntax) if p] or [""]
    parts: list[str] = []
    rest = text
    while measure(rest) > limit:
        n = fit_prefix(rest, limit, measure)
        window = rest[: n + 1]  # a boundary right after the fitting prefix still counts
        cut = -1
        seps = ("\n\n", "\n", " ")
        for sep in seps:
            at = window.rfind(sep)
            if at > 0 and (at >= n // 2 or sep == seps[-1]):
                cut = at
                break
        if cut > 0:
            parts.append(rest[:cut].rstrip(" \n"))
            rest = rest[cut:].lstrip(" \n")
            continue
        parts.append(rest[:n])
        rest = rest[n:]
    if rest or not parts:
        parts.append(rest)
    return [p for p in parts if p] or [""]


def fit_parts(
    text: str,
    *,
    max_length: int | None,
    max_bytes: int | None = None,
    split: bool = True,
    markup: bool | Markup = False,
    platform: str,
) -> list[str]:
    """Parts within the platform's limits, or ``TextTooLong`` when it refuses splitting.

    ``markup``: False for plain text; the syntax of marked-up text (True: ``markdown``).
    """
    limits: list[tuple[int, Callable[[str], int], str]] = []
    if max_length is not None:
        limits.append((max_length, len, "characters"))
    if max_bytes is not None:
        limits.append((max_bytes, utf8_len, "bytes"))
    parts = [text]
    for limit, measure, unit in limits:
        if all(measure(p) <= limit for p in parts):
            continue
        if not split:
            raise TextTooLong(
                f"{platform}: message is {measure(text)} {unit}, over the {limit} allowed"
            )
        parts = [
            q
            for p in parts
            for q in split_text(
                p,
                limit,
                measure=measure,
                words=not markup,
                syntax="markdown" if markup is True or not markup else markup,
            )
        ]
    return parts


def fit_escaped(
    text: str,
    escaper: Callable[[str], str],
    *,
    max_length: int | None,
    max_bytes: int | None = None,
    platform: str,
) -> list[str]:
    """Plain ``text`` split so that each part is within the limits once escaped.

    The raw text is cut (never an escape sequence or an entity); a part whose escaped
    form is too long is cut again with a proportionally smaller limit.
    """

    def over(part: str) -> float:
        ratios = []
        if max_length is not None:
            ratios.append(len(part) / max_length)
        if max_bytes is not None:
            ratios.append(utf8_len(part) / max_bytes)
        return max(ratios, default=0.0)

    out: list[str] = []
    pending = fit_parts(text, max_length=max_length, max_bytes=max_bytes, platform=platform)
    while pending:
        raw = pending.pop(0)
        escaped = escaper(raw)
        ratio = over(escaped)
        if ratio <= 1.0 or len(raw) <= 1:
            out.append(escaped)
            continue
        smaller = max(1, int(len(raw) / ratio) - 1)
        pending[:0] = split_text(raw, smaller)
    return out
