"""`steerkit corpus check|stats`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .app import main
from .common import NONNEG_FLOAT, OPEN_UNIT_FLOAT, POSITIVE_INT, SEED, console

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
@click.option(
    "--min-positives", default=3, type=POSITIVE_INT, show_default=True, help="Fewest positives a concept may have."
)
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


@corpus.command("pairs")
@click.argument("path", type=click.Path())
@click.option("--axis", required=True, help="valence, arousal (manifest scores; chosen = higher) or concept:A,B.")
@click.option(
    "--min-gap",
    default=0.3,
    type=NONNEG_FLOAT,
    show_default=True,
    help="Smallest score difference of a valence/arousal pair.",
)
@click.option(
    "--val-fraction",
    type=OPEN_UNIT_FLOAT,
    default=0.3,
    show_default=True,
    help="Share of scenarios held out for validation.",
)
@click.option(
    "--max-prompt-words",
    default=30,
    show_default=True,
    help="Cut the shared opening at the last sentence end within this many words (0: no limit).",
)
@click.option("--seed", default=0, type=SEED, show_default=True, help="Seed of the held-out scenario choice.")
@click.option("--out", default=None, type=click.Path(), help="Output .jsonl (default: print to stdout).")
def corpus_pairs(
    path: str, axis: str, min_gap: float, val_fraction: float, max_prompt_words: int, seed: int, out: str | None
) -> None:
    """Preference pairs (prompt, chosen, rejected) from the corpus's paired scenarios, for
    `steerkit train-phase --objective dpo|orpo --pairs FILE`."""
    from ..errors import CorpusError
    from ..training.pairs import corpus_pairs as make_pairs
    from ..training.pairs import write_pairs

    if not 0.0 < val_fraction < 1.0 or not min_gap >= 0.0:
        raise CorpusError("--val-fraction must lie in (0, 1) and --min-gap must be >= 0")
    if out and Path(out).is_dir():
        raise CorpusError(f"--out {out} is a folder; give a .jsonl file name")
    names = axis[len("concept:") :].split(",") if axis.startswith("concept:") else []
    if axis not in ("valence", "arousal") and (len(names) != 2 or not all(n.strip() for n in names)):
        raise CorpusError(f"--axis {axis!r}: use valence, arousal or concept:A,B (two different concepts)")
    c = _load(path)
    _exit_on_errors(c)
    rows, counts = make_pairs(
        c, axis, min_gap=min_gap, val_fraction=val_fraction, seed=seed, max_prompt_words=max_prompt_words or None
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_pairs(out, rows)
    else:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
    click.echo(
        f"{counts['pairs']} pairs ({counts['validation']} in held-out scenarios), {counts['skipped']} framing pairs "
        f"skipped (no shared opening sentence){' -> ' + out if out else ''}",
        err=True,
    )
