"""``file``: appends each message as one JSON line to a file (audits, tests, pipes).

A line: ``{"key", "written_at", "playbook", "channel", "member", "format", "text",
"urgent"}``; ``written_at`` is when the line was written (UTC, to the second, from the
machine's clock also under ``run --now``), ``playbook`` the one that sent it."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field

from .base import AdapterSettings, Capabilities, OutboundMessage, Receipt, masked


class FileSettings(AdapterSettings):
    path: str = Field(description="file to append JSON lines to; created if missing")
    fsync: bool = Field(True, description="flush each line to disk before acknowledging")


class FileAdapter:
    name: ClassVar[str] = "file"
    description: ClassVar[str] = "append messages as JSON lines to a file"
    Settings: ClassVar[type[FileSettings]] = FileSettings
    # Lines carry the idempotency key, so a reader can deduplicate an in-doubt resend.
    capabilities: ClassVar[Capabilities] = Capabilities(formats=("plain", "markdown", "html"), idempotent=True)

    def __init__(self, settings: FileSettings, channel: str = "file", *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.channel = channel
        self._clock = clock
        self._fh: Any = None

    async def open(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.settings.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except FileExistsError:  # a file where the folder should be ("File exists" said nothing)
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", folder) from None
        self._fh = open(self.settings.path, "a", encoding="utf-8")  # noqa: SIM115 - held open

    async def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def send(self, message: OutboundMessage) -> Receipt:
        if self._fh is None:
            await self.open()
        line = {
            "key": message.key,
            "written_at": datetime.fromtimestamp(int(self._clock()), UTC).isoformat(),
            "playbook": message.playbook,
            "channel": message.channel,
            "member": message.recipient.member_id if message.recipient else None,
            "format": message.format,
            "text": message.text,
            "urgent": message.urgent,
        }
        self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self.settings.fsync:
            os.fsync(self._fh.fileno())
        return Receipt(platform_id=message.key)

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, **masked(self.settings)}
