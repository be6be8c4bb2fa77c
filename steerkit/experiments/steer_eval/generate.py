"""The apparatus of steer-eval: the sampler check, the NLL pass and the unsteered re-reading.
Generation itself (per-row steering `RowSteer`, `generate_chunk`) lives in steerkit.generation.

- `continuation_nll`: mean -log p(token) of each continuation under the unsteered model, given its
  prompt (teacher forced, right-padded).
- `reread`: each continuation alone, re-read by the unsteered model (one capture call), pooled as
  the readout was made and scored on every concept by what `read` uses (`ConceptVectors.read_scores`:
  the run's readout probe, log p(concept | text), when it has one at that layer, else centred
  projections on the vectors). The judge is thus the same whichever vector method steers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from ...generation import GenSpec, RowSteer, generate_chunk, pad_id, pick_sampler, trim
from .. import measures as M
from ..batch import Prepared, tf_batch

__all__ = ["GenSpec", "RowSteer", "choose_steer_sampler", "continuation_nll", "degeneration", "generate_chunk",
           "reader", "reread", "trim"]  # fmt: skip

log = logging.getLogger(__name__)
LOGIT_BUDGET = 1 << 24  # logits (rows x positions x vocab) held at once by the NLL pass


def choose_steer_sampler(lm: Any, prompts: list[list[int]], layer: int, delta: torch.Tensor, scale: str) -> str:
    """Apparatus check: the first sampler that generates exactly what full recomputation does, on the
    shortest and the longest prompt, three seeds each, six tokens, rows steered by delta (rows, hidden)
    (give some rows zero and some a real direction)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    ps = [prompts[order[0]], prompts[order[-1]]] if len(prompts) > 1 else [prompts[0]]
    owners = [i for i in range(len(ps)) for _ in range(3)]
    seeds = [11, 12, 13] * len(ps)
    d = torch.stack([delta[r % len(delta)] for r in range(len(owners))])  # (rows, hidden)
    spec = GenSpec(max_new=6)

    def run(name: str) -> torch.Tensor:
        with RowSteer.add(lm, layer, d, scale).attached() as hook:
            return generate_chunk(lm, name, ps, owners, seeds, hook, spec)

    return pick_sampler(run, torch.equal, bool(lm.adapter.recurrent), str(lm.info.get("spec", "model")))


def continuation_nll(lm: Any, prompts: list[list[int]], conts: list[list[int]]) -> np.ndarray:
    """Mean NLL per token (nats) of each continuation given its prompt, unsteered; NaN when empty: (rows,)."""
    out = np.full(len(conts), np.nan)
    todo = sorted((r for r in range(len(conts)) if conts[r]), key=lambda r: len(prompts[r]) + len(conts[r]))
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    dev = lm.input_device
    i = 0
    while i < len(todo):
        j = i + 1
        while j < len(todo) and (j - i + 1) * (len(prompts[todo[j]]) + len(conts[todo[j]])) * vocab <= LOGIT_BUDGET:
            j += 1
        rows = todo[i:j]
        batch = [Prepared("", "", prompts[r], conts[r]) for r in rows]
        ids, mask = tf_batch(batch, pad_id(lm))
        with torch.no_grad():
            logits = lm.model(ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits  # (b, T, V)
        for k, r in enumerate(rows):
            p, n = len(prompts[r]), len(conts[r])
            logp = torch.log_softmax(logits[k, p - 1 : p + n - 1].float(), -1)  # (n, V)
            out[r] = float(M.nll_per_position(logp, torch.tensor(conts[r], device=logp.device)).mean())
        i = j
    return out


def reread(lm: Any, vectors: Any, layer: int, texts: list[str], max_batch_tokens: int = 1024) -> np.ndarray:
    """Concept scores (rows, n_concepts) of each text alone under the unsteered model, pooled as the
    readout was made and scored by `vectors.read_scores`. An empty text reads as knowing nothing: the
    uniform log-probability -log C under a probe, the centre (all 0) under projections."""
    from ...capture import capture, parse_pooling

    n_c = len(vectors.concepts)
    empty = -math.log(n_c) if layer in vectors.probes else 0.0
    out = np.full((len(texts), n_c), empty)
    keep = [r for r, t in enumerate(texts) if t]
    if keep:
        pooling = parse_pooling(vectors.meta.get("pooling", "mean"))
        res = capture(lm, [texts[r] for r in keep], [layer], pooling=pooling, max_batch_tokens=max_batch_tokens)
        out[keep] = vectors.read_scores(res.resid[layer], layer).double().numpy()
    return out


def reader(vectors: Any, layer: int) -> str:
    """What judges the continuations at `layer`: 'probe' (log-probabilities) or 'projection'."""
    return "probe" if layer in vectors.probes else "projection"


def degeneration(tokens: list[int]) -> tuple[float, float]:
    """(distinct-2, share of repeated 3-grams = 1 - distinct-3) of one continuation."""
    return M.distinct_n(tokens, 2), 1.0 - M.distinct_n(tokens, 3)
