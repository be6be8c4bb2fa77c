"""Phase-core overhead: a training step with the core vs the same step without it.

Both steps run forward, L = CE + lam |U - U_target|, backward and an AdamW step on the same
model, batch and block, and differ only in what is trained at the coupled block:
  frozen:   with = PhaseCore + additive coupling   vs  without = a learned (hidden,) offset
            (the cheapest trainable at the same block: the backward pass covers the same blocks)
  unfrozen: the coupled block's own weights are trained in both, plus the core in `with`
Steps alternate with/without (ABAB...) so load changes hit both alike; medians are reported.

    .venv/bin/python benchmarks/phase_overhead.py [--model smollm2-135m] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from steerkit.models import load
from steerkit.phase import CouplingConfig, PhaseConfig, PhaseCore, PhaseHook, make_coupling
from steerkit.phase.metrics import normalized_entropy
from steerkit.training.data import load_texts, make_chunks


class _Offset:
    """Without the core: block output + a learned (hidden,) vector, through a forward hook."""

    def __init__(self, lm: Any, layer: int, hidden: int) -> None:
        self.lm, self.layer = lm, layer
        self.b = torch.nn.Parameter(torch.zeros(hidden))

    def __enter__(self) -> _Offset:
        a = self.lm.adapter
        blk = a.blocks(self.lm.model)[self.layer]
        self.h = blk.register_forward_hook(lambda m, i, o: a.replace_hidden(o, a.get_hidden(o) + self.b))
        return self

    def __exit__(self, *exc: object) -> None:
        self.h.remove()


def _step(lm: Any, ctx: Any, opt: torch.optim.Optimizer, ids: torch.Tensor) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    with ctx:
        logits = lm.model(ids, use_cache=False).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss = ce + 0.1 * (normalized_entropy(logits) - 0.5).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def core_only(hidden: int, shape: tuple[int, int], reps: int = 5) -> dict[str, float]:
    """The core + coupling alone on a random (batch, seq, hidden) input, forward and backward."""
    torch.manual_seed(0)
    core = PhaseCore(hidden, PhaseConfig())
    coupling = make_coupling(CouplingConfig("additive"), hidden)
    h = torch.randn(*shape, hidden)
    wall, cpu = [], []
    for i in range(reps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        out = core(h)
        coupling.couple(h, out.r).sum().backward()
        if i:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def measure(lm: Any, ids: torch.Tensor, layer: int, unfreeze: bool, steps: int, warmup: int = 2) -> dict[str, Any]:
    model = lm.model
    hidden = int(model.get_input_embeddings().weight.shape[1])
    for p in model.parameters():
        p.requires_grad_(False)
    block_params = list(lm.adapter.blocks(model)[layer].parameters())
    if unfreeze:
        for p in block_params:
            p.requires_grad_(True)
    torch.manual_seed(0)
    core = PhaseCore(hidden, PhaseConfig())
    coupling = make_coupling(CouplingConfig("additive"), hidden)
    offset = _Offset(lm, layer, hidden)
    extra = block_params if unfreeze else []
    opt_with = torch.optim.AdamW([*core.parameters(), *coupling.parameters(), *extra], lr=1e-6)
    opt_without = torch.optim.AdamW([offset.b, *extra], lr=1e-6)
    with_t, without_t, with_c, without_c = [], [], [], []
    for i in range(warmup + steps):
        a, ac = _step(lm, PhaseHook(lm, core, coupling, layer), opt_with, ids)
        b, bc = _step(lm, offset, opt_without, ids)
        if i >= warmup:
            with_t.append(a)
            without_t.append(b)
            with_c.append(ac)
            without_c.append(bc)
    for p in model.parameters():
        p.requires_grad_(False)
    ratios = [a / b for a, b in zip(with_t, without_t, strict=True)]
    return {
        "with_core_s": statistics.median(with_t),
        "without_core_s": statistics.median(without_t),
        "ratio_of_medians": statistics.median(with_t) / statistics.median(without_t),
        "median_pair_ratio": statistics.median(ratios),
        "cpu_ratio_of_medians": statistics.median(with_c) / statistics.median(without_c),
        "with_core_all": [round(x, 4) for x in with_t],
        "without_core_all": [round(x, 4) for x in without_t],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="Also write the result here.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model, device=args.device)
    layer = lm.adapter.n_blocks(lm.model) // 2
    chunks = make_chunks(lm.tokenizer, load_texts(()), args.seq_len, 0.1, 0)
    ids = chunks.train[: args.batch_size].to(args.device)
    res: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "batch": list(ids.shape),
        "layer": layer,
        "phase": PhaseConfig().to_dict(),
    }
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    res["core_only"] = core_only(hidden, (ids.shape[0], ids.shape[1]))
    print(f"core + coupling alone (fwd+bwd): {res['core_only']['wall_s']:.4f} s wall", flush=True)
    for name, unfreeze in (("frozen", False), ("unfrozen_block", True)):
        res[name] = measure(lm, ids, layer, unfreeze, args.steps)
        r = res[name]
        r["core_share_of_step"] = res["core_only"]["wall_s"] / r["without_core_s"]
        print(
            f"{name:15s} with core {r['with_core_s']:.3f} s, without {r['without_core_s']:.3f} s, "
            f"ratio {r['ratio_of_medians']:.3f} (paired {r['median_pair_ratio']:.3f}, cpu time {r['cpu_ratio_of_medians']:.3f})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
