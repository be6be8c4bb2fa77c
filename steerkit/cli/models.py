"""`steerkit verify` and `steerkit models ...`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from .app import main
from .common import console, model_options

if TYPE_CHECKING:
    from ..models.loading import Placement


@main.command()
@model_options
@click.option("--allow-untrained", is_flag=True, help="Let random (untrained) models pass; for tests.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(
    model: str | None, trust_remote_code: bool, placement: Placement, allow_untrained: bool, as_json: bool
) -> None:
    """Apparatus preflight: weights loaded, generation not degenerate, tokenizer round trip."""
    from ..errors import PreflightError
    from ..models import load, preflight

    lm = load(model, **placement.load_kwargs(), trust_remote_code=trust_remote_code)
    rep = preflight.run(lm, allow_untrained=allow_untrained)
    if not rep.ok:  # one line; the table is for a model that passed (`--debug` shows the traceback)
        raise PreflightError(rep.failures[0] + (f" ({len(rep.failures) - 1} more)" if len(rep.failures) > 1 else ""))
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        from rich.table import Table

        t = Table(title=f"preflight: {lm.info['spec']}", show_header=False)
        for k, v in rep.table.items():
            t.add_row(k, str(v))
        console().print(t)
        for w in rep.warnings:
            click.echo(f"warning: {w}", err=True)
        click.echo("preflight passed")


@main.group()
def models() -> None:
    """The offline model zoo."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models_list(as_json: bool) -> None:
    """Zoo models: name, family, parameters, cache location, whether present."""
    from ..models import zoo

    rows = zoo.list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table("name", "family", "params", "present", "cache")
    for r in rows:
        t.add_row(str(r["name"]), str(r["family"]), str(r["params"]), "yes" if r["present"] else "no", str(r["cache"]))
    console().print(t)


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download and convert again even if cached.")
def models_pull(name: str, force: bool) -> None:
    """Download and convert zoo model NAME into the cache ($STEERKIT_CACHE)."""
    from ..models import zoo

    path = zoo.pull(name, force=force)
    click.echo(f"{name}: {path}")
