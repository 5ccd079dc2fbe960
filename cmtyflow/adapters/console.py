"""``console``: prints each message to standard output. The default for trying things."""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Literal, TextIO

from pydantic import Field

from .base import AdapterSettings, Capabilities, OutboundMessage, Receipt, masked


class ConsoleSettings(AdapterSettings):
    stream: Literal["stdout", "stderr"] = Field("stdout", description="where to print")
    prefix: str = Field("", description="text printed before each message")


class ConsoleAdapter:
    name: ClassVar[str] = "console"
    description: ClassVar[str] = "print messages to the terminal"
    Settings: ClassVar[type[ConsoleSettings]] = ConsoleSettings
    capabilities: ClassVar[Capabilities] = Capabilities(formats=("plain", "markdown"))

    def __init__(self, settings: ConsoleSettings, channel: str = "console", out: TextIO | None = None) -> None:
        self.settings = settings
        self.channel = channel
        self._out = out

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, message: OutboundMessage) -> Receipt:
        out = self._out or (sys.stdout if self.settings.stream == "stdout" else sys.stderr)
        who = message.recipient.member_id if message.recipient else f"#{message.channel}"
        out.write(f"{self.settings.prefix}[{message.channel} -> {who}] {message.text}\n")
        out.flush()
        return Receipt(platform_id=message.key)

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, **masked(self.settings)}
