"""Channels: the adapter each names, its settings, literal secrets (SPEC 1).

Rules:
- ``adapter`` must name an installed adapter (``adapters.registry``).
- Every other key of a channel is one of that adapter's settings, checked against its
  own ``Settings`` model, as the engine will when it opens the channel. A
  ``${env:NAME}`` value is resolved only then, so a setting holding a reference passes
  whatever its type.
- A secret-looking setting with a literal value, or a URL with a credential in it, is
  a warning: secrets belong in the environment.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from .adapters import registry
from .adapters.base import ENV_REF
from .checkbase import CheckContext, listing
from .problems import WARNING, Problem
from .secretscan import literal_secret
from .spec.errors import allowed_keys, did_you_mean, translate_errors


def check_channels(ctx: CheckContext) -> list[Problem]:
    found: list[Problem] = []
    for name, channel in ctx.mapping("channels").items():
        if not isinstance(channel, dict):
            continue
        settings = {k: v for k, v in channel.items() if k != "adapter"}
        found += _secrets(ctx, name, settings)
        adapter = channel.get("adapter")
        if not isinstance(adapter, str):
            continue
        loc = ("channels", name)
        try:
            cls = registry.get(adapter)
        except registry.UnknownAdapterError:
            hint = did_you_mean(adapter, registry.names())
            found.append(
                ctx.at(
                    (*loc, "adapter"),
                    f"unknown adapter '{adapter}'{hint}; installed adapters are {listing(registry.names())}",
                )
            )
            continue
        except ImportError as exc:
            found.append(ctx.at((*loc, "adapter"), str(exc)))
            continue
        found += _settings(ctx, name, adapter, cls.Settings, settings)
    return found


def _has_reference(value: Any) -> bool:
    return isinstance(value, str) and ENV_REF.search(value) is not None


def _settings(
    ctx: CheckContext, name: str, adapter: str, model: type[BaseModel], settings: dict[str, Any]
) -> list[Problem]:
    try:
        model.model_validate(settings)
        return []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    loc = ("channels", name)
    found: list[Problem] = []
    rest = []
    allowed = allowed_keys(model)
    for err in errors:
        where = tuple(err["loc"])
        if err["type"] == "extra_forbidden" and len(where) == 1:
            key = str(where[0])
            hint = did_you_mean(key, allowed)
            found.append(
                ctx.at(
                    (*loc, key),
                    f"unknown setting '{key}' for adapter '{adapter}'{hint}; its settings are {listing(allowed)}",
                    key=True,
                )
            )
        elif err["type"] == "missing" and len(where) == 1:
            found.append(
                ctx.at(
                    loc,
                    f"channel '{name}' needs setting '{where[0]}' (adapter '{adapter}')",
                    key=True,
                )
            )
        elif not _has_reference(err.get("input")):
            rest.append(err)
    for spec_error in translate_errors(rest, model, settings):
        message = spec_error.message
        if message.startswith("'"):
            message = f"setting {message}"
        found.append(ctx.at((*loc, *spec_error.loc), message, key=spec_error.at_key))
    return found


_REFERENCE_LIKE = re.compile(r"\$\{[^}]*\}")


def _secrets(ctx: CheckContext, name: str, settings: dict[str, Any]) -> list[Problem]:
    found = []
    for key, value in settings.items():
        # `${ENV:X}`, `${env:}`, `${X}`: meant as a reference, but none: the text itself
        # would be sent as the setting (an error, not a literal secret's warning).
        odd = [m.group(0) for m in _REFERENCE_LIKE.finditer(value) if not ENV_REF.fullmatch(m.group(0))] if isinstance(value, str) else []
        if odd:
            found.append(ctx.at(
                ("channels", name, key),
                f"channel '{name}' setting '{key}': {odd[0]} is not an environment reference; write ${{env:NAME}} "
                "(lower-case env, a name of letters, digits and _)",
            ))
            continue
        why = literal_secret(str(key), value)
        if why:
            found.append(
                ctx.at(
                    ("channels", name, key),
                    f"channel '{name}' setting '{key}' {why}; write ${{env:NAME}} and set NAME in the environment",
                    WARNING,
                )
            )
    return found
