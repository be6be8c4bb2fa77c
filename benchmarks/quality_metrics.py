"""Benchmark: every quality metric on synthetic data at the scale of a large model.

Default: 200 concepts x 20 positives (N = 4000 texts) x 8 layers, hidden 4096, MLP down
(4096, 11008), 32 heads x 128. Prints the wall time of each metric summed over layers, the total,
and the peak RSS. Data generation is not timed. Goal: total < 60 s on 2 CPU cores.

    .venv/bin/python benchmarks/quality_metrics.py [--layers 8 --concepts 200 ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from steerkit.quality import heads as qh
from steerkit.quality import heldout as qr
from steerkit.quality import metrics as qm


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_layer(args: argparse.Namespace, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One layer's synthetic activations: concept centres (a shared low-rank part plus a private
    part) + isotropic noise, per-head activations with the same labels, a random MLP down."""
    c, h = args.concepts, args.hidden
    lab = torch.arange(c).repeat_interleave(args.positives)
    shared = torch.randn(c, 8, generator=gen) @ torch.randn(8, h, generator=gen)
    centres = 0.3 * shared + 0.5 * torch.randn(c, h, generator=gen)
    acts = centres[lab] + torch.randn(lab.numel(), h, generator=gen)
    head_centres = 0.5 * torch.randn(c, args.heads, args.head_dim, generator=gen)
    head_acts = head_centres[lab] + torch.randn(lab.numel(), args.heads, args.head_dim, generator=gen)
    w_down = torch.randn(h, args.intermediate, generator=gen) / args.intermediate**0.5
    return {"acts": acts, "labels": lab, "heads": head_acts, "w_down": w_down}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=200)
    ap.add_argument("--positives", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    valence = torch.rand(args.concepts, generator=gen) * 2 - 1
    arousal = torch.rand(args.concepts, generator=gen)
    times: dict[str, float] = defaultdict(float)
    gen_time = 0.0
    base_rss = rss_mib()

    def timed(name: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        times[name] += time.perf_counter() - t0
        return out

    print(
        f"{args.concepts} concepts x {args.positives} positives (N={args.concepts * args.positives}) x "
        f"{args.layers} layers, hidden {args.hidden}, MLP down ({args.hidden}, {args.intermediate}), "
        f"{args.heads} heads x {args.head_dim}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for _ in range(args.layers):
        t0 = time.perf_counter()
        data = make_layer(args, gen)
        gen_time += time.perf_counter() - t0
        acts, lab = data["acts"], data["labels"]
        member = lab.unsqueeze(0) == torch.arange(args.concepts).unsqueeze(1)  # (C, N)

        directions = timed("prep: CAA vectors", lambda a=acts, m=member: qm.unit_rows(qm.diff_of_means(a, m)))
        neg_means = timed("prep: negatives' means", qm.group_means, acts, ~member)
        pad = timed("prep: pad positives", qm.pad_groups, acts, member)
        timed("1 rank (SVD)", qm.rank_stats, pad.x, pad.mask)
        timed("2 story agreement", qm.story_agreement, pad.x, pad.mask, directions, neg_means)
        timed("3 single-neuron alignment", qm.neuron_alignment, directions, data["w_down"])
        timed("4 nearest concepts", qm.nearest_concepts, directions)
        red = timed("5 redundancy (ridge R^2)", qm.redundancy, directions)
        timed("5 redundancy (ridge R^2)", qm.top_coefficients, red.coef)
        timed("6 per-head decomposition", qh.head_decomposition, data["heads"], member)
        timed("7 held-out readout", qr.held_out_readout, acts, lab, k_folds=args.folds, seed=args.seed)
        timed("8 geometry (PCA + corr)", qm.concept_geometry, directions, {"valence": valence, "arousal": arousal})
        del data, acts, pad

    total = sum(times.values())
    width = max(map(len, times))
    print(f"\n{'metric':<{width}}  {'total s':>8}  {'per layer s':>11}")
    for name, t in times.items():
        print(f"{name:<{width}}  {t:8.2f}  {t / args.layers:11.3f}")
    print(f"{'TOTAL':<{width}}  {total:8.2f}  {total / args.layers:11.3f}")
    print(f"\n(data generation, not timed above: {gen_time:.1f} s)")
    print(f"peak RSS {rss_mib():.0f} MiB (after imports {base_rss:.0f} MiB)")
    print(f"load average at the end (1/5/15 min): {os.getloadavg()} -- other processes slow every figure above")


if __name__ == "__main__":
    main()
