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
    unit, norms = methods.caa(methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos)))
    for k in range(pos.shape[0]):
        v = a[pos[k]].mean(0) - a[~pos[k]].mean(0)
        assert _cos(unit[k].numpy(), v) >= 0.99999
        assert abs(norms[k].item() - np.linalg.norm(v)) < 1e-4
        assert abs(unit[k].norm().item() - 1) < 1e-5


def test_paired_equals_numpy():
    a, pos, scen = _data(1)
    unit, _ = methods.paired(
        methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos), torch.tensor(scen))
    )
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
    unit, _ = methods.centered(
        methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos), None, torch.tensor(neutral)),
        variance=0.5,
    )
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


def test_pca_equals_numpy_pairwise_svd_and_votes_the_sign():
    """Oracle: the top right singular vector of the explicit (n_pos * n_neg, h) matrix of all
    positive-minus-negative differences (numpy full SVD), sign by the share of pairs p > n."""
    a, pos, _ = _data(4, n=36, h=10, c=3)
    x = methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos))
    unit, norms = methods.pca(x)
    for k in range(pos.shape[0]):
        p, n = a[pos[k]].astype(np.float64), a[~pos[k]].astype(np.float64)
        d = (p[:, None, :] - n[None, :, :]).reshape(-1, a.shape[1])  # every pair
        _, _, vt = np.linalg.svd(d, full_matrices=False)
        v = vt[0]
        if np.mean((p @ v)[:, None] > (n @ v)[None, :]) < 0.5:
            v = -v
        assert _cos(unit[k].numpy(), v) >= 0.99999
        assert abs(norms[k].item() - float((p.mean(0) - n.mean(0)) @ v)) < 1e-4


def test_pca_is_deterministic_and_finds_a_planted_axis():
    rng = np.random.default_rng(7)
    axis = rng.normal(size=24)
    axis /= np.linalg.norm(axis)
    labels = np.repeat([0, 1], 30)
    a = rng.normal(size=(60, 24)) * 0.3 + np.outer(np.where(labels == 0, 3.0, -3.0), axis)
    pos = np.stack([labels == 0, labels == 1])
    x = methods.MethodInputs(torch.tensor(a, dtype=torch.float32), torch.tensor(pos), torch.tensor(~pos))
    u1, _ = methods.pca(x)
    u2, _ = methods.pca(x)
    assert torch.equal(u1, u2)
    assert _cos(u1[0].numpy(), axis) > 0.99 and _cos(u1[1].numpy(), -axis) > 0.99  # signs voted right


def test_logistic_equals_sklearn():
    from sklearn.linear_model import LogisticRegression

    a, pos, _ = _data(5, n=50, h=8, c=3)
    unit, norms = methods.logistic(methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos)))
    for k in range(pos.shape[0]):
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(a.astype(np.float64), pos[k])
        w = clf.coef_[0]
        assert _cos(unit[k].numpy(), w) >= 0.99999
        sep = a[pos[k]].mean(0) - a[~pos[k]].mean(0)
        assert abs(norms[k].item() - float(sep @ (w / np.linalg.norm(w)))) < 1e-4


def test_registry_feeds_every_consumer():
    from click.testing import CliRunner

    from steerkit.cli import main
    from steerkit.vectors.extract import ExtractConfig

    assert list(methods.METHODS) == ["caa", "paired", "centered", "pca", "logistic"]
    for name in methods.METHODS:
        ExtractConfig(method=name)  # accepted
    help_text = CliRunner().invoke(main, ["extract", "--help"]).output
    assert all(name in help_text for name in methods.METHODS)
    import pytest

    with pytest.raises(ValueError, match="valid: caa, paired, centered, pca, logistic"):
        ExtractConfig(method="mean")


def test_subset_equals_building_on_the_kept_rows():
    a, pos, scen = _data(6)
    x = methods.MethodInputs(torch.tensor(a), torch.tensor(pos), torch.tensor(~pos), torch.tensor(scen))
    keep = torch.arange(len(a)) % 3 != 0
    for name in ("caa", "paired", "pca"):
        got, _ = methods.compute(name, x.subset(keep))
        ref, _ = methods.compute(
            name,
            methods.MethodInputs(x.a[keep], x.pos[:, keep], x.neg[:, keep], x.scenario[keep]),  # type: ignore[index]
        )
        assert torch.allclose(got, ref)
