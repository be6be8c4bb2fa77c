"""Capture benchmark: steerkit capture vs the physical limit and vs what naive tools do.

In one run, on the same texts (the first N corpus stories) and the same layers:
  (a) bare base-model forward up to the last needed block, same batches: the physical limit;
  (b) naive: full model(...) with output_hidden_states=True, one text at a time;
  (c) steerkit capture, cold (empty cache);  (d) steerkit capture, warm (from the cache).
Goals: (c)/(a) <= 1.05, (b)/(c) >= 3, (c)/(d) >= 20. Prints a table and writes JSON.
Also reported: (b)/(a), the ceiling of (b)/(c) on this machine (no capture beats the bare forward),
and with --backends the cold time of the nnsight and lens backends relative to hooks (no cache).
Also the bf16 / fp32 capture time ratio (the same model loaded with dtype bfloat16, cold, paired
repeats) and how far bf16's pooled activations are from fp32's (max per-text relative difference).

    .venv/bin/python benchmarks/capture.py [--model smollm2-135m] [--n 200] [--also-tiny] [--backends]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from steerkit.capture import StopForward, capture, default_spread, make_batches, pad, parse_layers, parse_pooling  # noqa: E402
from steerkit.corpus import load as load_corpus  # noqa: E402
from steerkit.models import from_model, load  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare(lm, texts, layers, max_batch_tokens):
    """(a): the same bucketed batches through the base model, stopped after the last block."""
    enc = lm.tokenizer(list(dict.fromkeys(texts))).input_ids
    blocks = lm.adapter.blocks(lm.model)

    def stop(*_):
        raise StopForward

    h = blocks[max(layers)].register_forward_hook(stop)
    base = lm.adapter.base_model(lm.model)
    try:
        for b in make_batches([len(e) for e in enc], max_batch_tokens):
            ids, mask = pad([enc[i] for i in b], int(lm.tokenizer.pad_token_id), "right")
            with torch.inference_mode():
                try:
                    base(input_ids=ids, attention_mask=mask, use_cache=False)
                except StopForward:
                    pass
    finally:
        h.remove()


def naive(lm, texts, layers):
    """(b): what naive tools do: full forward with all hidden states, one text at a time."""
    out = []
    for t in texts:
        ids = lm.tokenizer(t, return_tensors="pt").input_ids
        with torch.inference_mode():
            hs = lm.model(ids, output_hidden_states=True).hidden_states
        out.append([hs[lm.adapter.hidden_states_index(la)][0].mean(0) for la in layers])
    return out


def backends(lm, texts, layers, max_batch_tokens=1024, repeats=2) -> dict[str, float]:
    """Cold capture time of each backend (no cache; interleaved repeats, minimum kept) and its ratio
    to hooks."""
    t = {f"{name}_s": float("inf") for name in ("hooks", "nnsight", "lens")}
    for _ in range(repeats):
        for name in ("hooks", "nnsight", "lens"):
            s = time.perf_counter()
            capture(
                lm,
                texts,
                layers,
                pooling=parse_pooling("mean_after:1"),
                max_batch_tokens=max_batch_tokens,
                backend=name,
            )
            t[f"{name}_s"] = min(t[f"{name}_s"], time.perf_counter() - s)
    for name in ("nnsight", "lens"):
        t[f"{name}/hooks"] = t[f"{name}_s"] / t["hooks_s"]
    return t


def dtype_ratio(spec, lm, texts, layers, max_batch_tokens=1024, repeats=2) -> dict[str, float]:
    """Cold capture (no cache) of the fp32 model and of the same weights loaded in bfloat16,
    interleaved; bf16/fp32 is the median of the paired ratios."""
    b16 = load(spec, dtype="bfloat16")
    kw = {"pooling": parse_pooling("mean_after:1"), "max_batch_tokens": max_batch_tokens}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    res = {}
    for _ in range(repeats):
        for name, m in (("fp32", lm), ("bf16", b16)):
            s = time.perf_counter()
            res[name] = capture(m, texts, layers, **kw)
            times[name].append(time.perf_counter() - s)
    rel = max(
        float(((res["fp32"].resid[la] - res["bf16"].resid[la]).norm(dim=1) / res["fp32"].resid[la].norm(dim=1)).max())
        for la in layers
    )
    return {
        "fp32_s": min(times["fp32"]),
        "bf16_s": min(times["bf16"]),
        "bf16/fp32": statistics.median(b / f for b, f in zip(times["bf16"], times["fp32"], strict=True)),
        "bf16_max_rel_diff": rel,
    }


def bench(lm, texts, layers, max_batch_tokens=1024, repeats=2) -> dict[str, float]:
    """Times of (a)-(d). (a), (c) and (d) run back to back `repeats` times; the ratios are medians
    of the per-repeat ratios (paired, so a drift in machine load cancels), the times are minima."""
    runs: dict[str, list[float]] = {"a_bare": [], "c_cold": [], "d_warm": []}
    for _ in range(repeats):
        s = time.perf_counter()
        bare(lm, texts, layers, max_batch_tokens)
        runs["a_bare"].append(time.perf_counter() - s)
        with tempfile.TemporaryDirectory() as cache:
            s = time.perf_counter()
            capture(
                lm,
                texts,
                layers,
                pooling=parse_pooling("mean_after:1"),
                cache_dir=cache,
                max_batch_tokens=max_batch_tokens,
            )
            runs["c_cold"].append(time.perf_counter() - s)
            s = time.perf_counter()
            warm = capture(
                lm,
                texts,
                layers,
                pooling=parse_pooling("mean_after:1"),
                cache_dir=cache,
                max_batch_tokens=max_batch_tokens,
            )
            runs["d_warm"].append(time.perf_counter() - s)
            assert warm.stats["n_computed"] == 0
    t = {k: min(v) for k, v in runs.items()}
    s = time.perf_counter()
    naive(lm, texts, layers)
    t["b_naive"] = time.perf_counter() - s
    t["c/a"] = statistics.median(c / a for c, a in zip(runs["c_cold"], runs["a_bare"], strict=True))
    t["c/d"] = statistics.median(c / d for c, d in zip(runs["c_cold"], runs["d_warm"], strict=True))
    t["b/c"] = t["b_naive"] / t["c_cold"]
    t["b/a"] = t["b_naive"] / t["a_bare"]  # the ceiling of b/c: no capture beats the bare forward
    t["peak_rss_mb"] = peak_rss_mb()
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2, help="Interleaved repeats of (a) and (c); the minimum counts.")
    ap.add_argument("--also-tiny", action="store_true", help="Also a tiny random Qwen2 on the same texts.")
    ap.add_argument("--tiny-repeats", type=int, default=21, help="Interleaved repeats for the tiny model (cheap).")
    ap.add_argument("--layers", default=None, help="Layer spec (default: extract's 8-layer spread, 25-85%% depth).")
    ap.add_argument("--backends", action="store_true", help="Also time the nnsight and lens backends vs hooks.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capture.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    corpus = load_corpus(ROOT / "corpora")
    texts = [t.text for t in corpus.texts][: args.n]
    results = {}
    lm = load(args.model)
    n_blocks = lm.adapter.n_blocks(lm.model)
    layers = parse_layers(args.layers, n_blocks) if args.layers else default_spread(n_blocks, count=8)
    n_tok = sum(len(lm.tokenizer(t).input_ids) for t in texts)
    results[args.model] = bench(lm, texts, layers, repeats=args.repeats) | {
        "texts": len(texts),
        "tokens": n_tok,
        "layers": layers,
    }
    if args.backends:
        results[args.model] |= backends(lm, texts, layers, repeats=args.repeats)
    results[args.model] |= dtype_ratio(args.model, lm, texts, layers, repeats=args.repeats)
    if args.also_tiny:
        import tiny_models

        tiny = from_model(tiny_models.build("qwen2"), lm.tokenizer, spec="tiny-qwen2")
        tiny.model.resize_token_embeddings(len(lm.tokenizer))
        results["tiny-qwen2"] = bench(tiny, texts, [1, 3], repeats=args.tiny_repeats) | {
            "texts": len(texts),
            "layers": [1, 3],
        }
    for name, r in results.items():
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
