"""Checkpoint round trips (optimizer, RNG, checksums, keep-last), the lr controller traced by
hand, gradient ratios, collapse detection and the deterministic data order."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from steerkit.training import checkpoint as ck
from steerkit.training import diagnostics as dg
from steerkit.training.data import batch_indices


def _opt_after_steps(params, n):
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01)
    for _ in range(n):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    return opt


def test_optimizer_state_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = _opt_after_steps(a, 3)
    tensors, meta = ck.flatten_optimizer(opt.state_dict())
    path = ck.save_checkpoint(tmp_path, 3, tensors, {"optimizer": meta}, keep_last=2)
    c = ck.read_checkpoint(path)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt2 = torch.optim.AdamW(b, lr=0.1, weight_decay=0.01)
    opt2.load_state_dict(ck.unflatten_optimizer(c.tensors, c.meta["optimizer"]))
    for o, ps in ((opt, a), (opt2, b)):  # one more step on each: bitwise equal
        o.zero_grad()
        sum((p**2).sum() for p in ps).backward()
        o.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)
    assert json.loads((path / "meta.json").read_text())["step"] == 3


def test_rng_round_trip():
    t, m = ck.rng_state()
    m = json.loads(json.dumps(m))  # through JSON, as on disk
    first = (torch.rand(3), random.random(), np.random.rand())
    ck.set_rng_state(t, m)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_keep_last_and_corrupt_fallback(tmp_path, caplog):
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, step, {"param.x": torch.full((2,), float(step))}, {}, keep_last=3)
    assert [s for s, _ in ck.step_dirs(tmp_path)] == [2, 3, 4]
    state = tmp_path / "step-00000004" / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the data
    state.write_bytes(bytes(raw))
    (tmp_path / "step-00000003" / "meta.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        c = ck.latest_checkpoint(tmp_path)
    assert c is not None and c.step == 2 and torch.equal(c.tensors["param.x"], torch.full((2,), 2.0))
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "step 4" in msgs and "sha256" in msgs and "step 3" in msgs
    assert not list(tmp_path.glob(".tmp-*"))


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - a non-tensor value cannot be saved
        ck.save_checkpoint(tmp_path, 7, {"param.x": "not a tensor"}, {}, keep_last=2)  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
    assert ck.latest_checkpoint(tmp_path) is None


def _run(vals, every=10, **kw):
    c = dg.LRController()
    out = []
    for i, v in enumerate(vals, 1):
        out.append(c.update(i * every, v, **kw))
    return c, out


def test_lr_controller_plateau_and_stops():
    kw = {"patience": 100, "plateau_steps": 20, "factor": 0.5, "max_bad": 2}
    # improve, improve, flat, flat (20 steps since best -> cut), flat, flat (cut), flat, flat (-> stop)
    c, ev = _run([5.0, 4.0, 4.0, 4.1, 4.0, 4.2, 4.0, 4.3], **kw)
    assert ev[0] == ev[1] == ["improved"]
    assert ev[3] == ["lr_reduced"] and ev[5] == ["lr_reduced"] and ev[7] == ["stop"]
    assert c.lr_scale == 0.25 and c.n_reductions == 2 and "plateau" in c.stop_reason
    # an improvement after a cut resets the count of cuts without improvement
    c, ev = _run([5.0, 5.0, 5.0, 4.0, 4.5, 4.5, 4.5, 4.5], **kw)
    assert ev[2] == ["lr_reduced"] and ev[3] == ["improved"] and ev[5] == ["lr_reduced"] and ev[7] == ["lr_reduced"]
    assert c.stop_reason is None and c.lr_scale == 0.125
    # early stopping by patience
    c, ev = _run([3.0, 3.1, 3.2, 3.3], patience=3, plateau_steps=1000, factor=0.5, max_bad=2)
    assert ev[-1] == ["stop"] and "early stopping" in c.stop_reason
    assert dg.LRController.from_state(json.loads(json.dumps(c.state()))) == c


def test_grad_ratio_flag_and_collapse():
    ratios, flag = dg.grad_ratios({"phase": 1.0, "attention": 0.5}, (0.3, 3.0))
    assert ratios == {"attention": 2.0} and not flag
    ratios, flag = dg.grad_ratios({"phase": 1.0, "attention": 10.0, "ssm": 1.0}, (0.3, 3.0))
    assert flag and ratios["attention"] == pytest.approx(0.1)
    assert dg.grad_ratios({"phase": 1.0}, (0.3, 3.0)) == ({}, False)  # base frozen: no ratio
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert dg.grad_norms({"phase": [p], "none": [torch.nn.Parameter(torch.ones(1))]}) == {"phase": 5.0}
    const = torch.ones(2, 5, 4) * 3.0
    noisy = torch.randn(2, 5, 4)
    assert dg.relative_token_variance(const) == 0.0
    assert 0.5 < dg.relative_token_variance(noisy) <= 1.0
    assert dg.collapsed({"a": const, "b": noisy, "r": torch.full((2, 5), 0.99)}, 1e-6) == ["a", "r"]
    frac, col = dg.r_collapse(torch.tensor([0.995, 0.999, 0.5, 0.999]))
    assert frac == 0.75 and col
    assert math.isnan(dg.relative_token_variance(torch.ones(1, 1, 3)))


def test_batch_order_is_a_permutation_per_epoch_and_pure():
    n, b = 10, 3
    seq = torch.cat([batch_indices(s, n, b, seed=5) for s in range(1, 11)])  # 30 draws = 3 epochs
    for e in range(3):
        assert sorted(seq[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert torch.equal(batch_indices(7, n, b, 5), batch_indices(7, n, b, 5))
    assert not torch.equal(seq[:n], torch.cat([batch_indices(s, n, b, seed=6) for s in range(1, 11)])[:n])
