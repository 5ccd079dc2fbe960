"""Discord: URLs in plain text, the global rate limit, malformed rate-limit headers,
and code blocks across a split."""

from __future__ import annotations

import re
from typing import Any

import pytest
from adapter_cases import message, unescape_backslashes
from platform_fakes import DiscordFake, FakeClock, as_json

from cmtyflow.adapters.base import TransientDeliveryError


def webhook(b: str, f: DiscordFake) -> dict[str, Any]:
    return {"webhook_url": f"{b}/api/webhooks/{f.webhook_id}/{f.webhook_token}"}


def bot(b: str, f: DiscordFake) -> dict[str, Any]:
    return {"bot_token": f.bot_token, "api_base": b + "/api/v10", "channel_id": "55"}


def both(b: str, f: DiscordFake) -> dict[str, Any]:
    return {**webhook(b, f), "bot_token": f.bot_token, "api_base": b + "/api/v10"}


# ------------------------------------------------------------------ URLs in plain text


async def test_plain_text_keeps_the_templates_urls_as_links(adapter_for: Any) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, webhook)
    name = "*Ann* <@123> @everyone [x](https://evil.example)"
    text = (
        f"Welcome {name}.\nJoin at https://club.example.org/join-now?a=1.\n"
        "Rules: <https://club.example.org/rules_v2>, (archive: https://club.example.org/a_b/)"
    )
    await adapter.send(message(text))
    content = fake.requests[0].json["content"]
    assert "https://club.example.org/join-now?a=1." in content
    assert "<https://club.example.org/rules_v2>" in content
    assert "https://club.example.org/a_b/" in content
    # Around the URLs, member data is still escaped: no emphasis, mention or masked link.
    assert r"\*Ann\* \<\@123\> \@everyone \[x\]\(https://evil.example\)\." in content
    assert unescape_backslashes(content)[1] == text


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("see https://a.example/x_y*z*.", "see https://a.example/x_y*z*."),
        ("http://a.example/p?q=1&r=2, then", "http://a.example/p?q=1&r=2, then"),
        ("<https://a.example/*no*embed>", "<https://a.example/*no*embed>"),
        # What follows a URL is escaped: no mention, masked link or spoiler around it.
        ("https://a.example/x<@1>", r"https://a.example/x\<\@1\>"),
        ("||https://a.example||", r"\|\|https://a.example||"),
        ("[a](https://a.example)", r"\[a\]\(https://a.example\)"),
        ("HTTPS://a.example *b*", r"HTTPS\://a\.example \*b\*"),
        ("mailto:x@y.example", r"mailto\:x\@y\.example"),
    ],
)
def test_discord_plain_escaping_around_urls(text: str, sent: str) -> None:
    from cmtyflow.adapters.text import escape_discord_text

    assert escape_discord_text(text) == sent


# ------------------------------------------------------------------ global rate limit


def global_429(retry_after: float, *, in_body: bool = True) -> Any:
    headers = {"Retry-After": str(int(retry_after) + 1), "X-RateLimit-Scope": "global"}
    if not in_body:
        headers["X-RateLimit-Global"] = "true"
    body = {"message": "You are being rate limited.", "retry_after": retry_after}
    if in_body:
        body["global"] = True
    return lambda rec: as_json(body, 429, headers)


async def test_global_429_holds_back_every_channel_of_the_bot(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, bot)
    fake.then(global_429(3.5))
    with pytest.raises(TransientDeliveryError, match="global") as caught:
        await adapter.send(message(key="a"))
    assert caught.value.retry_after == 3.5 and caught.value.rate_limited
    # A direct message: another route (DM channel, then its messages), same bot.
    await adapter.send(message(key="b", member=True, handles={"discord": "42"}))
    assert clock.slept[0] == pytest.approx(3.5)
    assert [r.path for r in fake.requests[1:]] == [
        "/api/v10/users/@me/channels",
        "/api/v10/channels/742/messages",
    ]


async def test_global_429_by_header_holds_back_the_webhook_too(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, both)
    fake.then(global_429(2.0, in_body=False))
    with pytest.raises(TransientDeliveryError, match="global"):
        await adapter.send(message(key="a", member=True, handles={"discord": "42"}))
    await adapter.send(message(key="b"))  # the channel's webhook
    assert clock.slept == [pytest.approx(2.0)]
    assert fake.requests[-1].path.startswith("/api/webhooks/")


async def test_global_429_while_opening_a_dm_channel_holds_back_later_sends(
    adapter_for: Any, clock: FakeClock
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, bot)
    fake.then(global_429(4.0))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(message(key="a", member=True, handles={"discord": "42"}))
    await adapter.send(message(key="b"))
    assert clock.slept == [pytest.approx(4.0)]


async def test_route_429_holds_back_only_its_route(adapter_for: Any, clock: FakeClock) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, bot)
    fake.then(fake.rate_limited(5.0))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(message(key="a"))  # channel 55
    await adapter.send(message(key="b", member=True, handles={"discord": "43"}))
    assert sum(clock.slept) < 1  # only the bot's 50/s spacing, not channel 55's wait
    await adapter.send(message(key="c"))
    assert sum(clock.slept) == pytest.approx(5.0)


# ------------------------------------------------------------------ malformed headers


@pytest.mark.parametrize("reset", ["soon", "1,5", "nan", "inf", "-2", ""])
async def test_malformed_reset_header_on_a_delivered_message_is_ignored(
    adapter_for: Any, clock: FakeClock, reset: str
) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, webhook)
    fake.then(
        lambda rec: as_json(
            {"id": "77"}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": reset}
        )
    )
    receipt = await adapter.send(message(key="a"))
    assert receipt.platform_id == "77"
    await adapter.send(message(key="b"))
    assert len(fake.requests) == 2 and sum(clock.slept) < 1


async def test_malformed_rate_limit_values_on_a_429_fall_back(adapter_for: Any) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, webhook)
    fake.then(
        lambda rec: as_json(
            {"message": "You are being rate limited.", "retry_after": "later"},
            429,
            {"X-RateLimit-Reset-After": "later", "Retry-After": "7"},
        )
    )
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(message())
    assert caught.value.retry_after == 7.0


# ------------------------------------------------------------------ code blocks across parts


async def test_markdown_code_block_over_2000_is_closed_and_reopened(adapter_for: Any) -> None:
    fake = DiscordFake()
    adapter = await adapter_for("discord", fake, webhook)
    code = "\n".join(f"score[{i}] = points * 2  # member {i}" for i in range(120))
    text = f"**Leaderboard script**\n```py\n{code}\n```\nThanks!"
    receipt = await adapter.send(message(text, fmt="markdown"))
    contents = [r.json["content"] for r in fake.requests]
    assert receipt.detail["parts"] == len(contents) >= 3
    assert all(len(c) <= 2000 for c in contents)
    for c in contents:
        assert len(re.findall("```", c)) % 2 == 0
        if "score[" in c:
            assert c.startswith(("```py\n", "**Leaderboard"))
    inner = [c.removeprefix("```py\n").removesuffix("\n```") for c in contents[1:-1]]
    assert "\n".join(inner) in text


@pytest.mark.parametrize(
    ("username", "why"),
    [
        ("Discord Club", "may not contain 'discord'"),
        ("clyde-bot", "may not contain 'clyde'"),
        ("x" * 81, "1 to 80 characters"),
        ("  ", "1 to 80 characters"),
    ],
)
def test_a_webhook_name_discord_refuses_is_a_settings_error(username: str, why: str) -> None:
    """Discord answers every post under such a name with 400 (dead-lettered one by one);
    the channel's settings now refuse it, so validate reports it."""
    from pydantic import ValidationError

    from cmtyflow.adapters.discord import DiscordSettings

    url = "https://discord.com/api/webhooks/1/abc"
    with pytest.raises(ValidationError, match=why):
        DiscordSettings.model_validate({"webhook_url": url, "username": username})
    assert DiscordSettings.model_validate({"webhook_url": url, "username": "读书会 Club"}).username == "读书会 Club"
