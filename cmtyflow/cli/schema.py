"""``cmtyflow schema [--output FILE]`` (SPEC 6): the JSON Schema of a playbook, for
editors; ``cmtyflow/schema/playbook.schema.json`` is this output, shipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from ..spec.models import Playbook
from . import EXIT_OK, cli

SCHEMA_ID = "https://cmtyflow.dev/schema/playbook.schema.json"
SHIPPED = Path(__file__).resolve().parent.parent / "schema" / "playbook.schema.json"


def playbook_schema() -> dict[str, Any]:
    body = Playbook.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "cmtyflow playbook",
        **{k: v for k, v in body.items() if k != "title"},
    }


def schema_text() -> str:
    return json.dumps(playbook_schema(), indent=2, ensure_ascii=False) + "\n"


@click.command("schema")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="write to FILE instead of stdout",
)
def schema(output: str | None) -> int:
    """Print the JSON Schema of playbook files."""
    text = schema_text()
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    else:
        click.echo(text, nl=False)
    return EXIT_OK


cli.add_command(schema)
