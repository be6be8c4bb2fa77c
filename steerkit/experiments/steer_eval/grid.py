"""steer-eval's grid: the arms (baseline, concepts and random draws at each layer and alpha), the
row cache, and the loop that generates, scores and caches every row in chunks of whole arms (one
left-padded generate(), one NLL pass and one capture call per chunk).

Rows are cached by (model fingerprint, readout, layer, how the delta is added (relative or not),
direction hash, prompt, seed, decoding, max_new_tokens), so an interrupted run resumes where it
stopped and a rerun with a larger grid computes only the new rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import dist
from ...errors import ExperimentError
from ...io import atomic_write_bytes
from ..prompts import arm_seed
from .analysis import Arm
from .config import SteerEvalConfig
from .generate import (
    GenSpec,
    RowSteer,
    choose_steer_sampler,
    continuation_nll,
    degeneration,
    generate_chunk,
    reread,
    trim,
)

log = logging.getLogger(__name__)
RANDOM_TAG = 7  # arm_seed(seed, layer, RANDOM_TAG, k) seeds random draw k at a layer
Progress = Callable[[int, int], None]
ChunkGenerator = Callable[[list[list[int]], list[int], list[int], int, torch.Tensor, GenSpec], torch.Tensor]


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class ArmSpec:
    """One arm: the unsteered baseline (layer -1), a concept or a random draw at (layer, alpha)."""

    kind: str  # "base" | "concept" | "random"
    name: str  # concept name, "random:<k>" or "base"
    layer: int
    alpha: float
    delta: torch.Tensor  # (hidden,) what is added (absolute) or alpha x unit (relative)
    rows: list[int] = field(default_factory=list)


def random_directions(cv: Any, concepts: list[str], layer: int, draws: int, seed: int, scale: str) -> torch.Tensor:
    """(draws, hidden) random directions at `layer`: standard normal, normalised, times the median norm
    of the evaluated concepts' raw vectors there (absolute), the equal scale's unit (`equal_norm`, the
    norm every concept is steered with: the control is then exactly as strong as each concept), or 1
    (relative). Draw k depends only on (seed, layer, k)."""
    from ...steering import equal_norm

    if scale == "absolute":
        norm = float(np.median([float(cv.norms[layer][cv.index(c)]) for c in concepts]))
    elif scale == "equal":
        norm = equal_norm(cv, layer)
    else:
        norm = 1.0
    out = []
    for k in range(draws):
        g = torch.Generator().manual_seed(arm_seed(seed, layer, RANDOM_TAG, k))
        v = torch.randn(cv.hidden_size, generator=g)
        out.append(v / v.norm() * norm)
    return torch.stack(out)


def plan_arms(cfg: SteerEvalConfig, cv: Any, concepts: list[str], layers: list[int]) -> list[ArmSpec]:
    """The baseline, then per layer and alpha every concept and every random draw."""
    from ...steering import steering_direction

    arms = [ArmSpec("base", "base", -1, 0.0, torch.zeros(cv.hidden_size))]
    for layer in layers:
        rand = random_directions(cv, concepts, layer, cfg.random_draws, cfg.seed, cfg.scale)
        for a in cfg.nonzero_alphas:
            for c in concepts:
                arms.append(ArmSpec("concept", c, layer, a, steering_direction(cv, {c: a}, layer, cfg.scale)))  # type: ignore[arg-type]
            for k in range(cfg.random_draws):
                arms.append(ArmSpec("random", f"random:{k}", layer, a, a * rand[k]))
    return arms


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def readout_key(cv: Any, layer: int) -> str:
    """Everything the re-reading's scores depend on: the concepts, pooling, and the probe's tensors when
    the run has one at `layer` (it judges then), else the vectors and centre."""
    probe = cv.probes.get(layer)
    if probe is not None:
        parts = [probe.weight, probe.bias, probe.mean, probe.scale]
        return _sha("probe", cv.concepts, layer, cv.meta.get("pooling"), *(t.float().numpy().tobytes() for t in parts))
    c = cv.centers.get(layer)
    return _sha(cv.concepts, layer, cv.meta.get("pooling"), cv.vectors[layer].float().numpy().tobytes(),
                b"" if c is None else c.float().numpy().tobytes())  # fmt: skip


class RowCache:
    """Finished rows on disk: one JSON file per computed chunk {row key: row}, written atomically.
    Folder None: nothing is cached."""

    def __init__(self, folder: Path | None) -> None:
        self.folder, self.rows = folder, {}
        if folder is not None and folder.is_dir():
            for f in sorted(folder.glob("*.json")):
                try:
                    self.rows.update(json.loads(f.read_text()))
                except (OSError, ValueError):
                    log.warning("steer-eval cache: ignoring unreadable %s", f)

    def put(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows.update(rows)
        if self.folder is not None and rows:
            atomic_write_bytes(self.folder / f"{_sha(sorted(rows))[:24]}.json", json.dumps(rows).encode())


# ---- running -------------------------------------------------------------------------------------
@dataclass
class Grid:
    """Everything computed: arms, per-row results, units, and how it went."""

    arms: list[ArmSpec]
    units: list[tuple[int, int]]  # (prompt index, seed index)
    results: list[dict[str, Any]]  # per row: tokens, nll, scores, text
    sampler: str
    stats: dict[str, Any]
    complete: bool = True  # False on the ranks other than 0 of a distributed run (their rows went to rank 0)


def run_grid(
    lm: Any,
    cv: Any,
    cfg: SteerEvalConfig,
    prompts: list[str],
    concepts: list[str],
    layers: list[int],
    readout_layer: int,
    cache: RowCache,
    progress: Progress | None = None,
    distributed: bool = False,
    generate: ChunkGenerator | None = None,
    engine: str = "hf",
) -> Grid:
    """Generate, score and cache every row of the grid (rows arm-major, units in order within an arm).

    distributed: in a torch.distributed run, the chunks (whole arms, as one process would run them)
    are shared out among the ranks balanced by rows; each rank caches its rows and sends them to rank
    0, whose Grid is complete (the others return `complete=False`). Every row's seed depends on the row
    alone, so the rows equal a single process's.

    generate: another engine's generation of a chunk (e.g. vLLM's, `steer-eval --engine vllm`), called as
    generate(prompt_ids, owners, seeds, layer, delta (rows, hidden), spec) -> tokens (rows, max_new) (pad
    after EOS); `engine` names it in the row cache's keys (its sampled rows differ from the HF path's)."""
    t0 = time.perf_counter()
    tok = lm.tokenizer
    pids = [list(tok(p)["input_ids"]) for p in prompts]
    for text, ids in zip(prompts, pids, strict=True):
        if not ids:
            raise ExperimentError(f"prompt {text!r} tokenises to nothing")
    units = [(p, s) for p in range(len(prompts)) for s in range(cfg.n_seeds)]
    seeds = [arm_seed(cfg.seed, p, 0, s) for p, s in units]
    arms = plan_arms(cfg, cv, concepts, layers)
    fp, rk = lm.info.get("fingerprint"), readout_key(cv, readout_layer)
    decoding = ("greedy" if cfg.greedy else f"sample@{cfg.temperature}") + ("" if engine == "hf" else f"@{engine}")
    keys: list[str] = []
    applied = "relative" if cfg.scale == "relative" else "absolute"  # how a delta is added: equal's add as built
    for arm in arms:
        dsha = _sha(arm.delta.float().numpy().tobytes())
        layer = arm.layer if bool(arm.delta.any()) else -1  # a zero direction is the baseline wherever it is
        for u, (p, _) in enumerate(units):
            arm.rows.append(len(keys))
            keys.append(_sha(fp, rk, layer, applied, dsha, prompts[p], seeds[u], decoding, cfg.max_new_tokens))
    results: list[dict[str, Any] | None] = [cache.rows.get(k) for k in keys]
    sharded = distributed and dist.active()
    if sharded:  # every rank plans the same work: the rows missing on any rank's cache
        missing = set().union(*dist.all_gather([r for r, v in enumerate(results) if v is None]))
        results = [None if r in missing else v for r, v in enumerate(results)]
        progress = progress if dist.is_main() else None
    n_cached = sum(r is not None for r in results)
    if progress:
        progress(n_cached, len(keys))
    sampler = "cached"
    todo = [a for a in arms if any(results[r] is None for r in a.rows)]
    if todo and generate is not None:
        sampler = engine
    elif todo:
        probe = next((a for a in arms if a.kind == "concept"), arms[0])
        d = torch.stack([torch.zeros(cv.hidden_size), probe.delta])
        sampler = choose_steer_sampler(lm, pids, max(probe.layer, 0), d, cfg.scale)
    spec = GenSpec(cfg.max_new_tokens, cfg.temperature, cfg.greedy)
    chunks = _chunks(todo, results, cfg.batch_rows)
    sizes = [sum(results[r] is None for a in c for r in a.rows) for c in chunks]
    to_job = dist.scaled_progress(n_cached, sum(sizes), len(keys) - n_cached)
    if sharded:
        mine = dist.shard(sizes)
        chunks = [chunks[i] for i in mine]
        to_job = dist.scaled_progress(n_cached, sum(sizes[i] for i in mine), len(keys) - n_cached)
    computed: dict[str, dict[str, Any]] = {}
    done_here = 0
    for chunk in chunks:
        rows = [r for a in chunk for r in a.rows if results[r] is None]
        owners = [units[r % len(units)][0] for r in rows]
        delta = torch.stack([a.delta for a in chunk for r in a.rows if results[r] is None])  # (rows, hidden)
        layer = chunk[0].layer
        with torch.no_grad():
            if generate is not None:
                toks = generate(pids, owners, [seeds[r % len(units)] for r in rows], layer, delta, spec)
            elif layer >= 0:
                with RowSteer.add(lm, layer, delta, cfg.scale).attached() as hook:
                    toks = generate_chunk(lm, sampler, pids, owners, [seeds[r % len(units)] for r in rows], hook, spec)
            else:
                toks = generate_chunk(lm, sampler, pids, owners, [seeds[r % len(units)] for r in rows], None, spec)
        conts = trim(toks, tok.eos_token_id)
        nll = continuation_nll(lm, [pids[o] for o in owners], conts)
        texts = [tok.decode(c, skip_special_tokens=True) for c in conts]
        scores = reread(lm, cv, readout_layer, texts)
        new = {}
        for i, r in enumerate(rows):
            results[r] = new[keys[r]] = {
                "tokens": conts[i], "text": texts[i], "nll": None if math.isnan(nll[i]) else float(nll[i]),
                "scores": [float(x) for x in scores[i]],
            }  # fmt: skip
        cache.put(new)
        computed.update(new)
        done_here += len(rows)
        if progress:
            progress(to_job(done_here), len(keys))
    seconds = time.perf_counter() - t0
    stats = {"rows": len(keys), "cached": n_cached, "computed": len(keys) - n_cached, "seconds": round(seconds, 2)}
    if sharded:
        parts = dist.gather(computed)
        if parts is None:
            return Grid(arms, units, results, sampler, stats, complete=False)  # type: ignore[arg-type]
        where: dict[str, list[int]] = {}
        for r, k in enumerate(keys):
            where.setdefault(k, []).append(r)
        for part in parts:
            for k, row in part.items():
                for r in where[k]:
                    results[r] = row
        stats["seconds"] = round(time.perf_counter() - t0, 2)
    return Grid(arms, units, results, sampler, stats)  # type: ignore[arg-type]


def _chunks(arms: list[ArmSpec], results: list[Any], batch_rows: int) -> list[list[ArmSpec]]:
    """Whole arms of one layer per chunk, at most batch_rows rows to compute (a larger arm goes alone)."""
    out: list[list[ArmSpec]] = []
    cur: list[ArmSpec] = []
    size = 0
    for a in arms:
        n = sum(results[r] is None for r in a.rows)
        if cur and (a.layer != cur[0].layer or size + n > batch_rows):
            out.append(cur)
            cur, size = [], 0
        cur.append(a)
        size += n
    if cur:
        out.append(cur)
    return out


def arm_data(grid: Grid, arm: ArmSpec) -> Arm:
    res = [grid.results[r] for r in arm.rows]
    deg = np.array([degeneration(r["tokens"]) for r in res])  # (n, 2)
    return Arm(
        scores=np.array([r["scores"] for r in res], dtype=np.float64),
        nll=np.array([math.nan if r["nll"] is None else r["nll"] for r in res]),
        distinct2=deg[:, 0],
        rep3=deg[:, 1],
    )
