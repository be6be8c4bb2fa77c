"""`steerkit corpus check|stats`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import main
from .common import console

if TYPE_CHECKING:
    from ..corpus import Corpus


@main.group()
def corpus() -> None:
    """Check and summarise a story corpus."""


def _load(path: str, **kwargs: Any) -> Corpus:
    """Load a corpus leniently (errors land in its report); a file instead of the folder is an error."""
    from ..corpus import load
    from ..errors import CorpusError

    p = Path(path)
    if p.is_file():
        raise CorpusError(f"{p} is a file; pass the corpus folder (the one holding manifest.json), e.g. {p.parent}")
    return load(p, strict=False, **kwargs)


def _exit_on_errors(c: Corpus) -> None:
    """Print the corpus errors one per line (`error: ...`) and exit 2 if there are any."""
    for e in c.report.errors:
        click.echo(f"error: {e}", err=True)
    if c.report.errors:
        sys.exit(2)


@corpus.command("check")
@click.argument("path", type=click.Path())
@click.option("--min-positives", default=3, show_default=True, help="Fewest positives a concept may have.")
@click.option("--allow-missing", is_flag=True, help="Concepts missing from manifest or files are warnings.")
def corpus_check(path: str, min_positives: int, allow_missing: bool) -> None:
    """Validate a corpus: errors (exit 2, one line each) and warnings."""
    c = _load(path, min_positives=min_positives, allow_missing=allow_missing)
    for w in c.report.warnings:
        click.echo(f"warning: {w}", err=True)
    _exit_on_errors(c)
    click.echo(
        f"corpus ok: {len(c.concepts)} concepts, {len(c.texts)} texts, {len(c.scenarios)} scenarios, "
        f"{len(c.neutral)} neutral paragraphs, {len(c.report.warnings)} warnings"
    )


@corpus.command("stats")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def corpus_stats(path: str, as_json: bool) -> None:
    """Per concept: positives, mean words, scenarios; and totals."""
    c = _load(path)
    _exit_on_errors(c)
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
