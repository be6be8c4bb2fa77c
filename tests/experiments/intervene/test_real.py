"""End to end on smollm2-135m with a briefly trained core: the report completes, the negative control
is exactly null, the positive control is detected, the washout profile covers every later block.
Kept short: 8 default prompts with 8-word continuations, 2 seeds, 8 new tokens, one R level."""

from __future__ import annotations

import json
import time

import pytest
import torch

from steerkit.experiments import InterveneConfig, intervene, load_prompts
from steerkit.training import TrainConfig, train

TEACHER_FORCED = ("kl", "entropy", "nll", "topk")


@pytest.mark.real
def test_smollm_intervene_end_to_end(smollm, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t0 = time.perf_counter()
        cfg = TrainConfig(model="smollm2-135m", seq_len=32, batch_size=2, steps=4, val_every=4, checkpoint_every=100)
        run = train(cfg, tmp_path / "runs" / "phase", lm=smollm, handle_signals=False).run_dir
        prompts = tmp_path / "prompts.jsonl"
        with open(prompts, "w") as f:
            for p in load_prompts()[:8]:
                short = " " + " ".join((p.continuation or "").split()[:8])
                f.write(json.dumps({"prompt": p.text, "continuation": short}) + "\n")
        icfg = InterveneConfig(levels=(0.2,), seeds=2, max_new_tokens=8)
        out, rep = intervene(icfg, run, prompts, out=tmp_path / "iv", lm=smollm)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in out.iterdir()) == [
        "dose_response.png", "intervention.json", "intervention.md", "run.json", "washout.png"
    ]  # fmt: skip
    ex = rep["experiments"]
    layer = rep["layer"]
    assert rep["sampler"] == "batched" and 0 < layer < 29
    for t in ex["negative"]["tests"]:  # detached: nothing may change
        assert not t["significant"], t
        if t["measure"] in TEACHER_FORCED:
            assert t["mean"] == 0.0 and t["p"] == 1.0, t
    pos = {t["measure"]: t for t in ex["positive"]["tests"]}
    assert pos["kl"]["significant"] and pos["kl"]["mean"] > 0
    w = ex["real"]["washout"][0]
    assert list(w["profile"]) == [f"block_{k}" for k in range(layer, 30)] + ["final_norm", "logits"]
    assert w["summary"]["injected"] > 0
    assert all(v["raw"] == 0.0 for v in ex["negative"]["washout"][0]["profile"].values())
    md = (out / "intervention.md").read_text()
    assert "## Verdicts" in md and "Negative control" in md
    # what the note reports (visible with -s)
    print(f"\nwall {wall:.1f} s (training 4 steps + intervene {rep['seconds']:.1f} s)")
    print("headline:", rep["verdicts"]["headline"])
    for s in rep["verdicts"]["summary"]:
        print(" -", s)
    for m, s in rep["verdicts"]["measures"].items():
        print(f" [{m}]", s)
    for name in ("real", "negative", "positive"):
        print(
            name,
            {t["measure"]: (round(t["mean"], 6), round(t["p"], 4), round(t["p_holm"], 4)) for t in ex[name]["tests"]},
        )
    for name in ("real", "positive"):
        prof = ex[name]["washout"][0]["profile"]
        print(name, "washout dir %:", {k: round(100 * v["dir"], 3) for k, v in prof.items()})
