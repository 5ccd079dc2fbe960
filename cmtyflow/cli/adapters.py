"""``cmtyflow adapters [--format text|json]`` (SPEC 6): the installed adapters, what
each can send, and its settings; an adapter whose extra is missing is listed with
the ``pip install`` that brings it."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

import click
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from ..adapters import base, registry
from . import EXIT_OK, cli

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_of(annotation: Any, metadata: list[Any]) -> tuple[str, bool]:
    """(a readable type name, whether the value is a secret)."""
    validators = {getattr(m, "func", None) for m in metadata}
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _type_of(inner, [*metadata, *extra])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        found = [_type_of(a, metadata) for a in options]
        return " or ".join(n for n, _ in found), any(s for _, s in found)
    if annotation is SecretStr:
        return ("secret URL" if base._check_secret_url in validators else "secret"), True
    if base._check_url in validators:
        return "URL", False
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(annotation)), False
    if origin is dict:
        return "mapping", False
    if origin is list:
        return "list", False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    return getattr(annotation, "__name__", repr(annotation)), False


def setting_rows(model: type[BaseModel]) -> list[dict[str, Any]]:
    rows = []
    for name, field in model.model_fields.items():
        kind, secret = _type_of(field.annotation, list(field.metadata))
        rows.append(
            {
                "name": name,
                "type": kind,
                "required": field.is_required(),
                "secret": secret,
                "default": None if field.is_required() else _default(field),
                "description": field.description or "",
            }
        )
    return rows


def _default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True)
    return (
        value
        if isinstance(value, str | int | float | bool | dict | list | type(None))
        else repr(value)
    )


def adapter_entry(info: registry.AdapterInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": info.name,
        "source": info.source,
        "available": info.cls is not None,
        "extra": info.extra,
        "extra_installed": info.cls is not None if info.extra else None,
        "install": f"pip install 'cmtyflow[{info.extra}]'"
        if info.extra and info.cls is None
        else None,
        "error": info.error,
        "description": "",
        "capabilities": None,
        "settings": [],
    }
    cls = info.cls
    if cls is None:
        return entry
    entry["description"] = (
        getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]
    )
    caps = getattr(cls, "capabilities", None)
    if caps is not None:
        entry["capabilities"] = {
            "formats": list(caps.formats),
            "max_length": caps.max_length,
            "max_bytes": getattr(caps, "max_bytes", None),
            "split": caps.split,
            "idempotent": caps.idempotent,
            "rate_per_second": caps.rate_per_second,
            "needs_handle": caps.needs_handle,
        }
    settings_model = getattr(cls, "Settings", None)
    if isinstance(settings_model, type) and issubclass(settings_model, BaseModel):
        entry["settings"] = setting_rows(settings_model)
    return entry


def _limits(caps: dict[str, Any]) -> str:
    parts = ["formats " + ", ".join(caps["formats"])]
    if caps["max_length"]:
        parts.append(f"{caps['max_length']} characters")
    if caps["max_bytes"]:
        parts.append(f"{caps['max_bytes']} bytes")
    if caps["rate_per_second"]:
        rate = caps["rate_per_second"]
        per_minute = rate * 60
        whole = rate >= 1 and abs(rate - round(rate)) < 1e-6
        shown = (
            f"{per_minute:g}/min"
            if not whole and abs(per_minute - round(per_minute)) < 1e-6
            else f"{rate:g}/s"
        )
        parts.append(f"at most {shown} per destination")
    if caps["idempotent"]:
        parts.append("deduplicates by key")
    return " · ".join(parts)


def render_text(entries: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for e in entries:
        where = "built-in" if e["source"] == "built-in" else f"from {e['source']}"
        lines.append(f"{e['name']} ({where}){': ' + e['description'] if e['description'] else ''}")
        if not e["available"]:
            lines.append(
                f"  not installed: {e['install']}"
                if e["install"]
                else f"  unavailable: {e['error']}"
            )
            lines.append("")
            continue
        if e["extra"]:
            lines.append(f"  extra [{e['extra']}] installed")
        if e["capabilities"]:
            lines.append("  " + _limits(e["capabilities"]))
        width = max((len(s["name"]) for s in e["settings"]), default=0)
        for s in e["settings"]:
            need = (
                "required"
                if s["required"]
                else f"default {json.dumps(s['default'], ensure_ascii=False)}"
            )
            lines.append(f"  {s['name']:<{width}}  {s['type']}, {need}: {s['description']}")
        lines.append("")
    return "\n".join(lines)


@click.command("adapters")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="output format",
)
def adapters(fmt: str) -> int:
    """List installed adapters and their settings."""
    entries = [adapter_entry(info) for info in registry.all_info()]
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(entries), nl=False)
    return EXIT_OK


cli.add_command(adapters)
