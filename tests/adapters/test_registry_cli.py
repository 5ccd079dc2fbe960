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


PIGEON_PLAYBOOK = """\
cmtyflow: 1
name: birds
timezone: UTC
channels:
  coop: {adapter: pigeon, loft: roof, api_key: "${env:PIGEON_KEY}"%s}
triggers:
  - {id: hello, event: member.joined, flow: greet}
flows:
  greet:
    - {id: coo, send: {channel: coop, text: "coo {{ member.name }}"}}
"""


def _pigeon_folder(tmp_path: Path, extra: str = "") -> Path:
    folder = tmp_path / "book"
    folder.mkdir(parents=True)
    (folder / "birds.yaml").write_text(PIGEON_PLAYBOOK % extra, encoding="utf-8")
    (folder / "members.csv").write_text("id,name\nu1,阿明\n", encoding="utf-8")
    (folder / "events.jsonl").write_text(
        '{"id": "j1", "type": "member.joined", "at": "2026-12-01T10:00:00+00:00", "member": "u1"}\n', encoding="utf-8"
    )
    return folder


def test_plugin_settings_are_checked_by_validate(plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cmtyflow.cli import main

    good = _pigeon_folder(plugin)
    assert main(["validate", str(good / "birds.yaml")]) == 0
    bad = _pigeon_folder(plugin / "bad", ", wings: 2")
    capsys.readouterr()
    assert main(["validate", str(bad / "birds.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"{bad / 'birds.yaml'}:5:" in out and "wings" in out


def test_plugin_is_used_by_a_dry_run_and_a_run(
    plugin: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmtyflow.cli import main

    folder = _pigeon_folder(plugin)
    args = [str(folder / "birds.yaml"), "--roster", str(folder / "members.csv")]
    assert main(["dry-run", *args, "--events", str(folder / "events.jsonl"), "--start", "2026-12-01", "--days", "1", "--format", "jsonl"]) == 0
    (record, _summary) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (record["adapter"], record["text"], record["member"]) == ("pigeon", "coo 阿明", "u1")

    state = str(plugin / "state.db")
    assert main(["events", "import", str(folder / "events.jsonl"), "--state", state]) == 0
    # A ${env:NAME} that is not set is named when the run opens the channel; nothing runs.
    monkeypatch.delenv("PIGEON_KEY", raising=False)
    assert main(["run", *args, "--state", state, "--once", "--now", "2026-12-01T10:00:00+00:00"]) == 1
    err = capsys.readouterr().err
    assert "channel 'coop'" in err and "environment variable PIGEON_KEY is not set" in err
    pigeon = registry.get("pigeon")
    assert pigeon.sent == []
    # Set, it is used and never printed.
    monkeypatch.setenv("PIGEON_KEY", "k-secret-4471")
    assert main(["run", *args, "--state", state, "--once", "--now", "2026-12-01T10:00:00+00:00"]) == 0
    captured = capsys.readouterr()
    assert pigeon.sent == ["coo 阿明"]
    assert "k-secret-4471" not in captured.out + captured.err
    assert "sent birds/coo -> u1 via coop (pigeon)" in captured.err
