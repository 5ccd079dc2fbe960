"""Channels with a single destination: a group robot (``wecom``, ``dingtalk``,
``feishu``: ``Capabilities.group_only``), and ``slack`` or ``discord`` with no bot token
(their incoming webhook posts in its one channel). A send to a member through one is
posted there for everyone; a send to a role or a list of ids would post the same text
once per person (the engine posts it once; ``validate`` warns of the first).

Read from the adapter's name and the channel's settings as written, so that ``validate``
and the engine decide alike without opening the channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import registry

# Adapters that reach people one by one only with a bot token, else post through a
# webhook in a single channel.
WEBHOOK_OR_BOT = ("slack", "discord")


def single_destination(adapter: str, settings: Mapping[str, Any]) -> bool:
    """Whether a channel of ``adapter`` with ``settings`` has one destination (rules
    above); False for an adapter that cannot be loaded (reported elsewhere)."""
    if adapter in WEBHOOK_OR_BOT:
        return settings.get("bot_token") in (None, "")
    try:
        return bool(registry.get(adapter).capabilities.group_only)
    except (LookupError, ImportError):
        return False


def describe(adapter: str) -> str:
    """How a warning names such a channel."""
    if adapter in WEBHOOK_OR_BOT:
        return f"a {adapter} webhook without a bot token, whose one destination is its channel"
    return f"a {adapter} robot, whose one destination is its group"
