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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import measures as M
from .design import InterveneConfig
from .runner import Prepared, Setup, arm, gen_config, pad_id

log = logging.getLogger(__name__)
SAMPLERS = ("batched", "generate", "recompute")


class Sampler:
    """A transformers LogitsProcessor. replay (rows, G): force these tokens instead of sampling."""

    def __init__(self, seeds: list[int], temperature: float, k: int, replay: torch.Tensor | None = None) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.k, self.replay = temperature, k, replay
        self.u: list[torch.Tensor] = []  # per step (rows,)
        self.top: list[torch.Tensor] = []  # per step (rows, k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = len(self.u)
        self.u.append(M.entropy_per_position(scores).cpu())
        self.top.append(scores.topk(min(self.k, scores.shape[-1]), dim=-1).indices.cpu())
        if self.replay is not None:
            out = torch.full_like(scores, -torch.inf)
            out.scatter_(1, self.replay[:, t : t + 1].to(scores.device), 0.0)
            return out
        noise = M.gumbel_noise(scores.shape[-1], self.gens).to(scores.device)  # (rows, V)
        return (scores.float() / self.temperature + noise).to(scores.dtype)


def _cache_kwarg() -> str:
    """generate()'s name for a prefilled KV cache: `cache` from transformers 5.24 on (where
    `past_key_values` warns that it goes in 6.0), `past_key_values` before."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


_CACHE_KWARG = _cache_kwarg()


def generate_batch(
    lm: Any, ids: torch.Tensor, mask: torch.Tensor, sampler: Any, gc: Any, hook: Any, share: int = 1
) -> torch.Tensor:
    """generate() on a left-padded batch of distinct prompts (b, P), each drawn `share` times (rows
    prompt-major). A pre-hook hands each call's mask to the PhaseHook (hook None: no phase core, e.g.
    steer-eval). With share > 1 the prompts but their last token are run once and the cache and the
    phases copied `share` times."""
    from transformers import LogitsProcessorList

    def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        am, x = kwargs.get("attention_mask"), kwargs.get("input_ids", args[0] if args else None)
        hook.mask = None if am is None or x is None else am[:, -x.shape[1] :]

    kw: dict[str, Any] = {}
    handle = lm.model.register_forward_pre_hook(pre, with_kwargs=True) if hook is not None else None
    try:
        with torch.no_grad():
            if share > 1 and ids.shape[1] > 1:
                pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() makes them
                out = lm.model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
                cache = out.past_key_values
                cache.batch_repeat_interleave(share)
                hook.repeat_state(share)
                kw[_CACHE_KWARG] = cache
            ids, mask = ids.repeat_interleave(share, 0), mask.repeat_interleave(share, 0)
            out = lm.model.generate(
                ids, attention_mask=mask, generation_config=gc, logits_processor=LogitsProcessorList([sampler]), **kw
            )
    finally:
        if handle is not None:
            handle.remove()
            hook.mask = None
    return out[:, ids.shape[1] :].cpu()  # (rows, <= G) new tokens


def generate_recompute(lm: Any, ids: torch.Tensor, sampler: Any, gc: Any) -> torch.Tensor:
    """generate()'s greedy loop without a cache (one prompt, no padding): a full forward per token.
    Rows that emitted EOS get pad tokens; every row's sampler draws at every step, as in generate()."""
    x, done = ids, torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    with torch.no_grad():
        for _ in range(gc.max_new_tokens):
            nxt = sampler(x, lm.model(x, use_cache=False).logits[:, -1].float()).argmax(-1)  # (rows,)
            nxt = torch.where(done, torch.full_like(nxt, gc.pad_token_id), nxt)
            x = torch.cat([x, nxt[:, None]], 1)
            if gc.eos_token_id is not None:
                done = done | (nxt == gc.eos_token_id)
                if bool(done.all()):
                    break
    return x[:, ids.shape[1] :].cpu()


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


def rows_by_prompt(owners: list[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for r, i in enumerate(owners):
        groups.setdefault(i, []).append(r)
    return list(groups.values())


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask (b, T_max): the one padder, `capture.forward.pad`."""
    from ..capture.forward import pad as pad_seqs

    return pad_seqs(seqs, pad, "left")


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


def pick_sampler(run: Callable[[str], Any], same: Callable[[Any, Any], bool], recurrent: bool, spec: str) -> str:
    """The first sampler in SAMPLERS whose output run(name) equals run("recompute") by `same`
    ("batched" is skipped for recurrent families); "recompute" when none does."""
    ref = run("recompute")
    for name in ("batched", "generate"):
        if name == "batched" and recurrent:
            continue
        if same(run(name), ref):
            return name
    log.warning("%s: cached generate() disagrees with full recomputation; sampling by recomputation (slower)", spec)
    return "recompute"


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return torch.equal(a["tokens"], b["tokens"]) and bool(np.allclose(a["gen_entropy"], b["gen_entropy"], atol=1e-4))
