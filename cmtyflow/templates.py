"""Template files: ``templates/NAME.<locale>.<ext>.j2`` and ``templates/NAME.<ext>.j2``
(SPEC 2).

Rules:
- A playbook's templates live in ``templates/`` next to it, then in ``templates/`` of
  its parent folder (a shared set for a folder of playbooks); the first folder that
  has a file for a given (locale, format) wins.
- ``pick`` walks the locale chain (member locale, playbook locale, none) and, for each
  locale, the adapter's formats in its order of preference.
- A template name may name a subfolder (``emails/welcome``) but never leaves the
  templates folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .adapters.base import FORMAT_EXT
from .errors import CmtyflowError

MAX_TEMPLATE_BYTES = 1024 * 1024
_FORMAT_OF_EXT = {ext: fmt for fmt, ext in FORMAT_EXT.items()}


class TemplateReadError(CmtyflowError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TemplateSource:
    name: str
    locale: str | None
    format: str
    path: Path
    source: str


def template_dirs(playbook_path: Path) -> list[Path]:
    folder = Path(playbook_path).parent
    # normpath only tidies the printed path (playbooks/../templates -> templates).
    candidates = [folder / "templates", Path(os.path.normpath(folder / ".." / "templates"))]
    return [d for d in candidates if d.is_dir()]


def valid_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return (
        bool(name) and not name.startswith(("/", "\\")) and ".." not in parts and "\\" not in name
    )


def _locale_key(locale: str | None) -> str | None:
    return locale.replace("_", "-").lower() if locale else None


def read_template(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise TemplateReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if len(raw) > MAX_TEMPLATE_BYTES:
        raise TemplateReadError(path, "is over 1 MiB; a template may be at most 1 MiB")
    if b"\x00" in raw:
        raise TemplateReadError(path, "not UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TemplateReadError(path, "not UTF-8 text") from exc


def _parse_file_name(file_name: str, base: str) -> tuple[str | None, str] | None:
    """``(locale, format)`` for ``BASE.<locale>.<ext>.j2`` / ``BASE.<ext>.j2``, else None."""
    if not (file_name.startswith(base + ".") and file_name.endswith(".j2")):
        return None
    middle = file_name[len(base) + 1 : -len(".j2")]
    parts = middle.split(".")
    if len(parts) == 1 and parts[0] in _FORMAT_OF_EXT:
        return None, _FORMAT_OF_EXT[parts[0]]
    if len(parts) == 2 and parts[1] in _FORMAT_OF_EXT and parts[0]:
        return parts[0], _FORMAT_OF_EXT[parts[1]]
    return None


def find_templates(dirs: Iterable[Path], name: str) -> list[TemplateSource]:
    """Every file for template ``name``; the first folder wins per (locale, format).
    Raises ``TemplateReadError`` for a file that is not readable UTF-8 text."""
    if not valid_name(name):
        return []
    rel = PurePosixPath(name)
    found: dict[tuple[str | None, str], TemplateSource] = {}
    for folder in dirs:
        parent = Path(folder).joinpath(*rel.parts[:-1])
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            parsed = _parse_file_name(entry.name, rel.name)
            if parsed is None or not entry.is_file():
                continue
            locale, fmt = parsed
            key = (_locale_key(locale), fmt)
            if key not in found:
                found[key] = TemplateSource(name, locale, fmt, entry, read_template(entry))
    return list(found.values())


def pick(
    sources: Sequence[TemplateSource], locale_chain: Sequence[str | None], formats: Sequence[str]
) -> TemplateSource | None:
    """The template to render (SPEC 2): for each locale in the chain, for each format in
    the adapter's order of preference, the first file that exists."""
    by_key = {(_locale_key(s.locale), s.format): s for s in sources}
    # None means "no locale": an unknown member locale is skipped, the locale-less
    # files come last.
    chain: list[str | None] = [loc for loc in locale_chain if loc]
    if None in locale_chain or "" in locale_chain:
        chain.append(None)
    for locale in chain:
        for fmt in formats:
            found = by_key.get((_locale_key(locale), fmt))
            if found is not None:
                return found
    return None
