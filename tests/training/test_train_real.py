"""Real-model training tests on smollm2-135m: a few steps lower the loss on a tiny text and
touch only the phase core; resume equals an uninterrupted run; SIGTERM leaves a loadable
checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from steerkit.phase import PhaseHook
from steerkit.training import TrainConfig, load_phase_run, resume, train
from steerkit.training import checkpoint as ck
from steerkit.training.data import load_texts, make_chunks
from steerkit.training.runs import build_phase

pytestmark = pytest.mark.real

SENTENCES = [
    "The little boat drifted across the lake while the children sang songs about the summer sun.",
    "Every morning the baker opened the shop, lit the ovens and waited for the first warm smell of bread.",
    "The old dog slept by the fire, dreaming of rabbits and long walks through the autumn woods.",
    "She packed her bag, locked the door and walked to the station in the grey morning light.",
    "The garden was full of bees, and the roses leaned over the wall toward the quiet street.",
]


@pytest.fixture
def tiny_text(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("\n---\n".join(s + " " + SENTENCES[(i + 1) % 5] for i, s in enumerate(SENTENCES)))
    return p


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _ce(lm, core, coupling, layer, ids) -> float:
    with torch.no_grad(), PhaseHook(lm, core, coupling, layer):
        logits = lm.model(ids, use_cache=False).logits[:, :-1]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def test_few_steps_lower_loss_and_train_only_the_core(smollm, tiny_text, tmp_path):
    cfg = TrainConfig(texts=(str(tiny_text),), seq_len=24, batch_size=2, steps=5, val_every=5, lr=0.02,
                      val_fraction=0.2, checkpoint_every=100)  # fmt: skip
    chunks = make_chunks(smollm.tokenizer, load_texts(cfg.texts), cfg.seq_len, cfg.val_fraction, cfg.seed)
    before = _digest(smollm.model)
    flags = [p.requires_grad for p in smollm.model.parameters()]
    torch.manual_seed(cfg.seed)  # the run's own initialisation, rebuilt independently
    core0, coupling0, init = build_phase(cfg, 576)
    res = train(cfg, tmp_path / "run", lm=smollm)
    assert res.status == "finished"
    assert _digest(smollm.model) == before  # the frozen base did not move
    assert [p.requires_grad for p in smollm.model.parameters()] == flags  # restored after training
    lm, core1, coupling1, conf = load_phase_run(tmp_path / "run", lm=smollm)
    assert conf.layer == 14  # round(0.5 * 29): the middle block
    ce0 = _ce(lm, core0, coupling0, conf.layer, chunks.train)
    ce1 = _ce(lm, core1, coupling1, conf.layer, chunks.train)
    assert ce1 < ce0 - 0.01, (ce0, ce1)
    final = load_file(tmp_path / "run" / "phase_core.safetensors")
    assert all(k.startswith("phase.") for k in final)  # nothing of the base is claimed
    moved = {k for k, v in init.state_dict().items() if not torch.equal(final[f"phase.{k}"], v)}
    assert moved == {"core.omega", "core.drive.weight", "core.drive.bias", "coupling.alpha", "coupling.u"}
    summary = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert summary["trainable"] == {"phase": 16 + 576 * 16 + 16 + 1 + 576}


def test_resume_equals_uninterrupted_and_sigterm_checkpoint(smollm, tiny_text, tmp_path):
    cfg = TrainConfig(texts=(str(tiny_text),), seq_len=16, batch_size=2, steps=4, val_every=2, lr=0.02,
                      val_fraction=0.2, checkpoint_every=100)  # fmt: skip
    train(cfg, tmp_path / "a", lm=smollm)

    def kill_at_2(step, m):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    b = train(cfg, tmp_path / "b", lm=smollm, on_step=kill_at_2)
    assert b.status == "interrupted" and b.signal == signal.SIGTERM
    c = ck.latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert c is not None and c.step == 2 and c.meta["metrics"]["step"] == 2
    assert resume(tmp_path / "b", lm=smollm).status == "finished"

    def rows(d):
        out = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "step_seconds"} for r in out]

    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]  # exactly, not approximately
    assert ra == rb
