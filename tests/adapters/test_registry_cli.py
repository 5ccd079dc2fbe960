"""Third-party adapters through the ``cmtyflow.adapters`` entry point group, and the
``cmtyflow adapters`` listing."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cmtyflow.adapters import registry
from cmtyflow.adapters.base import OutboundMessage
from cmtyflow.cli.adapters import adapters

PLUGIN = '''
"""A third-party adapter: keeps messages in a list (a stand-in for any service)."""
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from cmtyflow.adapters.base import AdapterSettings, Capabilities, OutboundMessage, Receipt, masked


class PigeonSettings(AdapterSettings):
    loft: str = Field(description="where the pigeons live")
    api_key: SecretStr = Field(description="key for the loft")


class PigeonAdapter:
    name: ClassVar[str] = "pigeon"
    description: ClassVar[str] = "carrier pigeons"
    Settings: ClassVar[type[PigeonSettings]] = PigeonSettings
    capabilities: ClassVar[Capabilities] = Capabilities(formats=("plain",), max_length=80)
    sent: ClassVar[list[str]] = []

    def __init__(self, settings: PigeonSettings, channel: str = "pigeon", **kw: Any) -> None:
        self.settings = settings

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: OutboundMessage) -> Receipt:
        self.sent.append(message.text)
        return Receipt(platform_id=str(len(self.sent)))

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, **masked(self.settings)}
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution ``cmtyflow-pigeon`` (its dist-info on sys.path) with an
    entry point to a real module, plus one whose entry point is broken."""
    (tmp_path / "cmtyflow_pigeon.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    for dist, entry in [
        ("cmtyflow_pigeon", "pigeon = cmtyflow_pigeon:PigeonAdapter"),
        ("cmtyflow_broken", "broken = cmtyflow_no_such_module:Adapter"),
    ]:
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 1.0\n",
            encoding="utf-8",
        )
        (info / "entry_points.txt").write_text(f"[cmtyflow.adapters]\n{entry}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("cmtyflow_pigeon", None)


async def test_entry_point_adapter_is_registered_and_usable(plugin: Path) -> None:
    assert {"pigeon", "broken"} <= set(registry.names())
    cls = registry.get("pigeon")
    assert cls.__name__ == "PigeonAdapter" and registry.info("pigeon").source == "cmtyflow-pigeon"
    adapter = cls(cls.Settings.model_validate({"loft": "roof", "api_key": "k-0009"}), "birds")
    receipt = await adapter.send(OutboundMessage(key="k", channel="birds", text="coo"))
    assert receipt.platform_id == "1" and "k-0009" not in str(adapter.describe())


def test_broken_plugin_is_reported_not_fatal(plugin: Path) -> None:
    found = registry.info("broken")
    assert found.cls is None and "cannot be loaded: ModuleNotFoundError" in (found.error or "")
    with pytest.raises(ImportError, match="adapter 'broken' cannot be loaded"):
        registry.get("broken")


def test_unknown_adapter() -> None:
    with pytest.raises(registry.UnknownAdapterError):
        registry.get("carrier-pigeon")


def listing(*args: str) -> Any:
    result = CliRunner().invoke(adapters, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "json" in args else result.output


def test_json_lists_every_adapter_with_its_settings(plugin: Path) -> None:
    entries = {e["name"]: e for e in listing("--format", "json")}
    assert set(registry.BUILTINS) | {"pigeon", "broken"} == set(entries)
    pigeon = entries["pigeon"]
    assert pigeon["source"] == "cmtyflow-pigeon" and pigeon["available"]
    assert pigeon["settings"] == [
        {
            "name": "loft",
            "type": "string",
            "required": True,
            "secret": False,
            "default": None,
            "description": "where the pigeons live",
        },
        {
            "name": "api_key",
            "type": "secret",
            "required": True,
            "secret": True,
            "default": None,
            "description": "key for the loft",
        },
    ]
    slack = {s["name"]: s for s in entries["slack"]["settings"]}
    assert slack["webhook_url"]["type"] == "secret URL" and slack["webhook_url"]["secret"]
    assert slack["api_base"] == {
        "name": "api_base",
        "type": "URL",
        "required": False,
        "secret": False,
        "default": "https://slack.com/api",
        "description": "Slack Web API base URL",
    }
    assert entries["webhook"]["capabilities"]["idempotent"] is True
    assert (
        entries["broken"]["available"] is False
        and "ModuleNotFoundError" in entries["broken"]["error"]
    )


def test_text_listing(plugin: Path) -> None:
    out = listing()
    assert "pigeon (from cmtyflow-pigeon): carrier pigeons" in out
    assert "  api_key  secret, required: key for the loft" in out
    assert "wecom (built-in): " in out and "2048 bytes · at most 20/min per destination" in out
    assert "telegram (built-in)" in out and "at most 1/s per destination" in out
    assert (
        "broken (from cmtyflow-broken)\n  unavailable: cannot be loaded: ModuleNotFoundError" in out
    )


def test_missing_extra_shows_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.BUILTINS, "sms", ("cmtyflow.adapters._sms_not_installed", "SmsAdapter", "sms")
    )
    entry = next(e for e in listing("--format", "json") if e["name"] == "sms")
    assert entry["available"] is False and entry["extra_installed"] is False
    assert entry["install"] == "pip install 'cmtyflow[sms]'"
    assert "sms (built-in)\n  not installed: pip install 'cmtyflow[sms]'" in listing()
