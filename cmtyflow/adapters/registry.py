"""Adapter registry: built-ins by explicit name -> module, plus third-party adapters
from the ``cmtyflow.adapters`` entry-point group (STYLE: pre-commit's explicit dict,
datasette's entry points)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

# name -> (module, class, pip extra needed or None)
BUILTINS: dict[str, tuple[str, str, str | None]] = {
    "console": ("cmtyflow.adapters.console", "ConsoleAdapter", None),
    "file": ("cmtyflow.adapters.file", "FileAdapter", None),
    "webhook": ("cmtyflow.adapters.webhook", "WebhookAdapter", None),
    "slack": ("cmtyflow.adapters.slack", "SlackAdapter", None),
    "discord": ("cmtyflow.adapters.discord", "DiscordAdapter", None),
    "telegram": ("cmtyflow.adapters.telegram", "TelegramAdapter", None),
    "email": ("cmtyflow.adapters.email", "EmailAdapter", None),
    "wecom": ("cmtyflow.adapters.wecom", "WecomAdapter", None),
    "dingtalk": ("cmtyflow.adapters.dingtalk", "DingtalkAdapter", None),
    "feishu": ("cmtyflow.adapters.feishu", "FeishuAdapter", None),
}

ENTRY_POINT_GROUP = "cmtyflow.adapters"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    source: str  # "built-in" or the distribution that provides it
    cls: Any | None  # the adapter class, None when it cannot be imported
    error: str | None = None
    extra: str | None = None


class UnknownAdapterError(LookupError):
    pass


def _third_party() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return found


def names() -> list[str]:
    return sorted(set(BUILTINS) | set(_third_party()))


def info(name: str) -> AdapterInfo:
    if name in BUILTINS:
        module, cls_name, extra = BUILTINS[name]
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as exc:
            return AdapterInfo(name, "built-in", None, f"needs pip install 'cmtyflow[{extra}]' ({exc})", extra)
        return AdapterInfo(name, "built-in", cls, None, extra)
    eps = _third_party()
    if name in eps:
        ep = eps[name]
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
        try:
            return AdapterInfo(name, dist, ep.load())
        except Exception as exc:  # a broken plugin must not take validate down with it
            return AdapterInfo(name, dist, None, f"cannot be loaded: {type(exc).__name__}: {exc}")
    raise UnknownAdapterError(name)


def get(name: str) -> Any:
    """The adapter class for ``name``; ``UnknownAdapterError`` or ``ImportError``."""
    found = info(name)
    if found.cls is None:
        raise ImportError(f"adapter '{name}' {found.error}")
    return found.cls


def all_info() -> list[AdapterInfo]:
    return [info(n) for n in names()]
