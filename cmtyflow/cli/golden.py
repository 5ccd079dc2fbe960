"""``cmtyflow test PATH...``: golden transcript tests of playbooks."""

from __future__ import annotations

import click

from ..errors import UserError
from ..runtime.golden import discover, run_golden
from . import EXIT_ERROR, EXIT_OK, cli


@click.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--update", is_flag=True, help="rewrite the expected files from this dry run")
def test_cmd(paths: tuple[str, ...], update: bool) -> int:
    """Dry-run each NAME.test.yaml spec (or folder of them) and compare the deliveries
    with NAME.expected.jsonl; print a readable diff on a mismatch."""
    failed = 0
    specs = discover(list(paths))
    for spec in specs:
        try:
            result = run_golden(spec, update=update)
        except UserError as exc:  # this spec cannot run; the others still do
            failed += 1
            click.echo(f"ERROR {exc}")
            continue
        if update:
            click.echo(f"updated {result.expected} ({len(result.actual)} deliveries)")
        elif result.missing:
            failed += 1
            click.echo(f"FAIL {spec}: {result.expected} does not exist; run with --update to create it")
        elif result.diff:
            failed += 1
            click.echo(f"FAIL {spec}")
            for line in result.diff:
                click.echo(f"  {line}")
        else:
            click.echo(f"ok   {spec} ({len(result.actual)} deliveries)")
    if not update:
        click.echo(f"{len(specs) - failed} passed, {failed} failed")
    elif failed:
        click.echo(f"{failed} of {len(specs)} could not run; their expected files were left as they were")
    return EXIT_ERROR if failed else EXIT_OK


cli.add_command(test_cmd)
