"""`steerkit steer-eval`: does adding a concept vector make the text express the concept, at what cost?

For every concept x layer x alpha the model generates continuations of neutral prompts (prompts x
seeds, the same units in every arm) with the vector added at that block; the unsteered model then
re-reads each continuation alone (concept scores at the run's readout layer), scores its NLL given
the prompt, and its degeneration (distinct-2, repeated 3-grams). Random directions of the same
norm go through the same pipeline as the control (docs/steer-eval.md).

This room: config.py (settings), inputs.py (prompts, run, layers, concepts, model check), this file
(the command), grid.py (arms, row cache, the chunked loop), generate.py (per-row steering, batched
generation, NLL, re-reading), analysis.py (per-cell statistics, claims, operating points), report.py
and figures.py (the files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SteerEvalConfig
from .generate import reader
from .grid import Progress, RowCache, run_grid
from .inputs import (
    best_readout_layer,
    check_model,
    concept_groups,
    default_prompts_path,
    read_prompts,
    resolve_concepts,
    resolve_layers,
    resolve_vectors,
)

if TYPE_CHECKING:
    from ...models.loading import Placement

log = logging.getLogger(__name__)
KIND = "steer-eval"


def evaluate(
    cfg: SteerEvalConfig,
    vectors: str | Path | None = None,
    prompts: str | Path | None = None,
    out: str | Path | None = None,
    *,
    model: str | None = None,
    lm: Any = None,
    device: str = "cpu",
    dtype: str | None = None,
    placement: Placement | None = None,
    cache: bool = True,
    progress: Progress | None = None,
    engine: str = "hf",
    make_generator: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the grid and write steer_eval.{json,md} and the figures into the vectors run (or `out`).

    Every input is checked before the model loads; nothing is written on bad input. `lm`: an already
    loaded model (its hidden size must fit the vectors); else `model` or the run's own model.
    Under torchrun (`steerkit.dist.init()`) the ranks share the grid's chunks; rank 0 alone writes and
    returns the report, the other ranks return `(target, {})`.
    engine / make_generator: another generation engine (`--engine vllm`): make_generator(lm, run, cv) ->
    (generate, close), generate as run_grid takes it; the NLL and the re-reading stay on `lm`.
    """
    import os
    import shutil

    from ...io import sha256_file
    from ...models.zoo import cache_root
    from ...runs import finish_run, prepare_out
    from ...vectors.readout import ConceptVectors
    from .report import analyze, write_report

    run = resolve_vectors(vectors)
    cv = ConceptVectors.load(run)
    concepts = resolve_concepts(cfg.concepts, cv)
    layers = resolve_layers(cfg.layers, cv)
    readout_layer = (
        cv.check_layer(cfg.readout_layer) if cfg.readout_layer is not None else best_readout_layer(run, cv.layers)
    )
    texts = read_prompts(prompts)
    target = Path(out) if out is not None else run
    own_folder = target.resolve() != run.resolve()
    if own_folder:
        prepare_out(target, KIND, create=False)
    if lm is None:
        from ...models import load

        where = placement.load_kwargs() if placement is not None else {"device": device, "dtype": dtype}
        lm = load(model or cv.meta.get("model", {}).get("spec"), **where)
        same_dtype = str(where.get("dtype") or "float32") in ("float32", "torch.float32")
        check_model(cv, lm, explicit=model is not None, same_dtype=same_dtype)
    else:
        check_model(cv, lm, explicit=model is not None)
    fp = str(lm.info.get("fingerprint", "model"))
    rows = RowCache(cache_root() / "steer_eval" / fp[:16] if cache else None)
    generate, close = make_generator(lm, run, cv) if make_generator is not None else (None, None)
    try:
        grid = run_grid(lm, cv, cfg, texts, concepts, layers, readout_layer, rows, progress, distributed=True,
                        generate=generate, engine=engine)  # fmt: skip
    finally:
        if close is not None:
            close()
    if not grid.complete:  # a rank other than 0 under torchrun: rank 0 writes the report
        return target, {}
    rep = analyze(grid, cfg, cv, concepts, layers)
    rep["source"] = {
        "vectors": str(run),
        "model": lm.info.get("spec"),
        "fingerprint": fp,
        "readout_layer": readout_layer,
        "reader": reader(cv, readout_layer),
        "probe_kind": cv.probes[readout_layer].kind if readout_layer in cv.probes else None,
        "pooling": cv.meta.get("pooling"),
        "readout_sha256": sha256_file(run / "readout.safetensors"),
        "corpus_sha256": cv.meta.get("corpus", {}).get("sha256"),
        "prompts": str(prompts) if prompts is not None else str(default_prompts_path()),
        "n_prompts": len(texts),
        "engine": engine,
    }
    groups = concept_groups(cv, concepts)
    if not own_folder or target.exists():
        write_report(target, rep, groups)
        if own_folder:
            finish_run(target, KIND, vectors=str(run))
        return target, rep
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_report(tmp, rep, groups)
        finish_run(tmp, KIND, vectors=str(run))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, rep
