"""`steerkit corpus check|stats`."""

from __future__ import annotations

import json
import sys

import click

from . import main
from .common import console


@main.group()
def corpus() -> None:
    """Check and summarise a story corpus."""


@corpus.command("check")
@click.argument("path", type=click.Path())
@click.option("--min-positives", default=3, show_default=True, help="Fewest positives a concept may have.")
@click.option("--allow-missing", is_flag=True, help="Concepts missing from manifest or files are warnings.")
def corpus_check(path: str, min_positives: int, allow_missing: bool) -> None:
    """Validate a corpus: errors (exit 2, one line each) and warnings."""
    from ..corpus import load

    c = load(path, min_positives=min_positives, allow_missing=allow_missing, strict=False)
    for w in c.report.warnings:
        click.echo(f"warning: {w}", err=True)
    for e in c.report.errors:
        click.echo(f"error: {e}", err=True)
    if c.report.errors:
        sys.exit(2)
    click.echo(
        f"corpus ok: {len(c.concepts)} concepts, {len(c.texts)} texts, {len(c.scenarios)} scenarios, "
        f"{len(c.neutral)} neutral paragraphs, {len(c.report.warnings)} warnings"
    )


@corpus.command("stats")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def corpus_stats(path: str, as_json: bool) -> None:
    """Per concept: positives, mean words, scenarios; and totals."""
    from ..corpus import load

    c = load(path, strict=False)
    rows = c.stats()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table("concept", "cluster", "positives", "mean words", "scenarios")
    for r in rows:
        t.add_row(
            str(r["concept"]),
            str(r["cluster"]),
            str(r["positives"]),
            str(r["mean_words"]),
            ", ".join(r["scenarios"]) or "-",  # type: ignore[arg-type]
        )
    console().print(t)
    click.echo(
        f"total: {len(c.concepts)} concepts, {len(c.texts)} unique texts, {len(c.scenarios)} scenarios, "
        f"{len(c.neutral)} neutral paragraphs"
    )
