"""`steerkit steer-eval`: does adding a concept vector make the text express it, and at what cost?"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click

from .app import main
from .common import (
    NONNEG_FLOAT,
    OPEN_UNIT_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    UNIT_FLOAT,
    BoundedInt,
    console,
    device_options,
)

if TYPE_CHECKING:
    from ..models.loading import Placement


def _floats(spec: str, what: str) -> tuple[float, ...]:
    from ..errors import ExperimentError

    try:
        vals = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError as e:
        raise ExperimentError(f"{what} {spec!r}: give comma-separated numbers, e.g. 0,3,4,6,8") from e
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ExperimentError(f"{what} {spec!r}: every value must be a finite number (got {bad[0]})")
    if not vals:
        raise ExperimentError(f"{what} is empty; give comma-separated numbers, e.g. 0,3,4,6,8")
    return vals


@main.command("steer-eval")
@click.option("--vectors", "vectors", default=None, type=click.Path(), help="An extract run (default: the latest).")
@click.option("--model", "-m", default=None, help="Model spec (default: the run's; another model is refused).")
@click.option("--concepts", default="all", show_default=True, help="Concepts to steer: a,b,c or all.")
@click.option("--layers", default="auto", show_default=True,
              help="Blocks to steer (run layers): 10,15,20 or auto (the run layers nearest 1/3, 1/2, 2/3 of depth).")  # fmt: skip
@click.option("--alphas", default="0,3,4,6,8", show_default=True, help="Strengths; 0 (unsteered) is always run.")
@click.option("--scale", type=click.Choice(["absolute", "equal", "relative"]), default="absolute", show_default=True,
              help="absolute: alpha x raw diff-of-means; equal: alpha x the set's median vector norm x unit vector "
                   "(every concept and the random control pushed as hard); relative: alpha x local hidden norm x unit vector.")  # fmt: skip
@click.option("--prompts", default=None, type=click.Path(),
              help="Prompts (.jsonl {prompt} or one per line). Default: corpora/prompts/neutral_openings.jsonl.")  # fmt: skip
@click.option(
    "--seeds",
    default=2,
    type=POSITIVE_INT,
    show_default=True,
    help="Sampled continuations per prompt (same seeds in every arm).",
)
@click.option(
    "--greedy", is_flag=True, help="Greedy decoding instead of seeded sampling (one continuation per prompt)."
)
@click.option("--temperature", default=1.0, type=POSITIVE_FLOAT, show_default=True, help="Sampling temperature.")
@click.option("--max-new-tokens", default=64, type=POSITIVE_INT, show_default=True, help="Tokens per continuation.")
@click.option(
    "--random-draws",
    default=32,
    type=BoundedInt(2),
    show_default=True,
    help="Random directions per layer (the control).",
)
@click.option("--max-nll-increase", default=1.0, type=NONNEG_FLOAT, show_default=True,
              help="Operating points keep the NLL increase at or below this (nat/token).")  # fmt: skip
@click.option(
    "--min-success", default=0.5, type=UNIT_FLOAT, show_default=True, help="Least success rate of an operating point."
)
@click.option(
    "--top", default=3, type=POSITIVE_INT, show_default=True, help="Success = the steered concept among the top N read."
)
@click.option(
    "--readout-layer", default=None, type=int, help="Layer the continuations are read at (default: best_layer)."
)
@click.option(
    "--significance",
    default=0.05,
    type=OPEN_UNIT_FLOAT,
    show_default=True,
    help="Level of the claims after Holm over the grid.",
)
@click.option("--seed", default=0, type=SEED, show_default=True, help="Base seed (sampling and random directions).")
@click.option(
    "--batch-rows",
    default=128,
    type=POSITIVE_INT,
    show_default=True,
    help="Generations per generate() call (memory vs speed).",
)
@click.option("--out", default=None, type=click.Path(), help="Output folder (default: the vectors run).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the row cache (no resume).")
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="Who generates: hf (steerkit's generation room) or vllm (in .venv-vllm; greedy rows equal, sampled "
              "rows follow vLLM's sampler). The NLL and the re-reading always run on the HF model.")  # fmt: skip
@click.option("--kv-cache-gb", default=1.0, type=POSITIVE_FLOAT, show_default=True, help="vLLM engine: KV cache, GiB.")
@device_options
def steer_eval_cmd(
    vectors: str | None, model: str | None, concepts: str, layers: str, alphas: str, scale: str, prompts: str | None,
    seeds: int, greedy: bool, temperature: float, max_new_tokens: int, random_draws: int, max_nll_increase: float,
    min_success: float, top: int, readout_layer: int | None, significance: float, seed: int, batch_rows: int,
    out: str | None, no_cache: bool, engine: str, kv_cache_gb: float, placement: Placement,
) -> None:  # fmt: skip
    """Does adding a concept vector make the model write text that expresses the concept, and what
    does it cost in fluency? Steers every concept x layer x alpha on neutral prompts, re-reads each
    continuation with the unsteered model, compares with random directions of the same norm, and
    picks an operating point per concept. Writes steer_eval.json, steer_eval.md and three figures
    into the vectors run (docs/steer-eval.md)."""
    from ..errors import ExperimentError
    from ..experiments.steer_eval import SteerEvalConfig, evaluate
    from .progress import progress_bar

    names = tuple(c.strip() for c in concepts.split(",") if c.strip())
    if not names:
        raise ExperimentError("--concepts is empty; give names (a,b) or all")
    try:
        cfg = SteerEvalConfig(
            concepts=() if [n.lower() for n in names] == ["all"] else names, layers=layers,
            alphas=_floats(alphas, "--alphas"), scale=scale, seeds=seeds, seed=seed, max_new_tokens=max_new_tokens,
            temperature=temperature, greedy=greedy, random_draws=random_draws, max_nll_increase=max_nll_increase,
            min_success=min_success, top=top, significance=significance, readout_layer=readout_layer,
            batch_rows=batch_rows,
        )  # fmt: skip
    except ValueError as e:
        raise ExperimentError(str(e)) from e
    make_generator = None
    if engine == "vllm":
        from ..serve.vllm_engine import check_vllm, steer_eval_generator

        check_vllm()  # one line before anything loads

        def make_generator(lm: Any, run: Any, cv: Any) -> Any:
            return steer_eval_generator(lm, run, cv, scale, kv_cache_gb, max_batch=batch_rows)

    with progress_bar("steer-eval", unit="rows") as update:
        out_dir, rep = evaluate(
            cfg,
            vectors,
            prompts,
            out,
            model=model,
            placement=placement,
            cache=not no_cache,
            progress=update,
            engine=engine,
            make_generator=make_generator,
        )
    if not rep:  # under torchrun only rank 0 reports
        return
    s = rep["summary"]
    console().print(
        f"steerable: {s['n_steerable']} of {s['n_concepts']} concepts ({s['share_steerable']:.0%})"
        + (f", {s['n_held_out']} held on held-out prompts" if s.get("n_held_out") is not None else "")
        + f"; random control "
        f"success {s['random_success']:.1%}; {rep['stats']['rows']} rows in {rep['stats']['seconds']:.0f} s"
    )
    click.echo(f"report: {out_dir}/steer_eval.md")
