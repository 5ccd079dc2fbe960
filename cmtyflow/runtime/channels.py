"""Opening the channels of loaded playbooks as adapters, for the runner (SPEC 1, 5.2).

Rules:
- ``${env:NAME}`` references are resolved here, when a channel is opened, and
  nowhere else; an unset variable refuses the start, naming the channel, the
  playbook file and the variable, never a value.
- Resolved settings are checked again with the adapter's own Settings model; its
  errors name the setting, never the value (AdapterSettings hides input).
- Channels with the same adapter and the same settings share one adapter instance
  (and so one rate limit), whichever playbooks name them; HTTP adapters share one
  aiohttp session.
- ``adapter_for(playbook, channel)`` is how the dispatcher finds where a message goes.
- Runs in flight on an older version of a playbook (live edits) send through the
  channels of the current one; a channel the current version no longer has (renamed,
  removed, or the playbook no longer loaded) is opened from the older version's
  settings (``add_older``), so their messages still go. One that cannot be opened
  (its environment variable is gone) is left out: its messages are dead-lettered
  with "not configured", and the runner logs which.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..adapters import registry
from ..adapters._http import HttpAdapter
from ..adapters.base import Capabilities, MissingSecretError, resolve_env
from ..engine.program import Program
from ..errors import UserError


@dataclass
class OpenChannel:
    name: str
    adapter_name: str
    adapter: Any
    capabilities: Capabilities


class ChannelSet:
    def __init__(self, programs: list[Program], environ: Mapping[str, str], *, overrides: Mapping[str, Any] | None = None) -> None:
        """``overrides``: adapter instances by channel name, used instead of opening
        them from settings (tests and benchmarks that bring their own)."""
        self._by_config: dict[str, OpenChannel] = {}
        self._by_channel: dict[tuple[str, str], OpenChannel] = {}
        self._session: Any = None
        self._environ = environ
        self._overrides = overrides
        problems = self._add(programs)
        if problems:
            raise UserError("cannot open the channels; nothing was run\n" + "\n".join(sorted(set(problems))))

    def _add(self, programs: list[Program], *, keep: bool = False) -> list[str]:
        """Open the channels of ``programs`` (an override by name instead, when given);
        with ``keep``, only those no program added before has. Returns why each that
        could not be opened was not."""
        problems: list[str] = []
        for prog in programs:
            for name, channel in prog.playbook.channels.items():
                if keep and (prog.name, name) in self._by_channel:
                    continue
                if self._overrides and name in self._overrides:
                    adapter = self._overrides[name]
                    opened = self._by_config.setdefault(
                        f"override:{name}", OpenChannel(name, channel.adapter, adapter, type(adapter).capabilities)
                    )
                else:
                    try:
                        opened = self._open(prog, name, channel.adapter, channel.settings(), self._environ)
                    except _ChannelProblem as exc:
                        problems.append(str(exc))
                        continue
                self._by_channel[(prog.name, name)] = opened
        return problems

    def _open(self, prog: Program, name: str, adapter_name: str, raw: dict[str, Any], environ: Mapping[str, str]) -> OpenChannel:
        where = f"playbook '{prog.name}', channel '{name}'"
        try:
            cls = registry.get(adapter_name)
        except (LookupError, ImportError) as exc:
            raise _ChannelProblem(f"{where}: adapter '{adapter_name}' is not available ({exc})") from None
        try:
            resolved = resolve_env(name, raw, environ)
        except MissingSecretError as exc:
            raise _ChannelProblem(f"{where}: environment variable {exc.name} is not set") from None
        key = json.dumps([adapter_name, resolved], sort_keys=True, default=str)
        if key in self._by_config:
            return self._by_config[key]
        try:
            settings = cls.Settings.model_validate(resolved)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise _ChannelProblem(f"{where}: {details}") from None
        adapter = cls(settings, name)  # HTTP adapters get the shared session in open()
        opened = OpenChannel(name, adapter_name, adapter, cls.capabilities)
        self._by_config[key] = opened
        return opened

    def add_older(self, programs: list[Program]) -> list[str]:
        """The channels of older versions (``programs``) that no current one has, opened
        from their own settings; returns why each one that could not be opened was not."""
        return [f"{problem} (an older version's channel, for its runs in flight)" for problem in self._add(programs, keep=True)]

    def adapter_for(self, playbook: str, channel: str) -> OpenChannel | None:
        return self._by_channel.get((playbook, channel))

    def all(self) -> list[OpenChannel]:
        return list(self._by_config.values())

    async def open(self) -> None:
        import aiohttp

        for opened in self._by_config.values():
            adapter = opened.adapter
            if isinstance(adapter, HttpAdapter) and adapter._session is None:  # noqa: SLF001
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0)
                    )
                adapter._session = self._session  # noqa: SLF001 - HttpAdapter's shared-session slot
            try:
                await adapter.open()
            except OSError as exc:  # a file adapter's path that cannot be written, say
                where = f" {exc.filename}" if exc.filename else ""
                raise UserError(
                    f"channel '{opened.name}' ({opened.adapter_name}): cannot open{where}: {exc.strerror or exc}"
                ) from None

    async def close(self) -> None:
        for opened in self._by_config.values():
            # Closing must not hide what stopped the runner.
            with contextlib.suppress(Exception):
                await opened.adapter.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ChannelProblem(Exception):
    pass
