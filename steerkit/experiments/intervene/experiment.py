"""The three paired experiments (real, negative control, positive control) over prompts and R levels."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ... import dist
from ...errors import ExperimentError
from ...generation import pad_id
from .. import measures as M
from ..batch import Prepared, tf_batch
from ..prompts import Prompt, arm_seed
from .apparatus import (
    ExperimentData,
    Progress,
    Setup,
    arm,
    forward_capture,
    planted_coupling,
    prepare_prompts,
)
from .config import EXPERIMENTS, InterveneConfig
from .sampling import choose_sampler, generate_rows, overlap
from .washout import mean_profiles, site_profile

log = logging.getLogger(__name__)
GEN_MEASURES = ("distinct", "length", "gen_entropy")
CHUNK_TAG = 1_000_003  # arm_seed(seed, chunk start, CHUNK_TAG, experiment) re-seeds the RNG of each prompt chunk


@dataclass
class Probe:
    """Concept vectors read at one layer: unit rows (C, hidden) and centre (hidden,) or None."""

    layer: int
    concepts: list[str]
    vectors: torch.Tensor
    center: torch.Tensor | None

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., C)."""
        h = h.float()
        if self.center is not None:
            h = h - self.center
        return h @ self.vectors.t()


@dataclass
class HeldoutPairs:
    """A preference run's held-out pairs for the pref_margin measure: tokens, which pairs, and whether
    a completion is scored by its summed (DPO) or mean (ORPO) token log-prob."""

    tokens: Any  # training.pairs.TokenizedPairs
    indices: list[int]
    mean: bool = False
    batch_size: int = 8


def load_heldout_pairs(train_cfg: Any, tokenizer: Any) -> HeldoutPairs | None:
    """The held-out pairs of a DPO / ORPO run (None for other runs), split as training split them."""
    if getattr(train_cfg, "objective", "ce") == "ce" or not getattr(train_cfg, "pairs", None):
        return None
    from ...training.preference import run_pairs

    tp, _, val = run_pairs(train_cfg, tokenizer)
    return HeldoutPairs(tp, val, mean=train_cfg.objective == "orpo", batch_size=max(1, int(train_cfg.batch_size)))


@dataclass
class Results:
    prompts: list[Prepared]
    config: InterveneConfig
    layer: int
    experiments: dict[str, ExperimentData] = field(default_factory=dict)
    probe: Probe | None = None
    sampler: str = "generate"
    seconds: float = 0.0
    complete: bool = True  # False on the ranks other than 0 of a distributed run (their prompts went to rank 0)


def make_probe(readout: Any, layer: int, hidden: int, cfg: InterveneConfig) -> Probe:
    """Pick the readout layer (cfg.readout_layer, else the first at or after the coupled block)."""
    if readout.hidden_size != hidden:
        raise ExperimentError(f"the readout has hidden size {readout.hidden_size}, the model {hidden}: wrong --readout")
    if cfg.readout_layer is not None:
        at = readout.check_layer(cfg.readout_layer)
    else:
        later = [la for la in readout.layers if la >= layer]
        if not later:
            raise ExperimentError(
                f"the readout has layers {readout.layers}, none at or after the coupled block {layer}: the coupling "
                f"cannot change them; extract vectors at a later layer (e.g. `steerkit extract --layers {layer}`)"
            )
        at = min(later)
    names = list(cfg.concepts) or list(readout.concepts)
    idx = [readout.index(c) for c in names]
    center = readout.centers.get(at)
    return Probe(at, names, readout.vectors[at][idx].float(), None if center is None else center.float())


def run_intervention(
    setup: Setup,
    prompts: list[Prompt],
    cfg: InterveneConfig,
    readout: Any = None,
    progress: Progress | None = None,
    experiments: tuple[str, ...] = EXPERIMENTS,
    pairs: HeldoutPairs | None = None,
    distributed: bool = False,
) -> Results:
    """Run the experiments; the core's modes and the global RNG state are restored afterwards.
    pairs: a preference run's held-out pairs, which add the pref_margin measure.
    distributed: in a torch.distributed run the prompt chunks (cfg.batch_prompts prompts, every arm and
    seed of them) are shared out among the ranks; rank 0 gathers them and returns complete Results, the
    others return `complete=False`. Each chunk re-seeds the RNG from (seed, chunk, experiment), so the
    numbers do not depend on which rank ran it."""
    t0 = time.perf_counter()
    if not prompts:
        raise ExperimentError("no prompts; pass a non-empty --prompts file")
    lm = setup.lm
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    probe = make_probe(readout, setup.layer, hidden, cfg) if readout is not None else None
    was_training = setup.core.training
    setup.core.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            prepared = prepare_prompts(lm, prompts, cfg.continuation_tokens)
            setup = dataclasses.replace(setup, sampler=choose_sampler(setup, prepared, cfg))
            res = Results(prepared, cfg, setup.layer, probe=probe, sampler=setup.sampler)
            total, done = len(experiments) * len(prepared), 0.0
            sharded = distributed and dist.active()
            progress = progress if dist.is_main() else None

            def tick(k: float) -> None:
                nonlocal done
                done += k
                if progress:
                    progress(min(total, round(done)), total)

            for name in experiments:
                if name not in EXPERIMENTS:
                    raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {name!r}")
                res.experiments[name] = run_experiment(setup, prepared, cfg, name, probe, tick, pairs, sharded)
            res.complete = dist.is_main() or not sharded
    finally:
        setup.core.train(was_training)
    res.seconds = time.perf_counter() - t0
    return res


def run_experiment(
    setup: Setup,
    prompts: list[Prepared],
    cfg: InterveneConfig,
    name: str,
    probe: Probe | None = None,
    tick: Any = None,
    pairs: HeldoutPairs | None = None,
    sharded: bool = False,
) -> ExperimentData:
    """One experiment: per prompt, the free arm and one forced arm per level, teacher-forced and
    sampled; prompts go through the model cfg.batch_prompts at a time, each chunk with the RNG seeded
    from (cfg.seed, chunk, experiment). sharded: this rank runs its share of the chunks and sends them
    to rank 0 (see run_intervention); the other ranks return their partial data."""
    coupling = planted_coupling(setup, cfg.positive_alpha) if name == "positive" else setup.coupling
    n, n_levels, s = len(prompts), len(cfg.levels), cfg.seeds
    a, model = setup.lm.adapter, setup.lm.model
    sites = list(range(setup.layer, a.n_blocks(model)))
    wkeys = [f"block_{k}" for k in sites] + ["final_norm", "logits"]  # washout sites, in order
    probe_names = [M.PROBE_PREFIX + c for c in probe.concepts] if probe else []
    data = ExperimentData(name, np.zeros(n))
    for m in ("kl", "topk", "entropy", "nll", *GEN_MEASURES, *probe_names):
        data.diffs[m] = np.zeros((n, n_levels))
        data.arms[m] = np.zeros((n, 1 + n_levels))
    for m in GEN_MEASURES:
        data.per_seed[m] = np.zeros((n, 1 + n_levels, s))
    profiles: list[dict[int, dict[str, dict[str, float]]]] = [{} for _ in cfg.levels]  # per level: prompt -> profile
    kw: dict[str, Any] = {"method": cfg.method, "detached": name == "negative"}
    starts = list(range(0, n, cfg.batch_prompts))
    mine = dist.shard([min(n, s0 + cfg.batch_prompts) - s0 for s0 in starts]) if sharded else range(len(starts))
    share = n / max(1, sum(min(n, starts[j] + cfg.batch_prompts) - starts[j] for j in mine))  # progress: whole job
    exp_index = EXPERIMENTS.index(name) if name in EXPERIMENTS else len(EXPERIMENTS)
    for start in [starts[j] for j in mine]:
        torch.manual_seed(arm_seed(cfg.seed, start, CHUNK_TAG, exp_index))
        chunk = list(range(start, min(n, start + cfg.batch_prompts)))
        batch = [prompts[i] for i in chunk]
        # ---- teacher-forced: one forward per arm for the whole chunk ----
        ids, mask = tf_batch(batch, pad_id(setup.lm))
        with arm(setup, coupling, None, **kw) as hook:
            free = forward_capture(setup, hook, ids, mask, sites, probe.layer if probe else None)
            r_free = hook.last.r.float().cpu()  # (b, T)
        free_vals = []
        for b, (i, pp) in enumerate(zip(chunk, batch, strict=True)):
            pred = _pred(pp)
            data.r_free[i] = float(r_free[b, pred].mean())
            free_vals.append(_tf_values(free, b, pp, probe))
            for m, v in free_vals[-1].items():
                data.arms[m][i, 0] = v
        for k, r in enumerate(cfg.levels):
            with arm(setup, coupling, r, **kw) as hook:
                forced = forward_capture(setup, hook, ids, mask, sites, probe.layer if probe else None)
            for b, (i, pp) in enumerate(zip(chunk, batch, strict=True)):
                pred, t = _pred(pp), pp.n_tokens
                logp = torch.log_softmax(forced["logits"][b, pred].double(), -1)
                logp_free = torch.log_softmax(free["logits"][b, pred].double(), -1)
                kl = float(M.kl_per_position(logp, logp_free).mean())
                data.diffs["kl"][i, k] = data.arms["kl"][i, k + 1] = kl if kl >= cfg.kl_floor else 0.0
                for m, v in _tf_values(forced, b, pp, probe).items():
                    data.arms[m][i, k + 1] = v
                    data.diffs[m][i, k] = v - free_vals[b][m]
                profiles[k][i] = site_profile({q: free[q][b, :t] for q in wkeys}, {q: forced[q][b, :t] for q in wkeys})
        del free, forced
        # ---- sampled generations: each arm with its own seeds; forced arms also replay the free tokens ----
        seeds = [[[arm_seed(cfg.seed, i, col, j) for j in range(s)] for i in chunk] for col in range(1 + n_levels)]
        with arm(setup, coupling, None, carry_state=setup.carry_state, **kw) as hook:
            gens = [generate_rows(setup, hook, batch, seeds[0], cfg)]
        for k, r in enumerate(cfg.levels):
            with arm(setup, coupling, r, carry_state=setup.carry_state, **kw) as hook:
                gens.append(generate_rows(setup, hook, batch, seeds[k + 1], cfg))
                replay = generate_rows(setup, hook, batch, seeds[0], cfg, replay=gens[0]["tokens"])
            ov = overlap(gens[0]["top"], replay["top"], gens[0]["length"], cfg.max_new_tokens).reshape(len(chunk), s)
            for b, i in enumerate(chunk):
                data.diffs["topk"][i, k] = data.arms["topk"][i, k + 1] = 1.0 - float(ov[b].mean())
        for m in GEN_MEASURES:
            for col, g in enumerate(gens):
                per = g[m].reshape(len(chunk), s)  # rows are prompt-major
                data.per_seed[m][chunk, col] = per
                data.arms[m][chunk, col] = per.mean(1)
            data.diffs[m][chunk] = data.arms[m][chunk, 1:] - data.arms[m][chunk, :1]
        if start == 0:
            tok = setup.lm.tokenizer
            data.examples = [tok.decode(g["tokens"][0, : int(g["length"][0])].tolist()) for g in gens]
        if tick:
            tick(len(chunk) * share)
    if sharded:
        merged = _gather_rows(
            data, profiles, [i for j in mine for i in range(starts[j], min(n, starts[j] + cfg.batch_prompts))]
        )
        if merged is None:
            return data  # not rank 0: its prompts are with rank 0
    data.washout = [mean_profiles([pr[i] for i in sorted(pr)]) for pr in profiles]
    if pairs is not None and pairs.indices:
        torch.manual_seed(arm_seed(cfg.seed, n, CHUNK_TAG, exp_index))  # after every chunk start
        arms = [pair_margins(setup, coupling, r, pairs, **kw) for r in (None, *cfg.levels)]  # each (n_pairs,)
        data.arms[M.PREF_MARGIN] = np.stack(arms, 1)  # (n_pairs, 1 + L)
        data.diffs[M.PREF_MARGIN] = data.arms[M.PREF_MARGIN][:, 1:] - data.arms[M.PREF_MARGIN][:, :1]
    return data


def _gather_rows(
    data: ExperimentData, profiles: list[dict[int, dict[str, dict[str, float]]]], rows: list[int]
) -> ExperimentData | None:
    """Send this rank's prompts (rows of every array, their washout profiles, the examples when it ran
    prompt 0) to rank 0, which writes them into its own `data` and `profiles`; None on other ranks."""
    part = {
        "rows": rows,
        "r_free": data.r_free[rows],
        "diffs": {m: v[rows] for m, v in data.diffs.items()},
        "arms": {m: v[rows] for m, v in data.arms.items()},
        "per_seed": {m: v[rows] for m, v in data.per_seed.items()},
        "profiles": [{i: pr[i] for i in rows} for pr in profiles],
        "examples": data.examples,
    }
    parts = dist.gather(part)
    if parts is None:
        return None
    for p in parts:
        r = p["rows"]
        data.r_free[r] = p["r_free"]
        for field_name in ("diffs", "arms", "per_seed"):
            for m, v in p[field_name].items():
                getattr(data, field_name)[m][r] = v
        for k, pr in enumerate(p["profiles"]):
            profiles[k].update(pr)
        if 0 in r:
            data.examples = p["examples"]
    return data


def pair_margins(
    setup: Setup, coupling: Any, level: float | None, pairs: HeldoutPairs, method: str, detached: bool
) -> np.ndarray:
    """Teacher-forced preference margin of every held-out pair in one arm: (n_pairs,)."""
    from ...training.objectives import completion_logps
    from ...training.pairs import pair_batch

    dev = setup.lm.input_device
    out: list[np.ndarray] = []
    with arm(setup, coupling, level, method, detached=detached) as hook, torch.no_grad():
        for i in range(0, len(pairs.indices), pairs.batch_size):
            idx = pairs.indices[i : i + pairs.batch_size]
            ids, att, cm = (x.to(dev) for x in pair_batch(pairs.tokens, idx, pad_id(setup.lm)))  # (2b, T)
            hook.mask = att
            logits = setup.lm.model(ids, attention_mask=att, use_cache=False).logits
            hook.mask = None
            sums, means = completion_logps(logits, ids, cm)  # (2b,)
            lp = means if pairs.mean else sums
            out.append(M.preference_margin(lp[: len(idx)], lp[len(idx) :]).cpu().numpy())
    return np.concatenate(out)


def _pred(pp: Prepared) -> slice:
    """Positions whose next-token distributions predict the continuation tokens."""
    p = len(pp.prompt_ids)
    return slice(p - 1, p + len(pp.cont_ids) - 1)


def _tf_values(cap: dict[str, Any], b: int, pp: Prepared, probe: Probe | None) -> dict[str, float]:
    """Arm-level teacher-forced values of row b: mean U, mean NLL, mean probe scores over the
    positions that predict the continuation."""
    pred = _pred(pp)
    logits = cap["logits"][b, pred]  # (C, V)
    targets = torch.tensor(pp.cont_ids)
    out = {
        "entropy": float(M.entropy_per_position(logits).mean()),
        "nll": float(M.nll_per_position(torch.log_softmax(logits.double(), -1), targets).mean()),
    }
    if probe is not None:
        sc = probe.scores(cap[f"block_{probe.layer}"][b, pred]).mean(0)  # (C,)
        out.update({M.PROBE_PREFIX + c: float(v) for c, v in zip(probe.concepts, sc.tolist(), strict=True)})
    return out
