"""`steerkit intervene`: force R, measure what changes, with controls and calibrated statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .app import main
from .common import OPEN_UNIT_FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SEED, UNIT_FLOAT, BoundedInt, console, device_options

if TYPE_CHECKING:
    from ..models.loading import Placement


@main.command("intervene")
@click.option("--run", "run", default=None, type=click.Path(), help="A finished train-phase run (default: the newest).")
@click.option("--force-R", "force_r", multiple=True, type=UNIT_FLOAT, help="Forced R in [0, 1]; repeatable.")
@click.option("--grid", default=None, help="Dose-response levels START:STOP:STEP, inclusive (e.g. 0:1:0.1).")
@click.option(
    "--prompts",
    default=None,
    type=click.Path(),
    help="Prompts: .jsonl {prompt, continuation} or .txt ('prompt ||| continuation' per line). "
    "Default: corpora/prompts/default.jsonl.",
)
@click.option(
    "--seeds", default=5, type=POSITIVE_INT, show_default=True, help="Sampled generations per prompt and arm."
)
@click.option(
    "--readout", default=None, type=click.Path(), help="Concept vectors (`steerkit extract` folder) for probe measures."
)
@click.option(
    "--readout-layer", default=None, type=int, help="Readout layer (default: first at/after the coupled block)."
)
@click.option("--concepts", default=None, help="Probe only these concepts, e.g. calm,afraid (default: all).")
@click.option("--out", default=None, type=click.Path(), help="Output folder (default: runs/<stamp>-intervene).")
@click.option("--method", type=click.Choice(["vonmises", "clamp"]), default="vonmises", show_default=True,
              help="How R is forced: von Mises phase sampling or deterministic clamping.")  # fmt: skip
@click.option(
    "--alpha", default=0.05, type=OPEN_UNIT_FLOAT, show_default=True, help="Significance level after Holm correction."
)
@click.option(
    "--max-new-tokens", default=16, type=POSITIVE_INT, show_default=True, help="Tokens per sampled generation."
)
@click.option("--temperature", default=1.0, type=POSITIVE_FLOAT, show_default=True, help="Sampling temperature.")
@click.option("--top-k", default=10, type=POSITIVE_INT, show_default=True, help="k of the top-k overlap measure.")
@click.option("--distinct-n", default=2, type=POSITIVE_INT, show_default=True, help="n of the distinct-n measure.")
@click.option("--positive-alpha", default=0.5, type=POSITIVE_FLOAT, show_default=True,
              help="Positive control strength: residual shift alpha * |R - center| * rms(h) along a fixed direction.")  # fmt: skip
@click.option(
    "--permutations",
    default=10000,
    type=BoundedInt(100),
    show_default=True,
    help="Sign patterns (exact when 2^n is smaller).",
)
@click.option(
    "--bootstrap", default=2000, type=BoundedInt(100), show_default=True, help="Bootstrap resamples for the 95% CIs."
)
@click.option("--seed", default=0, type=SEED, show_default=True, help="Base seed of all sampling.")
@click.option(
    "--batch-prompts",
    default=10,
    type=POSITIVE_INT,
    show_default=True,
    help="Prompts per forward pass (memory vs speed).",
)
@device_options
def intervene_cmd(
    run: str | None, force_r: tuple[float, ...], grid: str | None, prompts: str | None, seeds: int,
    readout: str | None, readout_layer: int | None, concepts: str | None, out: str | None, method: str, alpha: float,
    max_new_tokens: int, temperature: float, top_k: int, distinct_n: int, positive_alpha: float, permutations: int,
    bootstrap: int, seed: int, batch_prompts: int, placement: Placement,
) -> None:  # fmt: skip
    """Does R cause anything? Force the phase core's order parameter R to each level and compare with
    the free-running core on the same prompts; a negative control (coupling detached) and a positive
    control (planted coupling of known strength) run every time. Writes intervention.json,
    intervention.md, dose_response.png and washout.png. Exit code 0 whatever the verdict."""
    from ..errors import ExperimentError
    from ..experiments import InterveneConfig, intervene, merge_levels
    from ..experiments.intervene.run import resolve_run
    from .progress import progress_bar

    levels = merge_levels(force_r, grid)
    try:
        cfg = InterveneConfig(
            levels=levels, method=method, seeds=seeds, seed=seed, max_new_tokens=max_new_tokens,  # type: ignore[arg-type]
            temperature=temperature, top_k=top_k, distinct_n=distinct_n, positive_alpha=positive_alpha, alpha=alpha,
            permutations=permutations, bootstrap=bootstrap, readout_layer=readout_layer, batch_prompts=batch_prompts,
            concepts=tuple(c.strip() for c in concepts.split(",") if c.strip()) if concepts else (),
        )  # fmt: skip
    except ValueError as e:
        raise ExperimentError(str(e)) from e
    run_dir = resolve_run(run)
    with progress_bar("intervene", unit="prompts") as update:
        out_dir, rep = intervene(cfg, run_dir, prompts, readout, out, placement=placement, progress=update)
    if not rep:  # under torchrun only rank 0 reports
        return
    v = rep["verdicts"]
    console().print(f"phase run {run_dir}: {v['headline']}")
    for line in v["summary"]:
        click.echo(f"  {line}")
    click.echo(f"report: {out_dir}/intervention.md")
