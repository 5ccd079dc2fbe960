"""Literal secrets in a playbook (SPEC 1: ``${env:NAME}`` is the only way to put a
secret in a playbook; ``validate`` warns about literal tokens and webhook URLs with
credentials in them).

Rules:
- A channel setting whose name suggests a secret (token, secret, password, api key,
  key, webhook, credentials) must be a ``${env:NAME}`` reference, not literal text.
- Any URL with ``user:pass@``, with a credential query parameter (``key=``, ``token=``,
  ``access_token=``, ``secret=``...), or a well-known webhook URL whose path is the
  credential (Slack, Discord, Feishu/Lark, Microsoft Teams, Telegram bot URLs) is a
  literal secret, wherever it sits, unless the credential part is a reference.
"""

from __future__ import annotations

import re
from typing import Any

_SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "apikey",
        "key",
        "webhook",
        "credential",
        "credentials",
    }
)
# A setting naming where a secret is kept (key_file, token_path) holds no secret itself.
_REFERENCE_WORDS = frozenset({"path", "file", "env", "name", "id"})

# The credential part must not start with "$" ({env:...} reference) to count.
_CREDENTIAL_URLS = [
    (
        re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:$]+:[^/@\s$][^/@\s]*@", re.I),
        "a user name and password",
    ),
    (
        re.compile(
            r"[?&](key|token|access_token|secret|password|passwd|sign|api_key|apikey)=(?!\$\{)[^&#\s]+",
            re.I,
        ),
        "a credential in its query",
    ),
    (
        re.compile(r"hooks\.slack\.com/(services|workflows|triggers)/(?!\$\{)[^\s]+", re.I),
        "a Slack webhook credential",
    ),
    (
        re.compile(r"discord(app)?\.com/api/webhooks/(?!\$\{)[^\s]+", re.I),
        "a Discord webhook token",
    ),
    (
        re.compile(r"open\.(feishu\.cn|larksuite\.com)/open-apis/bot/v2/hook/(?!\$\{)[^\s]+", re.I),
        "a Feishu/Lark webhook token",
    ),
    (
        re.compile(r"\.webhook\.office\.com/webhook\w*/(?!\$\{)[^\s]+", re.I),
        "a Teams webhook credential",
    ),
    (re.compile(r"api\.telegram\.org/bot(?!\$\{)[0-9]+:[^\s/]+", re.I), "a Telegram bot token"),
]

_ENV_ONLY = re.compile(r"\s*\$\{env:[A-Za-z_][A-Za-z0-9_]*\}\s*")


def credential_in_url(text: str) -> str | None:
    """What kind of credential a URL in ``text`` holds, or None."""
    if "://" not in text and "hooks." not in text and "webhook" not in text and "api." not in text:
        return None
    for pattern, what in _CREDENTIAL_URLS:
        if pattern.search(text):
            return what
    return None


def secret_name(name: str) -> bool:
    words = [w for w in re.split(r"[_\-.]+|(?<=[a-z])(?=[A-Z])", name) if w]
    lowered = [w.lower() for w in words]
    if not lowered or lowered[-1] in _REFERENCE_WORDS:
        return False
    joined = "".join(lowered)
    return any(w in _SECRET_WORDS for w in lowered) or "apikey" in joined or "accesstoken" in joined


def literal_secret(name: str, value: Any) -> str | None:
    """Why the setting ``name: value`` holds a literal secret, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    found = credential_in_url(value)
    if found is not None:
        return f"is a URL with {found}" if found.endswith("in its query") else f"is a URL with {found} in it"
    if secret_name(name) and "${env:" not in value:
        return "holds a literal secret"
    return None


def env_reference_only(value: str) -> bool:
    return bool(_ENV_ONLY.fullmatch(value))
