"""Playbook files -> validated models with a source map, and every problem found
(SPEC 1).

Rules:
- A folder argument means every ``*.yaml`` / ``*.yml`` below it, except folder
  defaults (``cmtyflow.yaml``), golden transcript specs (``*.test.yaml``), anything
  under a ``templates`` folder, hidden folders (``.git``, ``.github``) and hidden files
  (``.pre-commit-config.yaml``, an editor's ``.#pb.yaml`` lock).
- A folder's ``cmtyflow.yaml`` (policies, channels, roles) applies to the playbooks in
  that folder; the playbook's own keys win, merged per key (each policy key, each
  channel name, each role name). Problems inside it point into that file.
- A file over 1 MiB is refused before it is parsed; so is one that is not UTF-8 text,
  and a path that is no regular file (a named pipe, a device: opening one would wait
  forever); the other files are still checked.
- One file reached twice (named twice, a symbolic link beside its target) is read once.
- A plain text value cut short by a `` #`` comment (``text: 话题 #读书``) is a warning
  in the parts of a playbook that hold messages and conditions (``yamldata``).
- Every problem is collected: YAML structure, the models (``spec.errors``), then the
  semantic checks (``checks``), which work on the raw data so that they still run
  when the models reject something else in the file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import channelchecks, checks
from .errors import UserError
from .problems import ERROR, WARNING, Problem
from .spec.errors import describe, translate
from .spec.models import LANGUAGE_VERSION, Defaults, Playbook
from .spec.sourcemap import Mark, Origin, SourceMap, split_lines
from .spec.yamldata import CommentCut, parse_yaml
from .templates import TemplateReadError, TemplateSource, find_templates, template_dirs

MAX_BYTES = 1024 * 1024
DEFAULTS_NAME = "cmtyflow.yaml"
MERGED_KEYS = ("policies", "channels", "roles")  # SPEC 1: what a folder's defaults hold


@dataclass
class LoadedPlaybook:
    path: Path
    text: str
    playbook: Playbook
    source_map: SourceMap
    templates: dict[str, list[TemplateSource]]
    version: str  # sha256 of the playbook text, the folder defaults and the template sources


@dataclass
class LoadResult:
    playbooks: list[LoadedPlaybook]
    problems: list[Problem]
    files: list[Path] = field(default_factory=list)  # playbooks and folder defaults read

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)


@dataclass
class _Defaults:
    path: Path
    text: str
    data: dict[str, Any]
    source_map: SourceMap


def problem_at(mark: Mark, message: str, severity: str = ERROR) -> Problem:
    return Problem(mark.path, mark.line, mark.col, severity, message, mark.source_line)


def _file_problem(path: Path, message: str, line: int = 1, col: int = 1) -> Problem:
    return Problem(str(path), line, col, ERROR, message)


def _decode(path: Path, raw: bytes) -> tuple[str | None, Problem | None]:
    if len(raw) > MAX_BYTES:
        return None, _file_problem(path, f"file is {len(raw):,} bytes; a playbook may be at most 1 MiB ({MAX_BYTES:,} bytes)")
    if b"\x00" in raw:
        return None, _file_problem(path, "not UTF-8 text (the file looks binary)")
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        return None, _file_problem(path, "not UTF-8 text", line)


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _not_regular(mode: int) -> str:
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "something else")
    return f"not a regular file but {what}; a playbook is a text file"


def _read(path: Path) -> tuple[str | None, Problem | None]:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # Opening a named pipe waits for a writer: forever, for a validate run.
            return None, _file_problem(path, _not_regular(info.st_mode))
        size = info.st_size
        if size > MAX_BYTES:
            return None, _file_problem(
                path, f"file is {size:,} bytes; a playbook may be at most 1 MiB ({MAX_BYTES:,} bytes)"
            )
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, _file_problem(path, f"cannot be read: {exc.strerror or exc}")
    return _decode(path, raw)


def is_playbook_file(name: str) -> bool:
    return (
        name.endswith((".yaml", ".yml"))
        and name != DEFAULTS_NAME
        and not name.endswith(".test.yaml")
    )


def discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(playbook files, folder defaults files) named by ``paths``, in a stable order."""
    playbooks: list[Path] = []
    defaults: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != "templates" and not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue  # hidden, as folders are (.pre-commit-config.yaml, an editor's lock file)
                    if name == DEFAULTS_NAME:
                        defaults.append(Path(folder) / name)
                    elif is_playbook_file(name):
                        playbooks.append(Path(folder) / name)
        elif path.is_file():
            if path.name == DEFAULTS_NAME:
                defaults.append(path)
            elif path.name.endswith(".test.yaml"):
                raise UserError(f"{given}: a golden test spec, not a playbook; run it with `cmtyflow test {given}`")
            elif path.name.endswith(".j2"):
                raise UserError(f"{given}: a message template, not a playbook; templates are checked through the "
                                "playbooks that use them: validate the playbook, or its folder")
            else:
                playbooks.append(path)
        elif path.exists():
            raise UserError(f"{given}: not a playbook file or a folder of them")
        else:
            raise UserError(f"{given}: no such file or folder")
    # The same file named twice (a folder and a file in it) is loaded once.
    return _unique(playbooks), _unique(defaults)


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for path in paths:
        key = os.path.normcase(os.path.realpath(path))
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


class _Session:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.files: list[Path] = []
        self._defaults: dict[str, _Defaults | None] = {}

    def defaults_for(self, folder: Path) -> _Defaults | None:
        path = folder / DEFAULTS_NAME
        key = os.path.normpath(path)
        if key not in self._defaults:
            # A named pipe (or another file that is not regular) is reported by _read,
            # not skipped without a word (the playbooks then had no channels).
            self._defaults[key] = self._load_defaults(path) if path.exists() and not path.is_dir() else None
        return self._defaults[key]

    def _load_defaults(self, path: Path) -> _Defaults | None:
        self.files.append(path)
        text, problem = _read(path)
        if problem is not None or text is None:
            self.problems.append(problem or _file_problem(path, "cannot be read"))
            return None
        origin = Origin(str(path), split_lines(text))
        parsed = parse_yaml(text, origin)
        self._yaml_problems(parsed.problems, origin)
        if not parsed.usable:
            return None
        data = parsed.data if parsed.data is not None else {}
        if not isinstance(data, dict):
            mark = parsed.source_map.mark(())
            self.problems.append(
                problem_at(
                    mark, "cmtyflow.yaml should be a mapping with policies, channels and roles"
                )
            )
            return None
        self._validate(Defaults, data, parsed.source_map)
        # Its channels are checked here too, so that a folder's defaults are checked even
        # before any playbook uses them (playbooks repeat these problems; they are merged).
        context = checks.CheckContext(path, data, parsed.source_map, {}, [])
        self.problems.extend(channelchecks.check_channels(context))
        return _Defaults(path, text, data, parsed.source_map)

    def _yaml_problems(self, found: Iterable[Any], origin: Origin) -> None:
        for p in found:
            self.problems.append(
                Problem(origin.path, p.line, p.col, ERROR, p.message, origin.line(p.line))
            )

    def _validate(self, model: type[BaseModel], data: Any, smap: SourceMap) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in translate(exc, model, data):
                mark = smap.key_mark(err.loc) if err.at_key else _value_mark(smap, err.loc, data)
                self.problems.append(problem_at(mark, err.message))
            return None

    def load_playbook(
        self, path: Path, text: str | None, with_folder: bool = True
    ) -> LoadedPlaybook | None:
        self.files.append(path)
        if text is None:
            text, problem = _read(path)
            if problem is not None or text is None:
                self.problems.append(problem or _file_problem(path, "cannot be read"))
                return None
        origin = Origin(str(path), split_lines(text))
        parsed = parse_yaml(text, origin)
        self._yaml_problems(parsed.problems, origin)
        if not parsed.usable:
            return None
        data, smap = parsed.data, parsed.source_map
        if data is None:
            self.problems.append(
                Problem(
                    str(path),
                    1,
                    1,
                    ERROR,
                    "empty file: a playbook needs at least cmtyflow, name and flows",
                )
            )
            return None
        if not isinstance(data, dict):
            self.problems.append(
                problem_at(
                    smap.mark(()),
                    f"a playbook should be a mapping of keys such as cmtyflow, name and flows, not {describe(data)}",
                )
            )
            return None
        version = data.get("cmtyflow", LANGUAGE_VERSION)
        if version != LANGUAGE_VERSION or isinstance(version, bool):
            # A playbook for another language version: its other keys mean other things.
            at = smap.key_mark(("cmtyflow",)) if version is None else smap.mark(("cmtyflow",))
            self.problems.append(problem_at(at, _version_message(version)))
            return None
        self.problems.extend(_comment_cuts(parsed.comment_cuts, origin))
        defaults = self.defaults_for(path.parent) if with_folder else None
        if defaults is not None:
            data = _merge(data, smap, defaults)
        playbook = self._validate(Playbook, data, smap)
        dirs = template_dirs(path) if with_folder else []
        templates = self._templates(data, dirs)
        self.problems.extend(
            checks.check_playbook(checks.CheckContext(path, data, smap, templates, dirs))
        )
        if playbook is None:
            return None
        return LoadedPlaybook(
            path, text, playbook, smap, templates, _version(Path(path), text, defaults, templates)
        )

    def _templates(self, data: dict[str, Any], dirs: list[Path]) -> dict[str, list[TemplateSource]]:
        found: dict[str, list[TemplateSource]] = {}
        for name in checks.template_names(data):
            try:
                found[name] = find_templates(dirs, name)
            except TemplateReadError as exc:
                self.problems.append(Problem(str(exc.path), 1, 1, ERROR, f"template {exc.reason}"))
                found[name] = []
        return found


def _version_message(version: Any) -> str:
    if version is None:
        return f"cmtyflow: needs the language version: write cmtyflow: {LANGUAGE_VERSION}"
    if isinstance(version, str) and version.strip() == str(LANGUAGE_VERSION):
        return (
            f"cmtyflow: should be the number {LANGUAGE_VERSION}, not the text '{version}': "
            f"write cmtyflow: {LANGUAGE_VERSION} without quotes"
        )
    return f"unsupported language version {_yaml_text(version)}; this cmtyflow reads version {LANGUAGE_VERSION}"


# Where a playbook holds message text, conditions and names (a ' #' there is most likely
# a hashtag): the values of these top-level keys, at any depth.
_TEXT_PARTS = ("title", "vars", "audience", "goals", "triggers", "flows")


# The keys whose value is text people read, where "#读书" is a hashtag; elsewhere (an
# id, an event type, a duration: `wait: 3d #three-days`) it is a comment, and quoting
# the whole value, as the warning says, would break the value.
_TEXT_KEYS = frozenset({"text", "title", "subject", "description"})


def _comment_cuts(cuts: list[CommentCut], origin: Origin) -> list[Problem]:
    found = []
    for cut in cuts:
        if not cut.loc or cut.loc[0] not in _TEXT_PARTS:
            continue
        if cut.loc[0] != "vars" and cut.loc[-1] not in _TEXT_KEYS:
            continue
        found.append(
            Problem(
                origin.path,
                cut.line,
                cut.col,
                WARNING,
                f"the text stops at ' #' (YAML reads the rest of the line as a comment, so this value is "
                f"'{cut.value}'): quote the whole value to keep it",
                origin.line(cut.line),
            )
        )
    return found


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return "nothing" if value is None else str(value)


def _value_mark(smap: SourceMap, loc: tuple[Any, ...], data: Any) -> Mark:
    """A mapping or list value is pointed at by its key (a block mapping's own position
    is the line after the key); a scalar, or a list item, by itself."""
    value: Any = data
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return smap.mark(loc)
    if isinstance(value, (dict, list)) and loc and isinstance(loc[-1], str):
        return smap.key_mark(loc)
    return smap.mark(loc)


def _merge(data: dict[str, Any], smap: SourceMap, defaults: _Defaults) -> dict[str, Any]:
    """SPEC 1: the folder's policies, channels and roles, under the playbook's own."""
    merged = dict(data)
    for key in MERGED_KEYS:
        base = defaults.data.get(key)
        if not isinstance(base, dict) or not base:
            continue
        own = data.get(key)
        if own is None:
            merged[key] = dict(base)
            smap.graft((key,), defaults.source_map)
            continue
        if not isinstance(own, dict):
            continue
        merged[key] = {**base, **own}
        for name in base:
            if name not in own:
                smap.graft((key, name), defaults.source_map)
    return merged


def _version(
    path: Path, text: str, defaults: _Defaults | None, templates: dict[str, list[TemplateSource]]
) -> str:
    """The hash of what the playbook is made of. Templates count by their place beside the
    playbook (``templates/x.j2``, ``../templates/x.j2``), not by the path the playbook was
    given as: ``pb.yaml`` and ``/home/club/pb.yaml`` are one version."""
    digest = hashlib.sha256(text.encode("utf-8"))
    if defaults is not None:
        digest.update(b"\0defaults\0" + defaults.text.encode("utf-8"))
    here = path.resolve().parent
    sources = sorted(
        (Path(os.path.relpath(Path(s.path).resolve(), here)).as_posix(), s.source)
        for group in templates.values() for s in group
    )
    for where, source in sources:
        digest.update(b"\0template\0" + where.encode("utf-8") + b"\0" + source.encode("utf-8"))
    return digest.hexdigest()


def _finish(session: _Session, loaded: list[LoadedPlaybook], order: list[str]) -> LoadResult:
    session.problems.extend(checks.check_names(loaded))
    rank = {path: i for i, path in enumerate(order)}
    unique = list(dict.fromkeys(session.problems))
    unique.sort(key=lambda p: (rank.get(p.path, len(rank)), p.path, p.line, p.col))
    return LoadResult(loaded, unique, list(dict.fromkeys(session.files)))


def load(paths: Sequence[str | Path]) -> LoadResult:
    """Load and check every playbook named by ``paths`` (files or folders)."""
    playbook_paths, defaults_paths = discover(paths)
    session = _Session()
    loaded: list[LoadedPlaybook] = []
    for path in playbook_paths:
        result = session.load_playbook(path, None)
        if result is not None:
            loaded.append(result)
    for path in defaults_paths:
        session.defaults_for(path.parent)
    order = [str(p) for p in session.files]
    return _finish(session, loaded, order)


def load_text(text: str, path: str | Path = "<playbook>") -> LoadResult:
    """Load one playbook from ``text``; the folder defaults and templates of ``path``'s
    folder apply when ``path`` names a real location."""
    path = Path(path)
    session = _Session()
    with_folder = not str(path).startswith("<")
    raw = text.encode("utf-8")
    decoded, problem = _decode(path, raw)
    loaded: list[LoadedPlaybook] = []
    if problem is not None:
        session.files.append(path)
        session.problems.append(problem)
    else:
        result = session.load_playbook(path, decoded, with_folder=with_folder)
        if result is not None:
            loaded.append(result)
    return _finish(session, loaded, [str(p) for p in session.files])
