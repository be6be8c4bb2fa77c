"""The experiment's apparatus: the setup, prompts, arms (free / forced / detached) and the batched
teacher-forced pass. Everything goes through the adapter and PhaseHook; the core's modes are
restored on exit. Sampling lives in sampling.py."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import ExperimentError
from ...generation import gen_config
from ...phase.core import PhaseCore
from ...phase.couplings import Coupling, CouplingConfig, PhaseHook, make_coupling
from ..batch import Prepared
from ..prompts import Prompt
from .config import applied_level

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass
class Setup:
    """What the experiment acts on: a loaded model, the trained core and coupling, the block."""

    lm: Any
    core: PhaseCore
    coupling: Coupling
    layer: int
    sampler: str = "batched"  # sampling.SAMPLERS: how generations are computed (an apparatus check picks it)

    @property
    def carry_state(self) -> bool:
        """Sampling arms carry the phases across forward calls only with the cached samplers."""
        return self.sampler != "recompute"


@dataclass
class ExperimentData:
    """Raw numbers of one experiment. diffs[m]: (n_prompts, L) paired effects (forced - free, or the
    divergence); arms[m]: (n_prompts, 1 + L) arm means (free first); per_seed[m]: (n_prompts, 1 + L, S);
    washout: per level, {site: {"raw", "dir"}} averaged over prompts; r_free: (n_prompts,)."""

    name: str
    r_free: np.ndarray
    diffs: dict[str, np.ndarray] = field(default_factory=dict)
    arms: dict[str, np.ndarray] = field(default_factory=dict)
    per_seed: dict[str, np.ndarray] = field(default_factory=dict)
    washout: list[dict[str, dict[str, float]]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # first prompt, first seed, per arm


# ---- prompts and arms ----------------------------------------------------------------------------
def prepare_prompts(lm: Any, prompts: list[Prompt], n_tokens: int) -> list[Prepared]:
    """Tokenise; prompts without a continuation get the bare model's greedy one (n_tokens)."""
    tok, out = lm.tokenizer, []
    for p in prompts:
        pids = list(tok(p.text)["input_ids"])
        if not pids:
            raise ExperimentError(f"prompt {p.text!r} tokenises to nothing")
        if p.continuation is not None:
            cids = list(tok(p.continuation, add_special_tokens=False)["input_ids"])
            cont = p.continuation
        else:
            ids = torch.tensor([pids], device=lm.input_device)
            with torch.no_grad():
                gen = lm.model.generate(
                    ids, attention_mask=torch.ones_like(ids), generation_config=gen_config(lm, n_tokens)
                )
            cids = gen[0, len(pids) :].tolist()
            eos = tok.eos_token_id
            cids = cids[: cids.index(eos)] if eos is not None and eos in cids else cids
            cont = tok.decode(cids)
        if not cids:
            raise ExperimentError(f"prompt {p.text!r} has an empty continuation; give one with at least one token")
        out.append(Prepared(p.text, cont, pids, cids))
    return out


PLANTED_SEED = 20_240_601  # the planted direction does not change with --seed (which only drives sampling)


def planted_coupling(setup: Setup, alpha: float) -> Coupling:
    """The positive control: additive, fixed strength `alpha`, a fixed random unit direction
    (standard normal from torch.Generator(PLANTED_SEED), normalised), center as the trained coupling."""
    hidden = int(setup.lm.model.get_input_embeddings().weight.shape[1])
    g = torch.Generator().manual_seed(PLANTED_SEED)
    direction = torch.randn(hidden, generator=g)
    cfg = CouplingConfig(
        name="additive", alpha=alpha, learn_alpha=False, center=setup.coupling.config.center, learn_direction=False
    )
    return make_coupling(cfg, hidden, direction).to(setup.lm.input_device).eval()


@contextmanager
def arm(
    setup: Setup, coupling: Coupling, level: float | None, method: str, *, detached: bool, carry_state: bool = False
) -> Iterator[PhaseHook]:
    """The model inside one arm: R free (level None) or forced; coupling detached for the negative control."""
    core = setup.core
    old = (core.force_R, core.force_method, core.detached, core.detached_R)
    try:
        core.set_detached(detached, None)
        core.set_force(None if level is None else applied_level(level), method)  # type: ignore[arg-type]
        with PhaseHook(setup.lm, core, coupling, setup.layer, carry_state=carry_state) as hook:
            yield hook
    finally:
        core.force_R, core.force_method, core.detached, core.detached_R = old


# ---- teacher-forced passes --------------------------------------------------------------------------
def forward_capture(
    setup: Setup, hook: PhaseHook, ids: torch.Tensor, mask: torch.Tensor, sites: list[int], probe_layer: int | None
) -> dict[str, torch.Tensor]:
    """Logits (b, T, V) of a right-padded batch, the residual (b, T, hidden) after each block in `sites`
    (and probe_layer) and the final norm's output. Call inside an `arm` (whose hook it is)."""
    lm = setup.lm
    a, model, dev = lm.adapter, lm.model, lm.input_device
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, index: int | None) -> Callable[..., None]:
        def fn(module: Any, args: Any, output: Any) -> None:
            h = a.read_hidden(model, index, output) if index is not None else a.get_hidden(output)
            store[name] = h.detach().float().cpu()  # (b, T, hidden)

        return fn

    handles = []
    try:
        blocks = a.blocks(model)
        for k in sorted(set(sites) | ({probe_layer} if probe_layer is not None else set())):
            handles.append(blocks[k].register_forward_hook(keep(f"block_{k}", k)))
        handles.append(a.final_norm(model).register_forward_hook(keep("final_norm", None)))
        hook.mask = mask.to(dev)
        with torch.no_grad():
            logits = model(ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits.float().cpu()
    finally:
        hook.mask = None
        for h in handles:
            h.remove()
    return {"logits": logits, **store}  # (b, T, V)
