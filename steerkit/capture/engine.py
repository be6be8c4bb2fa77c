"""Hook-based capture of pooled activations: fast because it does less.

- the base model runs without the LM head, and the forward stops after the last needed block
  (a private exception raised from that block's hook);
- unique texts only (one story is a positive for one concept and a negative for all others),
  length-bucketed into batches under a token budget, right-padded (exact for every causal
  family, recurrent ones included);
- pooled results accumulated on CPU in fp32; an optional on-disk cache makes runs resumable.
Hooks are always removed in `finally`; the user's model is never wrapped or mutated.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..models.adapters import Adapter
from ..models.loading import LoadedModel
from .cache import ActivationCache, entry, key
from .layers import parse_layers
from .pooling import Pooling, make_pooler, parse_pooling

log = logging.getLogger(__name__)
Site = Literal["resid", "heads", "mlp"]
SITES: tuple[str, ...] = ("resid", "heads", "mlp")


class _StopForward(Exception):
    """Raised from the last needed block's hook to skip the rest of the model."""


@dataclass
class CaptureResult:
    """Pooled activations, one row per input text (duplicates share values), fp32 on CPU.

    resid[L]: (n_texts, hidden); heads[L]: (n_texts, n_heads, head_dim); mlp[L]: (n_texts, intermediate).
    skipped: (site, layer) -> reason, for blocks that have no such site (e.g. heads of RWKV-4).
    """

    layers: list[int]
    sites: tuple[str, ...]
    pooling: str
    resid: dict[int, torch.Tensor] = field(default_factory=dict)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    skipped: dict[tuple[str, int], str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def site(self, name: str) -> dict[int, torch.Tensor]:
        return {"resid": self.resid, "heads": self.heads, "mlp": self.mlp}[name]


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int = 64) -> list[list[int]]:
    """Length-bucketed batches: indices sorted by length, each batch's padded size
    (batch * longest) within max_batch_tokens (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in cur] + [lengths[i]])
        if cur and (longest * (len(cur) + 1) > max_batch_tokens or len(cur) >= max_batch_size):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        if side == "right":
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        else:
            ids[r, t - len(s) :] = torch.tensor(s)
            mask[r, t - len(s) :] = 1
    return ids, mask


def forward_inputs(ids: torch.Tensor, mask: torch.Tensor, left: bool) -> dict[str, torch.Tensor]:
    """attention_mask (on the ids' device) and, for left padding, explicit position ids (real
    tokens count from 0 whatever the padding), as every backend passes them to the model."""
    out = {"attention_mask": mask.to(ids.device)}
    if left:
        out["position_ids"] = (torch.cumsum(mask, 1) - 1).clamp(min=0).to(ids.device)
    return out


def _input_device(model: Any, adapter: Adapter) -> torch.device:
    emb: Any = model.get_input_embeddings()
    return emb.weight.device if emb is not None else next(model.parameters()).device


def capture(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: str | int | float | Sequence[int | float | str] = -1,
    *,
    sites: Sequence[str] = ("resid",),
    pooling: str | Pooling = "last",
    max_batch_tokens: int = 1024,
    max_tokens: int | None = None,
    padding_side: Literal["right", "left"] = "right",
    cache_dir: str | Path | None = None,
    cache_flush_seconds: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    backend: str = "hooks",
) -> CaptureResult:
    """Capture pooled activations of `texts` at `layers` and `sites` (see CaptureResult).

    max_batch_tokens: padded tokens per batch (batch size x longest text).
    max_tokens: truncate texts to this many tokens (default: no truncation); part of the cache key.
    padding_side: 'left' is honoured only for non-recurrent families (with explicit position ids);
        recurrent families (RWKV, Mamba, hybrids) always pad right, which is exact for them.
    cache_dir: activation cache root; entries are keyed by the model fingerprint. Only the hooks
        backend uses it: nnsight and lens are cross-checks, so they always compute.
    cache_flush_seconds: computed entries are written to the cache at most this often (and when the
        capture ends or is interrupted, e.g. by Ctrl-C); kill -9 loses at most this much work.
    backend: 'hooks' (default, fastest: plain forward hooks, early stop), 'nnsight' (a
        cross-check through an nnsight trace) or 'lens' (through a transformer-lens
        TransformerBridge booted on a copy of the model); same batches, same numbers.
    """
    t0 = time.perf_counter()
    model, adapter, tok = lm.model, lm.adapter, lm.tokenizer
    n_blocks = adapter.n_blocks(model)
    layer_list = parse_layers(layers, n_blocks)
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ValueError(f"invalid site(s) {bad or sites}; valid: {', '.join(SITES)}")
    pool_spec = parse_pooling(pooling)
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if padding_side == "left" and adapter.recurrent:
        log.info("%s is recurrent: padding on the right (exact) instead of the left", adapter.family)
        padding_side = "right"

    from .backends import make_runner

    runner, unsupported = make_runner(backend, model, tok, adapter)
    result = CaptureResult(layers=layer_list, sites=tuple(sites), pooling=pool_spec.name)
    wanted: list[tuple[str, int]] = []
    for site in sites:
        for layer in layer_list:
            info = adapter.block_info(model, layer)
            if site == "heads" and not info.n_heads:
                result.skipped[(site, layer)] = f"block {layer} ({info.kind}) has no heads"
            elif site == "mlp" and info.mlp_down is None:
                result.skipped[(site, layer)] = f"block {layer}: {info.no_mlp_reason or 'no MLP'}"
            elif (site, layer) in unsupported:
                result.skipped[(site, layer)] = unsupported[(site, layer)]
            else:
                wanted.append((site, layer))

    uniq: dict[str, int] = {}
    for t in texts:
        uniq.setdefault(t, len(uniq))
    utexts = list(uniq)
    shas = [text_sha(t) for t in utexts]
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (or None for no truncation), got {max_tokens}")
    if cache_dir and backend != "hooks":
        log.info("the %s backend is a cross-check: it computes every text, the activation cache is not used", backend)
        cache_dir = None
    variant = pool_spec.name + (f"@{max_tokens}" if max_tokens else "")  # what the cache keys call pooling
    cache = ActivationCache(cache_dir, lm.info["fingerprint"], cache_flush_seconds) if cache_dir else None
    values: dict[tuple[str, int], list[torch.Tensor | None]] = {w: [None] * len(utexts) for w in wanted}
    todo: list[int] = []
    for u, sha in enumerate(shas):
        hit = cache is not None and all(cache.has(key(sha, s, variant, lay)) for s, lay in wanted)
        if hit:
            got = [cache.get(key(sha, s, variant, lay)) for s, lay in wanted]  # type: ignore[union-attr]
            if all(g is not None for g in got):
                for w, g in zip(wanted, got, strict=True):
                    values[w][u] = g
                continue
        todo.append(u)

    encoded = list(tok([utexts[u] for u in todo], add_special_tokens=True).input_ids) if todo else []
    if max_tokens:
        encoded = [e[:max_tokens] for e in encoded]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("a text tokenizes to zero tokens; remove empty texts")
    batches = make_batches([len(e) for e in encoded], max_batch_tokens)
    n_tokens = sum(len(e) for e in encoded)
    done = len(utexts) - len(todo)
    if progress:
        progress(done, len(utexts))
    if wanted and todo:
        last_layer = max(lay for _, lay in wanted)
        dev = _input_device(model, adapter)
        base = adapter.base_model(model)
        run = runner or _run_batch
        try:
            for batch in batches:
                ids, mask = _pad([encoded[i] for i in batch], int(tok.pad_token_id), padding_side)
                pooled = run(
                    model, base, adapter, ids.to(dev), mask, wanted, last_layer, pool_spec, padding_side == "left"
                )
                for w, val in pooled.items():
                    for r, i in enumerate(batch):
                        values[w][todo[i]] = val[r]
                if cache is not None:
                    cache.put_rows(
                        [shas[todo[i]] for i in batch],
                        {entry(site, variant, layer): val for (site, layer), val in pooled.items()},
                    )
                done += len(batch)
                if progress:
                    progress(done, len(utexts))
        finally:  # an interrupted capture keeps what it computed
            if cache is not None:
                cache.flush()

    rows = [uniq[t] for t in texts]
    for (site, layer), vals in values.items():
        stacked = torch.stack([v for v in vals if v is not None]) if all(v is not None for v in vals) else None
        assert stacked is not None
        result.site(site)[layer] = stacked[rows]
    result.stats = {
        "n_texts": len(texts),
        "n_unique": len(utexts),
        "n_cached": len(utexts) - len(todo),
        "n_computed": len(todo),
        "n_batches": len(batches),
        "tokens": n_tokens,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return result


def _run_batch(
    model: torch.nn.Module,
    base: torch.nn.Module,
    adapter: Adapter,
    ids: torch.Tensor,
    mask: torch.Tensor,
    wanted: list[tuple[str, int]],
    last_layer: int,
    pooling: Pooling,
    left: bool,
) -> dict[tuple[str, int], torch.Tensor]:
    """One forward of the base model, pooling each wanted site in its hook. The forward stops as
    soon as every wanted site of `last_layer` has fired: after that block's output, or earlier
    inside it when only its heads / MLP input are wanted (the rest of the block never runs)."""
    out: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    blocks = adapter.blocks(model)

    def stop_if_done(layer: int) -> None:
        if layer == last_layer and last_sites <= out.keys():
            raise _StopForward

    def block_hook(layer: int) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: Any, output: Any) -> None:
            if ("resid", layer) in wanted_set:
                out[("resid", layer)] = pooler(adapter.read_hidden(model, layer, output)).cpu()
            stop_if_done(layer)

        return hook

    def input_hook(site: str, layer: int, reshape: tuple[int, int] | None) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: Any) -> None:
            x = args[0]
            if x.dim() == 2:  # MoE blocks flatten (batch * seq, dim) before their experts
                x = x.view(mask.shape[0], mask.shape[1], -1)
            p = pooler(x).cpu()
            out[(site, layer)] = p.view(p.shape[0], *reshape) if reshape else p
            stop_if_done(layer)

        return hook

    pooler = make_pooler(mask, pooling)
    wanted_set = set(wanted)
    last_sites = {w for w in wanted if w[1] == last_layer}
    try:
        for site, layer in wanted:
            if site == "heads":
                info = adapter.block_info(model, layer)
                mod = adapter.mixer_out_module(model, layer)
                handles.append(mod.register_forward_pre_hook(input_hook(site, layer, (info.n_heads, info.head_dim))))  # type: ignore[arg-type]
            elif site == "mlp":
                mod = adapter.mlp_down_module(model, layer)  # type: ignore[assignment]
                handles.append(mod.register_forward_pre_hook(input_hook(site, layer, None)))
        for layer in sorted({lay for _, lay in wanted}):
            handles.append(blocks[layer].register_forward_hook(block_hook(layer)))
        kwargs = forward_inputs(ids, mask, left)
        with torch.inference_mode():
            try:
                base(input_ids=ids, use_cache=False, **kwargs)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [w for w in wanted if w not in out]
    if missing:
        raise RuntimeError(f"hooks did not fire for {missing}: the adapter's module paths do not match this model")
    return out
