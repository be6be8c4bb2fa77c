"""steer-eval speed: batched vs one generation at a time on the same rows, and steering overhead.

(a) batched: every row of the grid slice (arms x prompts x seeds) in one left-padded generate(),
    each row with its own direction (RowSteer), as steer-eval runs;
(b) one at a time: the same rows, one generate() per row (the same sampler seeds, so the same
    tokens where float rounding does not flip a near-tie; the agreement is reported);
(c) steering overhead: plain batched generate() vs the same with RowSteer adding a direction to
    every row, and vs `steering.steer` with one direction; repeats alternate (ABAB...) and the
    median of the paired ratios is reported, so load changes hit both alike.
Also the time per row of the other two stages (NLL pass, re-reading capture).

    .venv/bin/python benchmarks/steer_eval.py [--model smollm2-135m] [--arms 3] [--prompts 8]
        [--seeds 2] [--max-new-tokens 20] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from steerkit.experiments.prompts import arm_seed
from steerkit.experiments.steer_eval.generate import continuation_nll, reread
from steerkit.experiments.steer_eval.inputs import default_prompts_path, read_prompts
from steerkit.generation import GenSpec, RowSteer, generate_chunk, trim
from steerkit.models import load
from steerkit.steering import steer
from steerkit.vectors import ConceptVectors


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--arms", type=int, default=3, help="steered arms (directions) in the slice")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="paired repeats of the overhead measurement")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model)
    tok = lm.tokenizer
    n_blocks, hidden = lm.adapter.n_blocks(lm.model), lm.adapter.hidden_size(lm.model)
    layer = n_blocks // 2
    texts = read_prompts(default_prompts_path())[: args.prompts]
    pids = [list(tok(t)["input_ids"]) for t in texts]
    units = [(p, s) for p in range(len(pids)) for s in range(args.seeds)]
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(args.arms, hidden, generator=g), dim=1) * 4.0
    owners = [p for _ in range(args.arms) for p, _ in units]
    seeds = [arm_seed(0, p, 0, s) for _ in range(args.arms) for p, s in units]
    delta = torch.cat([d.expand(len(units), hidden) for d in dirs])  # (rows, hidden)
    spec = GenSpec(args.max_new_tokens)
    rows = len(owners)

    def batched() -> torch.Tensor:
        with torch.no_grad(), RowSteer.add(lm, layer, delta, "absolute").attached() as hook:
            return generate_chunk(lm, "batched", pids, owners, seeds, hook, spec)

    def one_at_a_time() -> torch.Tensor:
        outs = []
        for r in range(rows):
            with torch.no_grad(), RowSteer.add(lm, layer, delta[r : r + 1], "absolute").attached() as hook:
                outs.append(generate_chunk(lm, "batched", pids, [owners[r]], [seeds[r]], hook, spec))
        return torch.cat(outs)

    batched()  # warm-up
    tb, tok_b = _timed(batched)
    t1, tok_1 = _timed(one_at_a_time)
    agree = float((tok_b == tok_1).all(1).float().mean())
    # (c) overhead: plain vs RowSteer vs steering.steer on the baseline rows (units only)
    base_owners, base_seeds = [p for p, _ in units], [arm_seed(0, p, 0, s) for p, s in units]
    one = torch.zeros(1, hidden)
    one[0] = dirs[0]
    cv = ConceptVectors(
        ["x"], [layer], {layer: (dirs[0] / dirs[0].norm())[None]}, {layer: dirs[0].norm()[None]}, {}, {}
    )

    def plain() -> Any:
        with torch.no_grad():
            return generate_chunk(lm, "batched", pids, base_owners, base_seeds, None, spec)

    def rowsteer() -> Any:
        with torch.no_grad(), RowSteer.add(lm, layer, one.expand(len(units), hidden), "absolute").attached() as hook:
            return generate_chunk(lm, "batched", pids, base_owners, base_seeds, hook, spec)

    def steer_one() -> Any:
        with torch.no_grad(), steer(lm.model, cv, {"x": 1.0}, layer, adapter=lm.adapter):
            return generate_chunk(lm, "batched", pids, base_owners, base_seeds, None, spec)

    ratios: dict[str, list[float]] = {"rowsteer": [], "steer": []}
    for _ in range(args.repeats):
        a, _ = _timed(plain)
        b, _ = _timed(rowsteer)
        c, _ = _timed(steer_one)
        ratios["rowsteer"].append(b / a)
        ratios["steer"].append(c / a)
    conts = trim(tok_b, tok.eos_token_id)
    t_nll, _ = _timed(lambda: continuation_nll(lm, [pids[o] for o in owners], conts))
    cv_read = ConceptVectors(["x"], [layer], cv.vectors, cv.norms, {"pooling": "mean_after:1"}, {})
    t_read, _ = _timed(lambda: reread(lm, cv_read, layer, [tok.decode(c, skip_special_tokens=True) for c in conts]))
    res = {
        "model": args.model,
        "rows": rows,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
        "batched_s": round(tb, 2),
        "one_at_a_time_s": round(t1, 2),
        "batched_speedup": round(t1 / tb, 2),
        "same_tokens": agree,
        "rowsteer_overhead": round(statistics.median(ratios["rowsteer"]), 4),
        "steer_overhead": round(statistics.median(ratios["steer"]), 4),
        "gen_s_per_row_batched": round(tb / rows, 3),
        "nll_s_per_row": round(t_nll / rows, 3),
        "reread_s_per_row": round(t_read / rows, 3),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
