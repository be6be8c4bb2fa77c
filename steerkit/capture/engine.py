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

from .. import dist
from ..models.adapters import Adapter
from ..models.loading import LoadedModel
from .cache import ActivationCache, entry, key
from .forward import Batch, Pooled, Runner, StopForward, Wanted, model_context, pad
from .layers import check_blocks
from .pooling import LAST, Pooling, make_pooler

log = logging.getLogger(__name__)
SITES: tuple[str, ...] = ("resid", "heads", "mlp")


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
    complete: bool = True  # False on the ranks other than 0 of a distributed capture (values only on rank 0)

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


def capture(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    sites: Sequence[str] = ("resid",),
    pooling: Pooling = LAST,
    max_batch_tokens: int = 1024,
    max_tokens: int | None = None,
    padding_side: Literal["right", "left"] = "right",
    cache_dir: str | Path | None = None,
    cache_flush_seconds: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    backend: str = "hooks",
    distributed: bool = False,
) -> CaptureResult:
    """Capture pooled activations of `texts` at blocks `layers` and `sites` (see CaptureResult).

    layers: block indices (negative counts from the end), already parsed (`parse_layers` for specs).
    pooling: a parsed `Pooling` (`parse_pooling("mean_after:1")` for specs).
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
    distributed: in a torch.distributed run (`steerkit.dist.init()`), every rank computes its share of
        the batches (balanced by padded tokens, the same batches a single process would run), writes
        them to the cache and sends them to rank 0, which alone returns the values; the other ranks
        return a result with `complete=False` and no values. Every rank must call it with the same
        texts. Without an initialised process group it is a plain capture.
    """
    t0 = time.perf_counter()
    model, adapter = lm.model, lm.adapter
    layer_list = check_blocks(layers, adapter.n_blocks(model))
    check_sites(sites)
    if not isinstance(pooling, Pooling):
        raise TypeError(f"pooling must be a Pooling (parse_pooling({pooling!r})), got {type(pooling).__name__}")
    check_max_tokens(max_tokens)
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if padding_side == "left" and adapter.recurrent:
        log.info("%s is recurrent: padding on the right (exact) instead of the left", adapter.family)
        padding_side = "right"
    from .backends import make_runner

    runner, unsupported = make_runner(backend, model, lm.tokenizer, adapter)
    result = CaptureResult(layers=layer_list, sites=tuple(sites), pooling=pooling.name)
    wanted = _plan_sites(lm, sites, layer_list, unsupported, result.skipped)
    uniq: dict[str, int] = {}
    for t in texts:
        uniq.setdefault(t, len(uniq))
    utexts = list(uniq)
    shas = [text_sha(t) for t in utexts]
    if cache_dir and backend != "hooks":
        log.info("the %s backend is a cross-check: it computes every text, the activation cache is not used", backend)
        cache_dir = None
    variant = pooling.name + (f"@{max_tokens}" if max_tokens else "")  # what the cache keys call pooling
    cache = ActivationCache(cache_dir, lm.info["fingerprint"], cache_flush_seconds) if cache_dir else None
    values, todo = _from_cache(cache, shas, wanted, variant)
    sharded = distributed and dist.active()
    if sharded:  # the union of every rank's misses: caches on different nodes may differ
        todo = sorted(set().union(*dist.all_gather(todo)))
    job = _Job(lm, runner, wanted, pooling, padding_side, cache, variant)
    stats = job.run([utexts[u] for u in todo], [shas[u] for u in todo], max_tokens, max_batch_tokens,
                    progress if dist.is_main() else None, len(utexts) - len(todo), len(utexts), sharded)  # fmt: skip
    mine = {r: {w: rows_of[r] for w, rows_of in job.values.items()} for r in job.mine}
    if sharded:
        parts = dist.gather(mine)
        if parts is None:  # not rank 0: its rows are on rank 0 (and in the cache)
            result.complete = False
            result.stats = {"n_texts": len(texts), "n_unique": len(utexts), "n_computed_here": len(job.mine),
                            **stats, "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
            return result
        mine = {r: vals for part in parts for r, vals in part.items()}
    for r, got in mine.items():
        for w, val in got.items():
            values[w][todo[r]] = val
    rows = [uniq[t] for t in texts]
    for (site, layer), vals in values.items():
        if any(v is None for v in vals):
            raise RuntimeError(f"capture lost the {site} values of block {layer} for some texts")
        result.site(site)[layer] = torch.stack(vals)[rows]  # type: ignore[arg-type]
    result.stats = {
        "n_texts": len(texts),
        "n_unique": len(utexts),
        "n_cached": len(utexts) - len(todo),
        "n_computed": len(todo),
        **stats,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return result


def check_sites(sites: Sequence[str], what: str = "site(s)") -> None:
    """The one validation of capture sites (the CLI calls it before loading a model, what='--site')."""
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ValueError(f"invalid {what} {','.join(bad) or '(none)'}; valid: {', '.join(SITES)}")


def check_max_tokens(max_tokens: int | None) -> None:
    """The one validation of the truncation length (the CLI calls it before loading a model)."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 1):
        raise ValueError(f"max_tokens must be >= 1 (or None for no truncation), got {max_tokens}")


def _plan_sites(
    lm: LoadedModel,
    sites: Sequence[str],
    layers: list[int],
    unsupported: dict[tuple[str, int], str],
    skipped: dict[tuple[str, int], str],
) -> Wanted:
    """The (site, layer) pairs to read; those a block lacks go to `skipped` with the reason."""
    wanted: Wanted = []
    for site in sites:
        for layer in layers:
            info = lm.adapter.block_info(lm.model, layer)
            if site == "heads" and not info.n_heads:
                skipped[(site, layer)] = f"block {layer} ({info.kind}) has no heads"
            elif site == "mlp" and info.mlp_down is None:
                skipped[(site, layer)] = f"block {layer}: {info.no_mlp_reason or 'no MLP'}"
            elif (site, layer) in unsupported:
                skipped[(site, layer)] = unsupported[(site, layer)]
            else:
                wanted.append((site, layer))
    return wanted


def _from_cache(
    cache: ActivationCache | None, shas: list[str], wanted: Wanted, variant: str
) -> tuple[dict[tuple[str, int], list[torch.Tensor | None]], list[int]]:
    """Values found in the cache (None where missing) and the unique texts still to compute."""
    values: dict[tuple[str, int], list[torch.Tensor | None]] = {w: [None] * len(shas) for w in wanted}
    todo: list[int] = []
    for u, sha in enumerate(shas):
        if cache is not None and all(cache.has(key(sha, s, variant, lay)) for s, lay in wanted):
            got = [cache.get(key(sha, s, variant, lay)) for s, lay in wanted]
            if all(g is not None for g in got):
                for w, g in zip(wanted, got, strict=True):
                    values[w][u] = g
                continue
        todo.append(u)
    return values, todo


@dataclass
class _Job:
    """The texts still to compute: tokenized, batched, run through the backend, cached as they come."""

    lm: LoadedModel
    runner: Runner | None
    wanted: Wanted
    pooling: Pooling
    padding_side: Literal["right", "left"]
    cache: ActivationCache | None
    variant: str
    values: dict[tuple[str, int], list[torch.Tensor]] = field(default_factory=dict)
    mine: list[int] = field(default_factory=list)  # the rows this process computed

    def run(
        self,
        texts: list[str],
        shas: list[str],
        max_tokens: int | None,
        max_batch_tokens: int,
        progress: Callable[[int, int], None] | None,
        done: int,
        total: int,
        sharded: bool = False,
    ) -> dict[str, int]:
        tok, model, adapter = self.lm.tokenizer, self.lm.model, self.lm.adapter
        encoded = list(tok(texts, add_special_tokens=True).input_ids) if texts else []
        encoded = _bound(encoded, texts, max_tokens, model_context(model))
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a text tokenizes to zero tokens; remove empty texts")
        batches = make_batches([len(e) for e in encoded], max_batch_tokens)
        n_batches = len(batches)
        to_job = dist.scaled_progress(done, len(texts), len(texts))
        if sharded:  # whole batches, as one process would run them, balanced by padded tokens
            padded = [len(b) * max(len(encoded[i]) for i in b) for b in batches]
            batches = [batches[i] for i in dist.shard(padded)]
            to_job = dist.scaled_progress(done, sum(len(b) for b in batches), len(texts))
        self.values = {w: [torch.empty(0)] * len(texts) for w in self.wanted}
        self.mine = sorted(i for b in batches for i in b)
        done_here = 0
        if progress:
            progress(to_job(0), total)
        if self.wanted and texts:
            last_layer = max(lay for _, lay in self.wanted)
            run = self.runner or hooks_runner(model, adapter)
            dev = adapter.input_device(model)
            try:
                for batch in batches:
                    ids, mask = pad([encoded[i] for i in batch], int(tok.pad_token_id), self.padding_side)
                    pooled = run(Batch(ids.to(dev), mask, self.padding_side == "left"), self.wanted, last_layer,
                                 self.pooling)  # fmt: skip
                    for w, val in pooled.items():
                        for r, i in enumerate(batch):
                            self.values[w][i] = val[r]
                    if self.cache is not None:
                        self.cache.put_rows(
                            [shas[i] for i in batch],
                            {entry(site, self.variant, layer): val for (site, layer), val in pooled.items()},
                        )
                    done_here += len(batch)
                    if progress:
                        progress(to_job(done_here), total)
            finally:  # an interrupted capture keeps what it computed
                if self.cache is not None:
                    self.cache.flush()
        return {"n_batches": n_batches, "tokens": sum(len(e) for e in encoded)}


def _bound(encoded: list[list[int]], texts: list[str], max_tokens: int | None, context: int | None) -> list[list[int]]:
    """Truncate to max_tokens and to the model's context (saying so: a text longer than the context
    is cut, never silently run past it); warn when one text holds most of the run's tokens."""
    if context is not None and (max_tokens is None or max_tokens > context):
        long = [len(e) for e in encoded if len(e) > context]
        if long:
            log.warning(
                "%d text(s) are longer than the model's context of %d tokens (the longest has %d); "
                "each is truncated to its first %d tokens (--max-tokens sets a shorter cut)",
                len(long), context, max(long), context,
            )  # fmt: skip
        max_tokens = context
    if max_tokens:
        encoded = [e[:max_tokens] for e in encoded]
    total = sum(len(e) for e in encoded)
    if len(encoded) >= 4 and total:
        i = max(range(len(encoded)), key=lambda j: len(encoded[j]))
        if len(encoded[i]) > total / 2:
            log.warning(
                "one text holds %d of the run's %d tokens (%.0f%%): %r...; is it meant to be one text?",
                len(encoded[i]), total, 100 * len(encoded[i]) / total, texts[i][:40],
            )  # fmt: skip
    return encoded


def hooks_runner(model: torch.nn.Module, adapter: Adapter) -> Runner:
    """The default backend: plain forward hooks on the base model (no LM head), early stop."""
    base = adapter.base_model(model)

    def run(batch: Batch, wanted: Wanted, last_layer: int, pooling: Pooling) -> Pooled:
        return _run_batch(model, base, adapter, batch, wanted, last_layer, pooling)

    return run


def _run_batch(
    model: torch.nn.Module,
    base: torch.nn.Module,
    adapter: Adapter,
    batch: Batch,
    wanted: Wanted,
    last_layer: int,
    pooling: Pooling,
) -> Pooled:
    """One forward of the base model, pooling each wanted site in its hook. The forward stops as
    soon as every wanted site of `last_layer` has fired: after that block's output, or earlier
    inside it when only its heads / MLP input are wanted (the rest of the block never runs)."""
    out: Pooled = {}
    handles = []
    blocks = adapter.blocks(model)
    mask = batch.mask

    def stop_if_done(layer: int) -> None:
        if layer == last_layer and last_sites <= out.keys():
            raise StopForward

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
        with torch.inference_mode():
            try:
                base(use_cache=False, **batch.inputs())
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [w for w in wanted if w not in out]
    if missing:
        raise RuntimeError(f"hooks did not fire for {missing}: the adapter's module paths do not match this model")
    return out
