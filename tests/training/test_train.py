"""The training loop on fresh tiny random models: exact resume (also from a corrupt newest
checkpoint), only the claimed parameters change, SIGTERM saves a loadable checkpoint, loading a
finished run back, and the CLI (subprocess SIGTERM, resume, plots, one-line errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tiny_models
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from steerkit.cli import main
from steerkit.models import from_model
from steerkit.phase import CouplingConfig
from steerkit.training import TrainConfig, find_latest_run, load_phase_run, resume, train
from steerkit.training import checkpoint as ck

WORDS = "the cat sat on a warm mat while rain fell over the quiet town and she made tea for her old friend".split()


def _texts(tmp_path, n=12):
    rng = torch.Generator().manual_seed(0)
    stories = []
    for _ in range(n):
        idx = torch.randint(0, len(WORDS), (40,), generator=rng).tolist()
        stories.append(" ".join(WORDS[i] for i in idx) + ".")
    p = tmp_path / "texts.txt"
    p.write_text("\n---\n".join(stories))
    return p


def _lm(tiny_tok, family="llama"):
    return from_model(tiny_models.build(family), tiny_tok, spec=f"tiny-{family}")


def _cfg(text, **kw):
    base = {"model": "tiny", "texts": (str(text),), "seq_len": 16, "batch_size": 2, "steps": 6, "val_every": 2,
            "checkpoint_every": 2, "val_fraction": 0.2, "lr": 0.02, "layer": "0.5"}  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("step_seconds")
    return rows


@pytest.mark.parametrize("coupling, unfreeze, corrupt", [("gate", (), False), ("additive", (1,), True)])
def test_resume_equals_uninterrupted(tmp_path, tiny_tok, coupling, unfreeze, corrupt, caplog):
    text = _texts(tmp_path)
    cfg = _cfg(text, coupling=CouplingConfig(coupling), unfreeze=unfreeze)
    a = train(cfg, tmp_path / "a", lm=_lm(tiny_tok))
    assert a.status == "finished" and a.step == 6
    stop_at = 5 if corrupt else 3
    b = train(cfg, tmp_path / "b", lm=_lm(tiny_tok), on_step=lambda s, m: "stop" if s == stop_at else None)
    assert b.status == "interrupted" and b.step == stop_at
    assert not (tmp_path / "b" / "phase_core.safetensors").exists()
    if corrupt:  # the newest checkpoint (step 5) is damaged: resume falls back to step 4
        st = tmp_path / "b" / "checkpoints" / "step-00000005" / "state.safetensors"
        raw = bytearray(st.read_bytes())
        raw[-1] ^= 0xFF
        st.write_bytes(bytes(raw))
    b2 = resume(tmp_path / "b", lm=_lm(tiny_tok))
    assert b2.status == "finished" and b2.step == 6
    if corrupt:
        assert "corrupt" in caplog.text and "step 5" in caplog.text
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")  # every loss, R, U, grad norm, val loss
    wa, wb = load_file(tmp_path / "a" / "phase_core.safetensors"), load_file(tmp_path / "b" / "phase_core.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(k.startswith("base.model.layers.1.") for k in wa) == bool(unfreeze)


def test_only_claimed_parameters_change(tmp_path, tiny_tok):
    lm = _lm(tiny_tok)
    before = {k: v.detach().clone() for k, v in lm.model.named_parameters()}
    grads_before = {k: v.requires_grad for k, v in lm.model.named_parameters()}
    cfg = _cfg(_texts(tmp_path), steps=3, unfreeze=(2,))
    train(cfg, tmp_path / "r", lm=lm)
    changed = {k for k, v in lm.model.named_parameters() if not torch.equal(v, before[k])}
    block2 = {k for k in before if k.startswith("model.layers.2.")}
    assert changed and changed <= block2  # only the unfrozen block moved ...
    assert len(changed) >= len(block2) - 2  # ... and (nearly) all of it did
    assert {k: v.requires_grad for k, v in lm.model.named_parameters()} == grads_before
    # the phase parameters moved away from their seeded initial values
    torch.manual_seed(cfg.seed)
    from steerkit.training.runs import build_phase

    _, _, init = build_phase(cfg, 32)
    final = load_file(tmp_path / "r" / "phase_core.safetensors")
    for name in ("core.omega", "core.drive.weight", "coupling.alpha", "coupling.u"):
        assert not torch.equal(final[f"phase.{name}"], init.state_dict()[name]), name
    assert torch.equal(final["phase.core.K"], init.state_dict()["core.K"])  # K is not learnable here


def test_sigterm_saves_loadable_checkpoint_then_resume_and_load(tmp_path, tiny_tok, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path))
    cfg = _cfg(_texts(tmp_path), steps=4, checkpoint_every=100)
    old = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "sig"
    r = train(cfg, run, lm=_lm(tiny_tok), on_step=lambda s, m: os.kill(os.getpid(), signal.SIGTERM) if s == 2 else None)
    assert r.status == "interrupted" and r.signal == signal.SIGTERM and r.step == 2
    assert signal.getsignal(signal.SIGTERM) == old
    c = ck.latest_checkpoint(run / "checkpoints")
    assert c is not None and c.step == 2 and "param.phase.core.omega" in c.tensors
    assert find_latest_run() is None  # unfinished runs are never "the latest trained core"
    lm = _lm(tiny_tok)
    assert resume(run, lm=lm).status == "finished"
    assert find_latest_run() == run and find_latest_run(tmp_path / "nowhere") is None
    lm2, core, coupling, config = load_phase_run(run, lm=lm)
    assert lm2 is lm and config.layer == 2 and coupling.name == "additive" and not core.training
    last = ck.latest_checkpoint(run / "checkpoints")
    assert last.step == 4
    for k, v in {**dict(core.named_parameters()), **dict(core.named_buffers())}.items():
        assert torch.equal(v, last.tensors[f"param.phase.core.{k}"]), k


def test_cli_sigterm_resume_and_plots(tmp_path, tiny_dir_factory):
    model_dir, text = tiny_dir_factory("llama"), _texts(tmp_path, 30)
    args = ["train-phase", "--model", str(model_dir), "--text", str(text), "--seq-len", "16", "--batch-size", "2",
            "--out", str(tmp_path / "runs"), "--name", "cli", "--checkpoint-every", "1000", "--val-every", "3"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "import sys; from steerkit.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--steps", "5000"], env=env, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "runs" / "cli" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err
    c = ck.latest_checkpoint(tmp_path / "runs" / "cli" / "checkpoints")
    assert c is not None and c.step == len(metrics.read_text().splitlines())
    res = CliRunner().invoke(
        main, ["train-phase", "--resume", "--out", str(tmp_path / "runs"), "--steps", str(c.step + 2)]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "cli" / "phase_core.safetensors").is_file()
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(range(1, c.step + 3))
    res = CliRunner().invoke(main, ["plot-metrics", str(tmp_path / "runs" / "cli")])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "runs" / "cli" / "plots").glob("*.png"))
    assert pngs == ["grad_ratio.png", "loss.png", "r.png", "ru.png", "tone.png", "u.png"]
    assert all((tmp_path / "runs" / "cli" / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--layer", "40"], "out of range"),
        (["--lr-factor", "0.9"], "--lr-factor must be a number in [0.5, 0.7]"),
        (["--coupling", "gate", "--direction", "x.safetensors"], "direction"),
        (["--resume", "--name", "nothing"], "nothing to resume"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, tiny_dir_factory, extra, needle):
    model_dir, text = tiny_dir_factory("llama"), _texts(tmp_path)
    args = ["train-phase", "--model", str(model_dir), "--text", str(text), "--out", str(tmp_path / "runs"), *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
