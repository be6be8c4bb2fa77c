"""Preference training resumes after SIGKILL (issue 17): a DPO run killed without any cleanup after
its step-2 checkpoint and part of step 3 resumes to the same metrics and weights as an
uninterrupted run (bit for bit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tiny_models
import torch
from safetensors.torch import load_file

from steerkit.models import from_model
from steerkit.training import TrainConfig, resume, train

TESTS = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a warm mat while rain fell over the quiet town and she made tea for her old friend".split()

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import tiny_models, tiny_tokenizer
    from steerkit.models import from_model
    from steerkit.training import TrainConfig, train
    cfg = TrainConfig(**json.loads(sys.argv[2]))
    lm = from_model(tiny_models.build("llama"), tiny_tokenizer.build(), spec="tiny-llama")
    def on_step(step, metrics):
        if step == 3:  # step 3 is in metrics.jsonl, its checkpoint is not: die without any cleanup
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, sys.argv[3], lm=lm, on_step=on_step, handle_signals=False)
    """
)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("step_seconds")
    return rows


def test_dpo_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_tok):
    g = torch.Generator().manual_seed(1)

    def words(k: int) -> str:
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist())

    rows = [{"prompt": words(3), "chosen": " " + words(3) + ".", "rejected": " " + words(4) + "!", "scenario": f"s{i % 6}"}
            for i in range(12)]  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = {"model": "tiny", "objective": "dpo", "pairs": str(pairs), "seq_len": 24, "batch_size": 2, "steps": 4,
          "val_every": 2, "checkpoint_every": 2, "lr": 0.02, "layer": 1, "val_fraction": 0.34}  # fmt: skip
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(TESTS), json.dumps(kw), str(killed)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "phase_core.safetensors").exists() and [r["step"] for r in _rows(killed)] == [1, 2, 3]
    lm = from_model(tiny_models.build("llama"), tiny_tok, spec="tiny-llama")
    assert resume(killed, lm=lm, handle_signals=False).status == "finished"
    full = tmp_path / "full"
    lm = from_model(tiny_models.build("llama"), tiny_tok, spec="tiny-llama")
    assert train(TrainConfig(**kw), full, lm=lm, handle_signals=False).status == "finished"
    assert _rows(killed) == _rows(full)
    a, b = load_file(killed / "phase_core.safetensors"), load_file(full / "phase_core.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
