"""Steering and reading with concept vectors: context managers around forward and generate.

`steer(lm, vectors, {"calm": 4.0}, layers=[15])` changes each listed block's output at every
position of every forward call (prompt and each generated token; recurrent generation calls the
block once per token, and so does the hook). Modes:
    add:             h <- h + sum_c alpha_c * v_c
    project_out:     h <- h - P h, P the orthogonal projector onto span{u_c} of the named concepts
                     (their alphas are ignored): the directional ablation of Arditi et al. 2024
    ablate_then_add: h <- (h - P h) + sum_c alpha_c * v_c: the component along the concepts is
                     first removed, then set by the alphas
Scales of v_c:
    absolute: v_c is the raw diff-of-means vector (unit vector x its stored norm), so alpha = 1
        adds exactly the mean difference between positives and negatives;
    relative: v_c is the unit vector times the hidden-state norm at that position (after the
        ablation in ablate_then_add), so alpha = 0.1 adds a tenth of the local residual norm.
The change is exact in the residual stream the next block reads (RWKV's eval-time rescaling is
accounted for through the adapter). Hooks are removed on exit, also on exceptions. Directions are
moved to each block's own device and dtype (models sharded over devices work).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from .capture.forward import StopForward, model_context
from .models.adapters import Adapter, adapter_for
from .vectors.readout import ConceptVectors

Scale = Literal["absolute", "equal", "relative"]
Mode = Literal["add", "project_out", "ablate_then_add"]
SCALES: tuple[Scale, ...] = ("absolute", "equal", "relative")  # how alpha x v_c is built: steering_direction
MODES: tuple[Mode, ...] = ("add", "project_out", "ablate_then_add")


def model_and_adapter(lm: Any, adapter: Adapter | None = None) -> tuple[Any, Adapter]:
    """(model, adapter) from a LoadedModel, or from a bare Hugging Face model."""
    if hasattr(lm, "model") and hasattr(lm, "adapter"):
        return lm.model, adapter or lm.adapter
    return lm, adapter or adapter_for(lm)


def resolve_weights(vectors: ConceptVectors, weights: Mapping[str, float] | float) -> dict[str, float]:
    """A bare number is the strength of a single-concept set (e.g. `vecs["calm"] - vecs["sad"]`)."""
    if isinstance(weights, int | float):
        if len(vectors.concepts) != 1:
            raise ValueError(
                f"a bare strength needs a single-concept vector set; this one has {len(vectors.concepts)}: "
                "pass {name: alpha}"
            )
        return {vectors.concepts[0]: float(weights)}
    out = {str(k): float(v) for k, v in weights.items()}
    for name in out:
        vectors.index(name)
    return out


def equal_norm(vectors: ConceptVectors, layer: int) -> float:
    """The equal scale's unit at `layer`: the median norm of the set's raw diff-of-means vectors, in
    residual-stream units."""
    n = vectors.norms[vectors.check_layer(layer)].double().sort().values
    k = len(n)
    return float(n[k // 2]) if k % 2 else float((n[k // 2 - 1] + n[k // 2]) / 2)


def steering_direction(vectors: ConceptVectors, weights: Mapping[str, float], layer: int, scale: Scale) -> torch.Tensor:
    """(hidden,) sum_c alpha_c * v_c, with v_c the raw diff-of-means (absolute: each concept at its own
    norm), the unit vector times `equal_norm` (equal: every concept pushed as hard, as hard as steer-eval's
    random directions), or the unit vector (relative: edit_hidden multiplies by the local norm)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    vectors.check_layer(layer)
    unit = equal_norm(vectors, layer) if scale == "equal" else None
    total = torch.zeros(vectors.hidden_size)
    for concept, alpha in weights.items():
        v = vectors.vector(concept, layer, raw=scale == "absolute")
        total += float(alpha) * (v if unit is None else v * unit)
    return total


def concept_basis(vectors: ConceptVectors, concepts: Sequence[str], layer: int) -> torch.Tensor:
    """(k, hidden) orthonormal rows spanning the named concepts' unit vectors at `layer`."""
    u = torch.stack([vectors.vector(c, layer) for c in concepts])  # (k, hidden)
    q, r = torch.linalg.qr(u.double().t())  # (hidden, k)
    keep = r.diagonal().abs() > 1e-8 * max(1.0, float(r.diagonal().abs().max()))
    return q.t()[keep].float()


def edit_hidden(
    seen: torch.Tensor, direction: torch.Tensor, basis: torch.Tensor | None, scale: Scale, mode: Mode
) -> torch.Tensor:
    """The steered residual (batch, seq, hidden) from the residual the next block reads.
    direction (hidden,): sum_c alpha_c v_c; basis (k, hidden) orthonormal, or None."""
    h = seen
    if mode != "add" and basis is not None:
        b = basis.to(h.device, h.dtype)
        h = h - (h @ b.t()) @ b  # remove the span of the concepts
    if mode == "project_out":
        return h
    d = direction.to(h.device, h.dtype)
    if scale == "relative":
        return h + h.norm(dim=-1, keepdim=True) * d
    return h + d


@contextmanager
def steer(
    lm: Any,
    vectors: ConceptVectors,
    weights: Mapping[str, float] | float,
    layers: int | Sequence[int],
    *,
    scale: Scale = "absolute",
    mode: Mode = "add",
    adapter: Adapter | None = None,
) -> Iterator[dict[str, Any]]:
    """Steer blocks `layers` of `lm` (a LoadedModel, or a bare HF model) inside the `with` block.
    Yields a dict: 'calls' (hook calls over all layers) and 'per_layer' {layer: calls}."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    model, adapter = model_and_adapter(lm, adapter)
    chosen = [layers] if isinstance(layers, int) else list(dict.fromkeys(int(x) for x in layers))
    if not chosen:
        raise ValueError("steer needs at least one layer")
    w = resolve_weights(vectors, weights)
    blocks = adapter.blocks(model)
    state: dict[str, Any] = {"calls": 0, "per_layer": dict.fromkeys(chosen, 0)}
    handles = []

    def make_hook(layer: int) -> Any:
        direction = steering_direction(vectors, w, layer, scale)
        basis = concept_basis(vectors, list(w), layer) if mode != "add" and w else None

        def hook(mod: torch.nn.Module, args: Any, output: Any) -> Any:
            state["calls"] += 1
            state["per_layer"][layer] += 1
            hidden = adapter.get_hidden(output)
            factor = adapter.output_scale(model, layer)  # the next block reads hidden * factor
            new = edit_hidden(hidden * factor, direction, basis, scale, mode)
            return adapter.replace_hidden(output, new / factor if factor != 1.0 else new)

        return hook

    try:
        for layer in chosen:
            if not 0 <= layer < len(blocks):
                raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
            hook = make_hook(layer)  # validates the layer against the vectors first
            handles.append(blocks[layer].register_forward_hook(hook))
        yield state
    finally:
        for handle in handles:
            handle.remove()


def token_states(lm: Any, text: str, layer: int) -> tuple[list[int], torch.Tensor]:
    """Every token's hidden state after block `layer` for `text` (one forward, stopped after the block;
    a text longer than the model's context is cut to it, with a warning). Returns the token ids and
    h (n_tokens, hidden) float32 on CPU."""
    adapter, model = lm.adapter, lm.model
    enc = lm.tokenizer(text, return_tensors="pt")
    context = model_context(model)
    if context is not None and enc.input_ids.shape[1] > context:
        logging.getLogger(__name__).warning(
            "the text has %d tokens, more than the model's context of %d: reading its first %d",
            enc.input_ids.shape[1], context, context,
        )  # fmt: skip
        enc["input_ids"] = enc.input_ids[:, :context]
    ids = enc.input_ids.to(adapter.input_device(model))
    got: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: Any, output: Any) -> None:
        got["h"] = adapter.read_hidden(model, layer, output)[0].float().cpu()
        raise StopForward

    handle = adapter.blocks(model)[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            try:
                adapter.base_model(model)(input_ids=ids, use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return enc.input_ids[0].tolist(), got["h"]


def read_tokens(lm: Any, vectors: ConceptVectors, text: str, layer: int) -> dict[str, Any]:
    """Read each token's hidden state at block `layer` with `vectors.read_scores`: the readout
    probe's log-probabilities when the readout has one, else projections on the unit vectors.

    Returns tokens (list[str]), scores (n_tokens, n_concepts) and pooled (n_concepts,): the
    same reading of the hidden states pooled as the readout was made (e.g. mean_after:1)."""
    from .capture.pooling import parse_pooling, pool

    vectors.check_layer(layer)
    ids, h = token_states(lm, text, layer)  # (t, h)
    pooled = pool(h[None], torch.ones(1, h.shape[0]), parse_pooling(vectors.meta.get("pooling", "mean")))[0]
    return {
        "tokens": [lm.tokenizer.decode([t]) for t in ids],
        "scores": vectors.read_scores(h, layer),
        "pooled": vectors.read_scores(pooled, layer),
    }
