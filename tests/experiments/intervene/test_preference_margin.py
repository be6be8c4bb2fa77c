"""`intervene` on a DPO run adds the held-out preference margin measure: its free arm equals the
training's own held-out margin, the negative control (coupling detached) shows exactly no effect,
and it goes through the same tests, Holm correction and report as every other measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.helpers import WORDS, word_prompts
from steerkit.experiments import InterveneConfig, intervene
from steerkit.phase import CouplingConfig
from steerkit.training import TrainConfig, train


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_dir_factory):
    root = tmp_path_factory.mktemp("pm")
    g = torch.Generator().manual_seed(3)

    def words(k):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist())

    rows = [{"prompt": words(3), "chosen": " " + words(3) + ".", "rejected": " " + words(4) + "!", "scenario": f"s{i % 4}"}
            for i in range(12)]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(tiny_dir_factory("llama")), objective="dpo", pairs=str(root / "pairs.jsonl"), seq_len=24,
                      batch_size=2, steps=3, val_every=3, val_fraction=0.5, layer=2, lr=0.05,
                      coupling=CouplingConfig("additive", alpha=0.5))  # fmt: skip
    train(cfg, root / "run", handle_signals=False)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p.text, "continuation": p.continuation}) + "\n" for p in word_prompts(3))
    )
    return root


def test_margin_measure_free_arm_controls_and_report(dpo_run):
    cfg = InterveneConfig(levels=(0.1, 0.9), seeds=1, max_new_tokens=2, permutations=100, bootstrap=100)
    out, rep = intervene(cfg, dpo_run / "run", dpo_run / "prompts.jsonl", out=dpo_run / "iv")
    raw = json.loads((out / "intervention.json").read_text())
    ex = raw["experiments"]
    real = np.asarray(ex["real"]["per_prompt"]["pref_margin"])  # (n held-out pairs, levels)
    neg = np.asarray(ex["negative"]["per_prompt"]["pref_margin"])
    pos = np.asarray(ex["positive"]["per_prompt"]["pref_margin"])
    val = json.loads((dpo_run / "run" / "config.json").read_text())["resolved"]["n_pairs"][1]
    assert real.shape == neg.shape == pos.shape == (val, 2)
    assert np.all(neg == 0.0)  # detached: R computed, not applied -> the margin cannot move
    assert np.abs(real).max() > 0 and np.abs(pos).max() > 0
    # the free arm's margin is the trained policy's held-out margin, as training measured it
    last = [json.loads(x) for x in (dpo_run / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    free = [t["free_mean"] for t in ex["real"]["tests"] if t["measure"] == "pref_margin"]
    assert free[0] == pytest.approx(last["val/logps/chosen"] - last["val/logps/rejected"], abs=1e-4)
    rows = [t for t in ex["real"]["tests"] if t["measure"] == "pref_margin"]
    assert len(rows) == 2 and all("p_holm" in t and len(t["ci"]) == 2 for t in rows)
    assert "pref_margin" in (out / "intervention.md").read_text()
    assert "pref_margin" in rep["verdicts"]["measures"]


def test_ce_run_has_no_margin_measure():
    from steerkit.experiments.intervene.experiment import load_heldout_pairs

    assert load_heldout_pairs(TrainConfig(model="tiny"), None) is None
