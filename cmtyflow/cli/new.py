"""``cmtyflow new [NAME] [--lang zh-CN|en] [--dir D]``: the playbook library.

Without NAME it lists the library: each playbook's name, title and one-line purpose.
With NAME it copies that playbook, the templates it uses and the folder defaults into
D, ready to validate and dry-run.

Rules:
- The library is ``cmtyflow/library/{playbooks,templates,examples}`` in an installed
  package (the build copies the repository's ``playbooks/``, ``templates/`` and
  ``examples/`` there, see setup.py); in a source checkout it is the repository root.
- A playbook's purpose is the top of its comment header: ``# NAME — English purpose``
  and, on the next line, the Chinese one. Titles written ``中文 / English`` are split
  the same way. The chosen language is used where the library has it.
- The copy is D/NAME.yaml, D/templates/... (only the templates the playbook names, in
  every language the library has them in, and language-neutral ones: each member is
  written to in their own ``locale``, as the library's playbook does, so a community
  of Chinese and English speakers keeps working) and D/cmtyflow.yaml (unless D has
  one: theirs is kept). Nothing is overwritten: if any file exists, nothing is written.
- The chosen language becomes the playbook's ``locale:`` (members without a locale of
  their own are written to in it); that one line is changed in the copy, everything
  else, comments included, is copied byte for byte. When a template has no version
  in that language, the locale is left as it is, and a note says so.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ..errors import UserError
from ..loader import DEFAULTS_NAME, load
from ..problems import format_text
from ..templates import template_dirs
from . import EXIT_OK, cli

LANGS = ("zh-CN", "en")
PACKAGE = Path(__file__).resolve().parent.parent
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LOCALE_LINE = re.compile(r"^locale:[ \t]*(?P<value>[^#\s]+)(?P<rest>[ \t]*(#.*)?)$", re.MULTILINE)


def library_root() -> Path:
    """``cmtyflow/library`` when installed, else the source checkout's root."""
    for root in (PACKAGE / "library", PACKAGE.parent):
        if (root / "playbooks" / DEFAULTS_NAME).is_file() and (root / "templates").is_dir():
            return root
    raise UserError(
        f"the playbook library is missing from this installation (looked in {PACKAGE / 'library'})"
    )


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    title: dict[str, str]
    purpose: dict[str, str]


def _by_language(parts: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in parts:
        part = part.strip()
        if part:
            found.setdefault("zh-CN" if _CJK.search(part) else "en", part)
    return found


def _header(text: str, name: str) -> dict[str, str]:
    """The purpose lines at the top of the comment header."""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    for i, line in enumerate(lines):
        if line.startswith(f"{name} — ") or line.startswith(f"{name} - "):
            first = line.split(" ", 2)[2]
            following = lines[i + 1] if i + 1 < len(lines) else ""
            return _by_language([first, following if _CJK.search(following) else ""])
    return {}


def _title(text: str) -> str:
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError:
        return ""
    title = data.get("title") if isinstance(data, dict) else None
    return str(title) if title else ""


def entries(root: Path) -> list[Entry]:
    found = []
    for path in sorted((root / "playbooks").glob("*.yaml")):
        if path.name == DEFAULTS_NAME or path.name.endswith(".test.yaml"):
            continue
        text = path.read_text(encoding="utf-8")
        name = path.stem
        found.append(
            Entry(name, path, _by_language(_title(text).split(" / ")), _header(text, name))
        )
    return found


def default_lang(env: Mapping[str, str]) -> str:
    """The library's language for this environment: en when its language (the first of
    LC_ALL, LC_MESSAGES, LANG that is set) is English, else zh-CN, the language of the
    communities the library was written for (an English user's first screen was
    Chinese)."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "")
        if value:
            return "en" if value.lower().startswith("en") else "zh-CN"
    return "zh-CN"


def _pick(texts: dict[str, str], lang: str) -> str:
    return texts.get(lang) or next(iter(texts.values()), "")


def _say(lang: str, en: str, zh: str) -> str:
    """What ``new`` prints, in the language chosen (its default is Chinese)."""
    return en if lang == "en" else zh


def _list(root: Path, lang: str) -> None:
    items = entries(root)
    width = max(len(e.name) for e in items)
    click.echo(
        "Playbook library (cmtyflow new NAME --dir DIR copies one):\n"
        if lang == "en"
        else "剧本库（cmtyflow new 名称 --dir 目录 复制一个到你的目录）：\n"
    )
    for e in items:
        click.echo(f"  {e.name.ljust(width)}  {_pick(e.title, lang)}")
        click.echo(f"  {' ' * width}  {_pick(e.purpose, lang)}")
    click.echo(
        f"\n{len(items)} playbooks; --lang zh-CN|en chooses the language of this listing and of the copy's "
        "locale (the templates of both languages are copied)."
        if lang == "en"
        else f"\n共 {len(items)} 个剧本；--lang zh-CN|en 选择此列表的语言和副本的 locale（两种语言的模板都会复制）。"
    )


# copying ------------------------------------------------------------------------------------------
_SCHEMA_LINE = "# yaml-language-server: $schema=../cmtyflow/schema/playbook.schema.json"


def _with_locale(text: str, lang: str) -> str:
    """Set ``locale:`` to ``lang``, editing only that line (SPEC 1 key)."""
    match = _LOCALE_LINE.search(text)
    if match is None:
        raise UserError("the library playbook has no top-level 'locale:' line to change")
    if match.group("value") == lang:
        return text
    return text[: match.start()] + f"locale: {lang}{match.group('rest')}" + text[match.end() :]


def _template_files(source: Path, lang: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(library file, path under templates/)`` for each template file to copy, and notes."""
    result = load([source])
    if not result.ok or not result.playbooks:
        raise UserError(
            f"the library playbook {source} does not load:\n{format_text(result.problems)}"
        )
    loaded = result.playbooks[0]
    dirs = template_dirs(source)
    files: list[tuple[Path, Path]] = []
    notes: list[str] = []
    for name, sources in sorted(loaded.templates.items()):
        in_lang = [s for s in sources if s.locale is None or s.locale.lower() == lang.lower()]
        own = loaded.playbook.locale
        if not any(s.locale is not None for s in in_lang) and any(
            s.locale is not None and own and s.locale.lower() == own.lower() for s in sources
        ):
            notes.append(f"template {name} has no {lang} version; members without a locale get the {own} one")
        for s in sources:
            base = next(d for d in dirs if s.path.is_relative_to(d))
            files.append((s.path, s.path.relative_to(base)))
    return files, notes


def _suggest(root: Path, entry: Entry, dest: Path) -> list[str]:
    playbook = shlex.quote(str(dest / f"{entry.name}.yaml"))
    commands = [f"cmtyflow validate {playbook}"]
    spec_path = root / "playbooks" / f"{entry.name}.test.yaml"
    try:
        spec = (
            YAML(typ="safe").load(spec_path.read_text(encoding="utf-8"))
            if spec_path.is_file()
            else None
        )
    except (OSError, YAMLError):
        spec = None
    roster = root / "examples" / "members.csv"
    if isinstance(spec, dict) and spec.get("roster"):
        roster = (spec_path.parent / str(spec["roster"])).resolve()
    dry = f"cmtyflow dry-run {playbook} --roster {shlex.quote(str(roster))}"
    if isinstance(spec, dict):
        if spec.get("events"):
            dry += (
                f" --events {shlex.quote(str((spec_path.parent / str(spec['events'])).resolve()))}"
            )
        if spec.get("start"):
            dry += f" --start {str(spec['start'])[:10]} --days {spec.get('days', 7)}"
    commands.append(dry + "    # the example roster and events")
    commands.append(
        f"cmtyflow dry-run {playbook} --roster members.csv    # your own roster (CSV: id,name,locale,timezone,tags,...)"
    )
    return commands


def _copy(root: Path, name: str, lang: str, dest: Path) -> None:
    catalogue = {e.name: e for e in entries(root)}
    entry = catalogue.get(name)
    if entry is None:
        near = [n for n in catalogue if name in n or n in name] or sorted(catalogue)
        raise UserError(
            f"no playbook '{name}' in the library; try one of: {', '.join(near)} (`cmtyflow new` lists them)"
        )
    text = entry.path.read_text(encoding="utf-8")
    files, notes = _template_files(entry.path, lang)
    # A template without a `lang` version is copied in the playbook's own language, which
    # then stays the playbook's locale so that every member still finds a template.
    copy_text = text if notes else _with_locale(text, lang)
    # The library's first line points editors at the schema inside this repository; the
    # copy points at one beside it, which `cmtyflow schema -o` writes (see Next).
    schema_line = copy_text.startswith(_SCHEMA_LINE)
    if schema_line:
        copy_text = "# yaml-language-server: $schema=playbook.schema.json" + copy_text[len(_SCHEMA_LINE) :]
    writes: dict[Path, bytes] = {dest / f"{name}.yaml": copy_text.encode("utf-8")}
    for src, rel in files:
        writes[dest / "templates" / rel] = src.read_bytes()
    defaults = dest / DEFAULTS_NAME
    keep_defaults = defaults.exists()
    if keep_defaults and not defaults.is_file():
        raise UserError(f"{defaults} exists and is not a file; nothing was written")
    if not keep_defaults:
        writes[defaults] = (root / "playbooks" / DEFAULTS_NAME).read_bytes()
    existing = [str(p) for p in writes if p.exists() or p.is_symlink()]
    if existing:
        raise UserError(
            "these files exist already, so nothing was written: "
            + ", ".join(existing)
            + "\n(choose another --dir, or move them away first)"
        )
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder; nothing was written")
    in_the_way = sorted({str(folder) for path in writes for folder in path.parents if folder.exists() and not folder.is_dir()})
    if in_the_way:
        raise UserError(f"{', '.join(in_the_way)} exists and is not a folder; nothing was written")
    written: list[Path] = []
    try:
        for path, data in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    except OSError as exc:
        for path in written:  # nothing is left half copied
            path.unlink(missing_ok=True)
        raise UserError(f"cannot write {exc.filename or dest}: {exc.strerror or exc}; nothing was written") from None
    title = _pick(entry.title, lang)
    click.echo(_say(lang, f"Copied {name} ({title}) from the library:", f"已从剧本库复制 {name}（{title}）："))
    for path in writes:
        click.echo(_say(lang, f"  wrote {path}", f"  写入 {path}"))
    if keep_defaults:
        click.echo(_say(
            lang,
            f"  kept your {defaults} (folder defaults: channels, roles, policies); the library's was not copied",
            f"  保留了你的 {defaults}（目录默认设置：频道、角色、策略），未复制剧本库的版本",
        ))
    for note in notes:
        click.echo(_say(lang, f"  note: {note}", f"  注意：{note}"))
    click.echo(_say(lang, "\nNext:", "\n下一步："))
    for command in _suggest(root, entry, dest):
        click.echo(f"  {command}")
    if schema_line:
        click.echo(f"  cmtyflow schema -o {dest / 'playbook.schema.json'}    "
                   + _say(lang, "# completion and checks in your editor", "# 编辑器里的补全和检查"))
    click.echo(_say(
        lang,
        f"\nThen read the comment at the top of {dest / f'{name}.yaml'} (what to change first).",
        f"\n然后阅读 {dest / f'{name}.yaml'} 开头的注释（先改哪些地方）。",
    ))


@click.command("new")
@click.argument("name", required=False)
@click.option(
    "--lang",
    type=click.Choice(LANGS),
    default=None,
    help="language of the listing and the copy's locale (templates of both languages are copied); "
         "default: en when the environment's language (LC_ALL, LC_MESSAGES, LANG) is English, else zh-CN",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="where to copy the playbook (DIR/NAME.yaml, DIR/templates/, DIR/cmtyflow.yaml)",
)
def new(name: str | None, lang: str | None, directory: str) -> int:
    """List the playbook library, or copy playbook NAME (with its templates and the folder
    defaults) into a folder of your own."""
    lang = lang or default_lang(os.environ)
    root = library_root()
    if name is None:
        _list(root, lang)
    else:
        _copy(root, name, lang, Path(directory))
    return EXIT_OK


cli.add_command(new)
