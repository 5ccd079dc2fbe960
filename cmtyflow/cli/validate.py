"""``cmtyflow validate PATH...`` (SPEC 6): schema and semantic checks, every problem as
``path:line:col: severity: message`` with its source line; exit 1 on any error."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..loader import DEFAULTS_NAME, discover, is_playbook_file, load
from ..problems import ERROR, Problem, format_json, format_text, summary
from . import EXIT_ERROR, EXIT_OK, cli


@click.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for tools",
)
def validate(paths: tuple[str, ...], fmt: str) -> int:
    """Check playbooks (files or folders) without running them.

    A folder's cmtyflow.yaml is checked with the playbooks of its folder, which
    inherit it (a channel removed from it breaks them, not it)."""
    # A path that names no playbook (missing, a golden spec, a device) is a problem of
    # its own, reported with the others, and the other paths are still checked: a tool
    # reading --format json gets JSON either way.
    unusable: list[Problem] = []
    usable: list[str] = []
    for given in paths:
        try:
            discover([given])
        except UserError as exc:
            message = str(exc)
            unusable.append(Problem(given, 1, 1, ERROR, message.removeprefix(f"{given}: ")))
        else:
            usable += _with_inheritors(given)
    result = load(usable)
    problems = unusable + result.problems
    files = len(result.files)
    if not files and not problems:  # a mistyped folder must not pass a CI step
        message = f"no playbooks found in {', '.join(paths)}"
        if fmt != "json":
            raise UserError(message)
        problems = [Problem(given, 1, 1, ERROR, "no playbooks found in this folder") for given in paths]
        click.echo(format_json(problems, files=0))
        return EXIT_ERROR
    if fmt == "json":
        click.echo(format_json(problems, files=files))
    else:
        if problems:
            click.echo(format_text(problems))
        click.echo(summary(files, problems))
    return EXIT_OK if result.ok and not unusable else EXIT_ERROR


def _with_inheritors(given: str) -> list[str]:
    """``given``, and when it is a folder's defaults file, the playbooks beside it."""
    path = Path(given)
    if path.name != DEFAULTS_NAME or not path.is_file():
        return [given]
    beside = sorted(p for p in path.parent.iterdir() if is_playbook_file(p.name) and not p.name.startswith(".") and p.is_file())
    return [given, *map(str, beside)]


cli.add_command(validate)
