"""caa / paired / centered against independent numpy computations."""

from __future__ import annotations

import numpy as np
import torch

from steerkit.vectors import methods


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _data(seed=0, n=40, h=16, c=4):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, h)).astype(np.float32)
    labels = rng.integers(-1, c, size=n)  # -1: baseline-like text, negative for all
    pos = np.stack([labels == k for k in range(c)])
    scenario = np.where(rng.random(n) < 0.5, rng.integers(0, 3, size=n), -1)
    return a, pos, scenario


def test_caa_equals_numpy():
    a, pos, _ = _data()
    unit, norms = methods.caa(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos))
    for k in range(pos.shape[0]):
        v = a[pos[k]].mean(0) - a[~pos[k]].mean(0)
        assert _cos(unit[k].numpy(), v) >= 0.99999
        assert abs(norms[k].item() - np.linalg.norm(v)) < 1e-4
        assert abs(unit[k].norm().item() - 1) < 1e-5


def test_paired_equals_numpy():
    a, pos, scen = _data(1)
    unit, _ = methods.paired(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos), torch.tensor(scen))
    for k in range(pos.shape[0]):
        resid = a.copy()
        for s in set(scen[scen >= 0].tolist()):
            resid[scen == s] = a[scen == s] - a[scen == s].mean(0)
        pm = pos[k] & (scen >= 0)
        um, un = pos[k] & (scen < 0), ~pos[k] & (scen < 0)
        p = resid[pm].mean(0)
        u = a[um].mean(0) - a[un].mean(0)
        mix = pm.sum() * p / np.linalg.norm(p) + um.sum() * u / np.linalg.norm(u)
        assert _cos(unit[k].numpy(), mix) >= 0.99999


def test_centered_equals_numpy():
    a, pos, _ = _data(2, n=60, h=12)
    rng = np.random.default_rng(3)
    neutral = (rng.normal(size=(30, 12)) * np.linspace(5, 0.1, 12)).astype(np.float32)
    unit, _ = methods.centered(torch.tensor(a), torch.tensor(pos), torch.tensor(neutral), variance=0.5)
    x = neutral - neutral.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    ratio = np.cumsum(s**2) / (s**2).sum()
    k = int((ratio < 0.5).sum()) + 1
    basis = vt[:k]
    for c in range(pos.shape[0]):
        v = a[pos[c]].mean(0) - a.mean(0)
        v = v - basis.T @ (basis @ v)
        assert _cos(unit[c].numpy(), v) >= 0.99999
        assert np.abs(basis @ unit[c].numpy()).max() < 1e-5  # neutral directions removed
