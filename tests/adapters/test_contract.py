"""Every built-in adapter describes itself the same way (STYLE: apprise's self-describing
adapters; SPEC 1: settings checked with ``${env:NAME}`` unresolved, then resolved)."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from cmtyflow.adapters import registry
from cmtyflow.adapters.base import FORMATS, AdapterSettings, escape_value, resolve_env

# Smallest playbook settings for each adapter, secrets as ${env:NAME} references.
MINIMAL: dict[str, dict[str, Any]] = {
    "console": {},
    "file": {"path": "out.jsonl"},
    "webhook": {"url": "${env:HOOK_URL}", "secret": "${env:HOOK_SECRET}"},
    "slack": {"webhook_url": "${env:SLACK_HOOK}", "bot_token": "${env:SLACK_BOT}"},
    "discord": {"webhook_url": "${env:DISCORD_HOOK}", "bot_token": "${env:DISCORD_BOT}"},
    "telegram": {"token": "${env:TG_TOKEN}"},
    "email": {
        "host": "smtp.example.org",
        "from_address": "club@example.org",
        "username": "club",
        "password": "${env:SMTP_PASSWORD}",
    },
    "wecom": {"webhook_url": "${env:WECOM_HOOK}"},
    "dingtalk": {"webhook_url": "${env:DING_HOOK}", "secret": "${env:DING_SECRET}"},
    "feishu": {"webhook_url": "${env:FEISHU_HOOK}", "secret": "${env:FEISHU_SECRET}"},
}
ENV = {
    "HOOK_URL": "https://hooks.example.org/in",
    "HOOK_SECRET": "s3cr3t-hook",
    "SLACK_HOOK": "https://hooks.slack.com/services/T1/B1/s3cr3t-slack",
    "SLACK_BOT": "xoxb-s3cr3t-bot",
    "DISCORD_HOOK": "https://discord.com/api/webhooks/1/s3cr3t-discord",
    "DISCORD_BOT": "s3cr3t.discord.bot",
    "TG_TOKEN": "1:s3cr3t-telegram",
    "SMTP_PASSWORD": "s3cr3t-smtp",
    "WECOM_HOOK": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=s3cr3t-wecom",
    "DING_HOOK": "https://oapi.dingtalk.com/robot/send?access_token=s3cr3t-ding",
    "DING_SECRET": "SECs3cr3t",
    "FEISHU_HOOK": "https://open.feishu.cn/open-apis/bot/v2/hook/s3cr3t-feishu",
    "FEISHU_SECRET": "s3cr3t-fs",
}
# URL settings: each must take a ${env:NAME} reference and refuse a non-URL.
URL_FIELDS = {
    "webhook": ["url"],
    "slack": ["webhook_url", "api_base"],
    "discord": ["webhook_url", "api_base"],
    "telegram": ["api_base"],
    "wecom": ["webhook_url"],
    "dingtalk": ["webhook_url"],
    "feishu": ["webhook_url"],
}
SECRET_FIELDS = {
    "webhook": {"secret"},
    "slack": {"webhook_url", "bot_token"},
    "discord": {"webhook_url", "bot_token"},
    "telegram": {"token"},
    "email": {"password"},
    "wecom": {"webhook_url"},
    "dingtalk": {"webhook_url", "secret"},
    "feishu": {"webhook_url", "secret"},
}
NETWORK = sorted(set(MINIMAL) - {"console", "file"})


def test_every_builtin_is_covered_here() -> None:
    assert set(registry.BUILTINS) == set(MINIMAL)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_adapter_describes_itself(name: str) -> None:
    cls = registry.get(name)
    assert cls.name == name and cls.description
    assert issubclass(cls.Settings, AdapterSettings)
    caps = cls.capabilities
    assert caps.formats and set(caps.formats) <= set(FORMATS) and "plain" in caps.formats
    for field_name, field in cls.Settings.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_settings_forbid_unknown_keys(name: str) -> None:
    cls = registry.get(name)
    with pytest.raises(ValidationError) as caught:
        cls.Settings.model_validate({**MINIMAL[name], "webhok_url": "x"})
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("name", NETWORK)
def test_secrets_are_secret_and_validate_before_and_after_resolution(name: str) -> None:
    cls = registry.get(name)
    hints = typing.get_type_hints(cls.Settings, include_extras=True)
    secret = {f for f, hint in hints.items() if "SecretStr" in repr(hint)}
    assert secret == SECRET_FIELDS[name]
    unresolved = cls.Settings.model_validate(MINIMAL[name])  # what `validate` sees
    resolved = cls.Settings.model_validate(resolve_env("chan", MINIMAL[name], ENV))
    for settings in (unresolved, resolved):
        for field_name in secret:
            assert isinstance(getattr(settings, field_name), SecretStr)
    adapter = cls(resolved, "chan")
    shown = " ".join([repr(adapter), str(adapter.describe()), repr(resolved), str(resolved)])
    for value in ENV.values():
        if "s3cr3t" in value:
            assert "s3cr3t" not in shown, shown


@pytest.mark.parametrize("name", sorted(URL_FIELDS))
def test_url_settings_take_env_references_and_refuse_non_urls(name: str) -> None:
    cls = registry.get(name)
    for field_name in URL_FIELDS[name]:
        ok = cls.Settings.model_validate({**MINIMAL[name], field_name: "${env:SOME_URL}"})
        assert ok is not None
        bad_value = "ftp://s3cr3t-in-url/x" if field_name != "api_base" else "not a url"
        with pytest.raises(ValidationError) as caught:
            cls.Settings.model_validate({**MINIMAL[name], field_name: bad_value})
        error = caught.value.errors()[0]
        assert error["loc"] == (field_name,)
        assert "expected an http(s) URL or a ${env:NAME} reference" in error["msg"]
        if field_name in SECRET_FIELDS.get(name, ()):
            assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("name", NETWORK)
def test_constructor_follows_the_contract(name: str) -> None:
    cls = registry.get(name)
    params = inspect.signature(cls.__init__).parameters
    assert list(params)[:3] == ["self", "settings", "channel"]
    assert params["channel"].default == name
    assert (
        params["session"].kind is inspect.Parameter.KEYWORD_ONLY
        and params["session"].default is None
    )
    assert params["timeout"].default == 10.0


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_escape_value_uses_the_adapters_own_escaper(name: str) -> None:
    cls = registry.get(name)
    for fmt in cls.capabilities.formats:
        escaped = escape_value(cls, fmt, "<b>x</b>")
        if fmt == "html":
            assert "<b>" not in escaped
    assert escape_value(object(), "html", "<b>") == "&lt;b&gt;"
