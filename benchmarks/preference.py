"""Cost of preference training: a DPO step vs a CE step on the same batch size, and the one-off
reference precompute.

Both steps run forward, loss, backward and an AdamW step of the phase core + additive coupling on
the same model and block. A CE step sees `batch` chunks of seq_len tokens; a DPO step sees `batch`
pairs, i.e. 2 x batch sequences of at most seq_len tokens (chosen and rejected in one forward), so
about 2x is expected. Steps alternate CE / DPO (ABAB...) so load changes hit both alike; medians and
their ratio are reported. The reference precompute is the no-grad pass over every pair that DPO
runs once before step 1.

    .venv/bin/python benchmarks/preference.py [--model smollm2-135m] [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from steerkit.models import load
from steerkit.phase import CouplingConfig, PhaseConfig, PhaseCore, PhaseHook, make_coupling
from steerkit.training.data import load_texts, make_chunks
from steerkit.training.objectives import ce_u_loss, completion_logps, dpo_loss
from steerkit.training.pairs import load_pairs, pair_batch, tokenize_pairs
from steerkit.training.preference import pad_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", default="corpora/preferences/valence.jsonl")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per objective (after one warm-up each)")
    ap.add_argument("--reference-pairs", type=int, default=16, help="pairs timed for the reference precompute")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    lm = load(a.model)
    model = lm.model
    layer = lm.adapter.n_blocks(model) // 2
    hidden = int(model.get_input_embeddings().weight.shape[1])
    torch.manual_seed(0)
    core = PhaseCore(hidden, PhaseConfig())
    coupling = make_coupling(CouplingConfig("additive"), hidden)
    opt = torch.optim.AdamW([*core.parameters(), *coupling.parameters()], lr=1e-3)
    for p in model.parameters():
        p.requires_grad_(False)
    chunks = make_chunks(lm.tokenizer, load_texts(()), a.seq_len, 0.1, 0).train
    tp = tokenize_pairs(lm.tokenizer, load_pairs(a.pairs), a.seq_len)
    pad = pad_token(lm.tokenizer)
    n = len(tp)

    def ce_step(i: int) -> float:
        ids = chunks[(i * a.batch) % (len(chunks) - a.batch) :][: a.batch]  # (batch, seq)
        t0 = time.perf_counter()
        loss, _ = ce_u_loss(model(ids, use_cache=False).logits, ids, 0.1, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    def dpo_step(i: int) -> float:
        idx = [(i * a.batch + k) % n for k in range(a.batch)]
        ids, att, cm = pair_batch(tp, idx, pad)  # (2 batch, T)
        t0 = time.perf_counter()
        sums, _ = completion_logps(model(ids, attention_mask=att, use_cache=False).logits, ids, cm)
        ref = sums.detach() - 0.01  # stands in for the stored reference (a lookup in training)
        losses, _, _ = dpo_loss(sums[: a.batch], sums[a.batch :], ref[: a.batch], ref[a.batch :], 0.1)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
        return time.perf_counter() - t0

    ce, dpo = [], []
    with PhaseHook(lm, core, coupling, layer):
        ce_step(0), dpo_step(0)  # warm-up
        for i in range(1, a.steps + 1):
            ce.append(ce_step(i))
            dpo.append(dpo_step(i))
        m = min(a.reference_pairs, n)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, m, a.batch):
                ids, att, cm = pair_batch(tp, list(range(i, min(m, i + a.batch))), pad)
                completion_logps(model(ids, attention_mask=att, use_cache=False).logits, ids, cm)
        ref_s = (time.perf_counter() - t0) / m
    ce_tokens = a.batch * a.seq_len
    dpo_tokens = sum(min(len(tp.prompt[i]) + len(s[i]), a.seq_len) for i in range(n) for s in (tp.chosen, tp.rejected))
    out: dict[str, Any] = {
        "model": a.model,
        "seq_len": a.seq_len,
        "batch": a.batch,
        "ce_step_s": statistics.median(ce),
        "dpo_step_s": statistics.median(dpo),
        "dpo_over_ce": statistics.median(dpo) / statistics.median(ce),
        "ce_tokens_per_step": ce_tokens,
        "dpo_tokens_per_step_mean": dpo_tokens / n * a.batch,
        "reference_s_per_pair": ref_s,
        "reference_s_all_pairs_estimate": ref_s * n,
        "n_pairs": n,
        "load_average_1min": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
    }
    for k, v in out.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
