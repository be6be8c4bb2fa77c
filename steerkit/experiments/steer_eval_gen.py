"""The apparatus of steer-eval: per-row steering, batched generation, and the unsteered re-reading.

- `RowSteer`: adds a different direction to every row of a batch at one block (row r of every
  forward call gets delta[r]; absolute: h + d_r, relative: h + |h| d_r, as `steering.steer` does
  for one direction), so one left-padded generate() can hold many (concept, alpha) arms. A row
  whose delta is zero is left exactly as it was.
- `generate_chunk`: the generations of a chunk of rows with the sampler the apparatus check chose
  (sampling.SAMPLERS): seeded Gumbel-max sampling (sampling.Sampler) or greedy decoding.
- `continuation_nll`: mean -log p(token) of each continuation under the unsteered model, given its
  prompt (teacher forced, right-padded).
- `reread`: each continuation alone, re-read by the unsteered model (one capture call), pooled as
  the readout was made and projected on every concept (centred, as `read` does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import measures as M
from .runner import Prepared, gen_config, pad_id, tf_batch
from .sampling import Sampler, generate_batch, generate_recompute, left_pad, pick_sampler, rows_by_prompt

log = logging.getLogger(__name__)
LOGIT_BUDGET = 1 << 24  # logits (rows x positions x vocab) held at once by the NLL pass


class RowSteer:
    """Forward hook on block `layer`: row r of each call gets `delta[rows[r]]` added (see module doc).
    Set `rows` (indices into delta) before each call; None means all rows in order."""

    def __init__(self, lm: Any, layer: int, delta: torch.Tensor, scale: str) -> None:
        if scale not in ("absolute", "relative"):
            raise ValueError(f"scale must be 'absolute' or 'relative', got {scale!r}")
        self.lm, self.layer, self.scale = lm, layer, scale
        self.delta = delta.float()  # (rows, hidden)
        self.rows: list[int] | None = None
        self.calls = 0

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        self.calls += 1
        d = self.delta if self.rows is None else self.delta[self.rows]  # (b, hidden)
        if not bool(d.any()):
            return None  # nothing to add: the block's output is untouched
        a, model = self.lm.adapter, self.lm.model
        hidden = a.get_hidden(output)  # (b, seq, hidden)
        if hidden.shape[0] != d.shape[0]:
            raise RuntimeError(f"RowSteer: batch of {hidden.shape[0]} rows, {d.shape[0]} directions")
        factor = a.output_scale(model, self.layer)  # the next block reads hidden * factor
        d3 = d.to(hidden.device, hidden.dtype)[:, None, :]  # (b, 1, hidden)
        add = (hidden * factor).norm(dim=-1, keepdim=True) * d3 if self.scale == "relative" else d3
        return a.replace_hidden(output, hidden + add / factor)

    @contextmanager
    def attached(self) -> Iterator[RowSteer]:
        handle = self.lm.adapter.blocks(self.lm.model)[self.layer].register_forward_hook(self)
        try:
            yield self
        finally:
            handle.remove()


class Greedy:
    """The identity LogitsProcessor: generate()'s argmax is then greedy decoding."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores


@dataclass(frozen=True)
class GenSpec:
    """How continuations are drawn: max_new tokens, seeded sampling at `temperature` or greedy."""

    max_new: int
    temperature: float = 1.0
    greedy: bool = False


def _processor(seeds: list[int], spec: GenSpec) -> Any:
    return Greedy() if spec.greedy else Sampler(seeds, spec.temperature, 1)


def generate_chunk(
    lm: Any,
    sampler: str,
    prompts: list[list[int]],
    owners: list[int],
    seeds: list[int],
    steer: RowSteer | None,
    spec: GenSpec,
) -> torch.Tensor:
    """New tokens (rows, max_new) (pad after EOS) for rows r = (prompt owners[r], seed seeds[r]);
    `steer` (attached by the caller, or None) holds one direction per row.

    sampler 'batched': all rows in one left-padded generate(); 'generate': one call per prompt
    (no padding); 'recompute': per prompt, a full forward per token without a cache."""
    gc = gen_config(lm, spec.max_new)
    dev = lm.input_device
    out = torch.full((len(owners), spec.max_new), gc.pad_token_id, dtype=torch.long)
    groups = [list(range(len(owners)))] if sampler == "batched" else rows_by_prompt(owners)
    for rows in groups:
        if steer is not None:
            steer.rows = rows
        proc = _processor([seeds[r] for r in rows], spec)
        if sampler == "recompute":
            ids = torch.tensor([prompts[owners[r]] for r in rows], device=dev)
            new = generate_recompute(lm, ids, proc, gc)
        else:
            ids, mask = left_pad([prompts[owners[r]] for r in rows], pad_id(lm))
            new = generate_batch(lm, ids.to(dev), mask.to(dev), proc, gc, None)
        out[rows, : new.shape[1]] = new
    if steer is not None:
        steer.rows = None
    return out


def trim(tokens: torch.Tensor, eos: int | None) -> list[list[int]]:
    """Each row's tokens before the first EOS."""
    return [(t := row.tolist())[: M.generated_length(t, eos)] for row in tokens]


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
        with RowSteer(lm, layer, d, scale).attached() as hook:
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
    readout was made; an empty text reads as the centre (all scores 0)."""
    from ..capture import capture, parse_pooling

    out = np.zeros((len(texts), len(vectors.concepts)))
    keep = [r for r, t in enumerate(texts) if t]
    if keep:
        pooling = parse_pooling(vectors.meta.get("pooling", "mean"))
        res = capture(lm, [texts[r] for r in keep], [layer], pooling=pooling, max_batch_tokens=max_batch_tokens)
        out[keep] = vectors.scores(res.resid[layer], layer).double().numpy()
    return out


def degeneration(tokens: list[int]) -> tuple[float, float]:
    """(distinct-2, share of repeated 3-grams = 1 - distinct-3) of one continuation."""
    return M.distinct_n(tokens, 2), 1.0 - M.distinct_n(tokens, 3)
