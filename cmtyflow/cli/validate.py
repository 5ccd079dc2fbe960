"""``cmtyflow validate PATH...`` (SPEC 6): schema and semantic checks, every problem as
``path:line:col: severity: message`` with its source line; exit 1 on any error."""

from __future__ import annotations

import click

from ..errors import UserError
from ..loader import load
from ..problems import format_json, format_text, summary
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
    """Check playbooks (files or folders) without running them."""
    result = load(paths)
    files = len(result.files)
    if not files and not result.problems:  # a mistyped folder must not pass a CI step
        raise UserError(f"no playbooks found in {', '.join(paths)}")
    if fmt == "json":
        click.echo(format_json(result.problems, files=files))
    else:
        if result.problems:
            click.echo(format_text(result.problems))
        click.echo(summary(files, result.problems))
    return EXIT_OK if result.ok else EXIT_ERROR


cli.add_command(validate)
