"""Sampled generations of one arm, and replaying another arm's tokens (for the top-k overlap).

Sampling is exact and seed-per-row: a LogitsProcessor records U and the top-k of each row's
distribution, then adds Gumbel noise from that row's own generator to logits / T, so greedy
decoding draws from softmax(logits / T) (measures.gumbel_noise). Row r depends only on its seed,
never on the global RNG (which von Mises forcing consumes) nor on the other rows.

Samplers (an apparatus check, `choose_sampler`, picks the first that reproduces full recomputation):
- batched:   all prompts x seeds in one generate() call, prompts left-padded; PhaseHook.mask follows
             the attention mask so the phases never move on padding;
- generate:  one generate() call per prompt (no padding): for recurrent families and models whose
             positions shift under left padding;
- recompute: a full forward per token, no cache: always right, slowest (e.g. RWKV's cached generation
             in transformers 5 disagrees with its full forward).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ...generation import (
    SAMPLERS,
    Sampler,
    gen_config,
    generate_batch,
    generate_recompute,
    left_pad,
    pad_id,
    pick_sampler,
    rows_by_prompt,
)
from .. import measures as M
from ..batch import Prepared
from .apparatus import Setup, arm
from .config import InterveneConfig

log = logging.getLogger(__name__)
__all__ = ["SAMPLERS", "choose_sampler", "generate_rows", "overlap"]


def generate_rows(
    setup: Setup,
    hook: Any,
    prompts: list[Prepared],
    seeds: list[list[int]],
    cfg: InterveneConfig,
    replay: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Generations for every prompt i and seed in seeds[i], rows in that order, inside an
    `arm(..., carry_state=setup.carry_state)` whose hook is `hook`.

    Returns tokens (rows, G) (pad after EOS), length, gen_entropy, distinct (rows,) and top (rows, G, k)
    (-1 after the last step). replay (rows, G): force these tokens (the other arm's) instead of sampling.
    """
    lm, g = setup.lm, cfg.max_new_tokens
    gc = gen_config(lm, g)
    flat = [s for ss in seeds for s in ss]
    owners = [i for i, ss in enumerate(seeds) for _ in ss]
    tokens = torch.full((len(flat), g), gc.pad_token_id, dtype=torch.long)
    top = torch.full((len(flat), g, min(cfg.top_k, _vocab(lm))), -1, dtype=torch.long)
    u = torch.zeros((len(flat), g), dtype=torch.float64)
    groups = [list(range(len(flat)))] if setup.sampler == "batched" else rows_by_prompt(owners)
    for rows in groups:
        hook.reset()  # independent sequences: no phases carried over from an earlier call
        sampler = Sampler([flat[r] for r in rows], cfg.temperature, cfg.top_k, None if replay is None else replay[rows])
        plist = [prompts[owners[r]].prompt_ids for r in rows]
        if setup.sampler == "recompute":
            new = generate_recompute(lm, torch.tensor(plist, device=lm.input_device), sampler, gc)
        else:
            share = len(seeds[0]) if setup.sampler == "batched" and len({len(x) for x in seeds}) == 1 else 1
            ids, mask = left_pad(plist[::share], pad_id(lm))
            new = generate_batch(lm, ids.to(lm.input_device), mask.to(lm.input_device), sampler, gc, hook, share)
        steps = new.shape[1]
        tokens[rows, :steps] = new
        u[rows, :steps] = torch.stack(sampler.u, 1)[:, :steps]
        top[rows, :steps] = torch.stack(sampler.top, 1)[:, :steps]
    lengths, gen_u, distinct = [], [], []
    for r in range(len(flat)):
        new_r = tokens[r].tolist()
        n = M.generated_length(new_r, gc.eos_token_id)
        lengths.append(n)
        gen_u.append(float(u[r, : M.sampling_steps(n, g)].mean()))
        distinct.append(M.distinct_n(new_r[:n], cfg.distinct_n))
    return {"tokens": tokens, "top": top, "length": np.array(lengths, float), "gen_entropy": np.array(gen_u),
            "distinct": np.array(distinct)}  # fmt: skip


def _vocab(lm: Any) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


def overlap(free_top: torch.Tensor, forced_top: torch.Tensor, lengths: np.ndarray, max_new: int) -> np.ndarray:
    """Per row, the mean over its sampling steps of |topk(free) ∩ topk(forced)| / k: (rows,)."""
    hit = (free_top.unsqueeze(-1) == forced_top.unsqueeze(-2)).any(-1).double().mean(-1)  # (rows, G)
    return np.array([float(hit[r, : M.sampling_steps(int(n), max_new)].mean()) for r, n in enumerate(lengths)])


def choose_sampler(setup: Setup, prompts: list[Prepared], cfg: InterveneConfig) -> str:
    """Apparatus check: the first sampler in SAMPLERS that samples exactly what full recomputation does
    (same tokens, U within 1e-4) on up to two prompts, three seeds, six tokens, in the free arm."""
    ps = sorted(prompts[:8], key=lambda p: len(p.prompt_ids))
    ps = [ps[0], ps[-1]] if len(ps) > 1 else ps  # two prompt lengths, so that left padding is exercised
    small = InterveneConfig(levels=cfg.levels, max_new_tokens=min(6, cfg.max_new_tokens), temperature=cfg.temperature)
    seeds = [[1, 2, 3] for _ in ps]

    def run(name: str) -> dict[str, Any]:
        s = Setup(setup.lm, setup.core, setup.coupling, setup.layer, name)
        with arm(s, setup.coupling, None, cfg.method, detached=False, carry_state=s.carry_state) as hook:
            return generate_rows(s, hook, ps, seeds, small)

    return pick_sampler(run, _same, bool(setup.lm.adapter.recurrent), str(setup.lm.info.get("spec", "model")))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return torch.equal(a["tokens"], b["tokens"]) and bool(np.allclose(a["gen_entropy"], b["gen_entropy"], atol=1e-4))
