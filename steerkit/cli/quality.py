"""`steerkit quality-report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .app import main
from .common import POSITIVE_FLOAT, SEED, BoundedInt, device_options

if TYPE_CHECKING:
    from ..models.loading import Placement


@main.command("quality-report")
@click.argument("run", required=False, type=click.Path())
@click.option(
    "--model",
    "-m",
    default=None,
    help="Recompute missing activations with this model (default: use the run's saved activations).",
)
@device_options
@click.option(
    "--ridge-lambda",
    default=0.01,
    type=POSITIVE_FLOAT,
    show_default=True,
    help="Ridge strength for redundancy (no intercept).",
)
@click.option(
    "--folds",
    default=5,
    type=BoundedInt(2),
    show_default=True,
    help="k for the held-out readout (k-fold over stories).",
)
@click.option("--seed", default=0, type=SEED, show_default=True, help="Seed of the fold assignment.")
def quality_report(
    run: str | None, model: str | None, placement: Placement, ridge_lambda: float, folds: int, seed: int
) -> None:
    """Is each concept vector any good? Writes quality.json, quality.md and PNGs into RUN
    (default: the latest `steerkit extract` run under runs/)."""
    from ..errors import RunDirError, SteerkitError
    from ..quality.report import QualityConfig, write_report
    from ..runs import latest_run

    if run is None:
        found = latest_run("extract")
        if found is None:
            from ..runs import runs_root

            raise RunDirError(
                f"no extract run under {runs_root()}; make one with `steerkit extract --stories corpora/`"
            )
        run_dir = found
    else:
        run_dir = Path(run)
    try:
        cfg = QualityConfig(ridge_lambda=ridge_lambda, k_folds=folds, seed=seed)
    except ValueError as e:
        raise SteerkitError(str(e)) from e
    if model is not None and not (run_dir / "activations.safetensors").is_file():
        _recapture(run_dir, model, placement)
    from ..dist import is_main

    if not is_main():  # under torchrun the ranks share the recapture; rank 0 alone writes the report
        return
    report = write_report(run_dir, cfg)
    best = report["layers"][str(report["best_layer"])]
    click.echo(
        f"quality report: {run_dir}/quality.md (best layer {report['best_layer']}: held-out top-1 "
        f"{best['heldout']['top1']:.0%}, top-3 {best['heldout']['top3']:.0%}; chance "
        f"{best['heldout']['chance_top1']:.0%} / {best['heldout']['chance_top3']:.0%})"
    )
    for note in report.get("notes", []):
        click.echo(f"  note: {note}")
    for key, items in report["triage"].items():
        if not items:
            continue
        names = ", ".join(i["concept"] for i in items[:10]) + (" ..." if len(items) > 10 else "")
        click.echo(f"  {key.replace('_', '-')} ({len(items)}): {names}")
        for it in items[:2]:
            if it["suggestion"] != "none":
                click.echo(f"    - {it['suggestion']}")
        if len(items) > 2 and items[0]["suggestion"] != "none":
            click.echo("    - ... (all suggestions in quality.md)")


def _recapture(run_dir: Path, model: str, placement: Placement) -> None:
    """Recompute the activations of a run whose activations file is gone, from its corpus."""
    import json

    from ..capture import capture
    from ..corpus import load as load_corpus
    from ..errors import RunDirError
    from ..io import atomic_save_safetensors, atomic_write_bytes
    from ..models import load
    from ..vectors import ConceptVectors

    cv = ConceptVectors.load(run_dir)
    corpus_path = cv.meta.get("corpus", {}).get("path")
    if not corpus_path or not Path(corpus_path).is_dir():
        raise RunDirError(f"the run's corpus {corpus_path} is gone; re-run `steerkit extract`")
    corpus = load_corpus(corpus_path)
    if corpus.sha256() != cv.meta["corpus"]["sha256"]:
        raise RunDirError("the corpus changed since extraction; re-run `steerkit extract` instead")
    lm = load(model, **placement.load_kwargs())
    want = cv.meta.get("model", {})
    if want.get("fingerprint") and lm.info["fingerprint"] != want["fingerprint"]:
        raise RunDirError(
            f"--model {model} is not the model this run was extracted with ({want.get('spec')}, "
            f"fingerprint {want['fingerprint']}; got {lm.info['fingerprint']}); pass --model {want.get('spec')}"
        )
    from ..capture import parse_pooling
    from ..vectors.methods import get_method

    texts = [t.text for t in corpus.texts]
    neutral = [t.text for t in corpus.neutral] if get_method(str(cv.meta.get("method", "caa"))).needs_neutral else []
    res = capture(lm, texts + neutral, cv.layers, sites=("resid", "heads"), pooling=parse_pooling(cv.meta["pooling"]),
                  distributed=True)  # fmt: skip
    if not res.complete:  # a rank other than 0 under torchrun: its rows went to rank 0
        return
    n = len(texts)
    tensors = {f"resid.layer_{la}": v[:n].contiguous() for la, v in res.resid.items()}
    tensors.update({f"heads.layer_{la}": v[:n].contiguous() for la, v in res.heads.items()})
    if neutral:  # the centered method's held-out rebuild needs them (without, it silently fell back to CAA)
        tensors.update({f"neutral.layer_{la}": v[n:].contiguous() for la, v in res.resid.items()})
    atomic_save_safetensors(tensors, run_dir / "activations.safetensors")
    meta = [
        {"sha256": t.sha, "concepts": sorted(t.concepts), "sources": [s.__dict__ for s in t.sources]}
        for t in corpus.texts
    ]
    atomic_write_bytes(run_dir / "texts.json", json.dumps(meta, indent=1).encode())
