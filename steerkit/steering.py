"""Steering and reading with concept vectors: context managers around forward and generate.

`steer(model, vectors, {"calm": 4.0}, layer=L)` adds sum_c alpha_c * v_c to block L's output at
every position of every forward call (prompt and each generated token; recurrent generation
calls the block once per token, and so does the hook).
    scale="absolute": v_c is the raw diff-of-means vector (unit vector x its stored norm), so
        alpha = 1 adds exactly the mean difference between positives and negatives;
    scale="relative": v_c is the unit vector times the hidden-state norm at that position, so
        alpha = 0.1 adds a tenth of the local residual norm.
The change is exact in the residual stream the next block reads (RWKV's eval-time rescaling is
accounted for through the adapter). Hooks are removed on exit, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch

from .models.adapters import Adapter, adapter_for
from .vectors.readout import ConceptVectors

Scale = Literal["absolute", "relative"]


def steering_direction(vectors: ConceptVectors, weights: Mapping[str, float], layer: int, scale: Scale) -> torch.Tensor:
    """(hidden,) sum_c alpha_c * v_c, with v_c raw (absolute) or unit (relative)."""
    if scale not in ("absolute", "relative"):
        raise ValueError(f"scale must be 'absolute' or 'relative', got {scale!r}")
    vectors.check_layer(layer)
    total = torch.zeros(vectors.hidden_size)
    for concept, alpha in weights.items():
        total += float(alpha) * vectors.vector(concept, layer, raw=scale == "absolute")
    return total


def _delta(hidden: torch.Tensor, direction: torch.Tensor, scale: Scale) -> torch.Tensor:
    d = direction.to(hidden.device, hidden.dtype)
    if scale == "relative":
        return hidden.norm(dim=-1, keepdim=True) * d  # (batch, seq, hidden)
    return d.expand_as(hidden)


@contextmanager
def steer(
    model: Any,
    vectors: ConceptVectors,
    weights: Mapping[str, float],
    layer: int,
    *,
    scale: Scale = "absolute",
    adapter: Adapter | None = None,
) -> Iterator[dict[str, int]]:
    """Add the weighted concept vectors to block `layer`'s output inside the `with` block.
    Yields a dict whose 'calls' counts how often the hook fired."""
    adapter = adapter or adapter_for(model)
    direction = steering_direction(vectors, weights, layer, scale)
    state = {"calls": 0}

    def hook(mod: torch.nn.Module, args: Any, output: Any) -> Any:
        state["calls"] += 1
        hidden = adapter.get_hidden(output)
        factor = adapter.output_scale(model, layer)  # the next block reads hidden * factor
        seen = hidden * factor
        return adapter.replace_hidden(output, hidden + _delta(seen, direction, scale) / factor)

    handle = adapter.blocks(model)[layer].register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def read_tokens(lm: Any, vectors: ConceptVectors, text: str, layer: int) -> dict[str, Any]:
    """Project each token's hidden state at block `layer` on every concept's unit vector.

    Returns tokens (list[str]), scores (n_tokens, n_concepts) and pooled (n_concepts,): the
    scores of the hidden states pooled as the readout was made (e.g. mean_after:1)."""
    from .capture.engine import _StopForward
    from .capture.pooling import parse_pooling, pool

    vectors.check_layer(layer)
    adapter, model = lm.adapter, lm.model
    enc = lm.tokenizer(text, return_tensors="pt")
    ids = enc.input_ids.to(next(model.parameters()).device)
    got: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: Any, output: Any) -> None:
        got["h"] = adapter.read_hidden(model, layer, output)[0].float().cpu()
        raise _StopForward

    handle = adapter.blocks(model)[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            try:
                adapter.base_model(model)(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    h = got["h"]  # (t, h)
    pooled = pool(h[None], torch.ones(1, h.shape[0]), parse_pooling(vectors.meta.get("pooling", "mean")))[0]
    return {
        "tokens": [lm.tokenizer.decode([t]) for t in enc.input_ids[0].tolist()],
        "scores": vectors.scores(h, layer),
        "pooled": vectors.scores(pooled, layer),
    }
