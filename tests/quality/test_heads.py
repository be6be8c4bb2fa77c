"""Oracles for the per-head decomposition: a numpy loop over concepts and heads, chunking
invariance, and a planted head that carries the concept."""

from __future__ import annotations

import numpy as np
import torch

from steerkit.quality import heads as qh


def test_head_decomposition_matches_numpy_loop(monkeypatch):
    n, nh, hd, c = 40, 5, 6, 4
    a = torch.randn(n, nh, hd) * torch.linspace(0.5, 2, nh).unsqueeze(1) + 3.0  # offset: std must ignore it
    pos = torch.rand(c, n) < 0.3
    neg = ~pos & (torch.rand(c, n) < 0.8)
    out = qh.head_decomposition(a, pos, neg, top_k=3)
    monkeypatch.setattr(qh, "_CHUNK_ELEMENTS", 1)  # one concept per chunk
    chunked = qh.head_decomposition(a, pos, neg, top_k=3)
    for field in ("diff", "norm", "selectivity", "concentration"):
        torch.testing.assert_close(getattr(chunked, field), getattr(out, field))
    an = a.double().numpy()
    for k in range(c):
        p, q = pos[k].numpy(), neg[k].numpy()
        norms = np.zeros(nh)
        for h in range(nh):
            diff = an[p, h].mean(0) - an[q, h].mean(0)
            norms[h] = np.linalg.norm(diff)
            sd = np.std(an[q, h] @ (diff / norms[h]), ddof=1)
            np.testing.assert_allclose(out.diff[k, h], diff, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(out.selectivity[k, h], norms[h] / sd, rtol=1e-4)
        np.testing.assert_allclose(out.norm[k], norms, rtol=1e-4, atol=1e-6)
        top = np.argsort(-norms)[:3]
        assert out.top_heads[k].tolist() == top.tolist()
        np.testing.assert_allclose(out.concentration[k], norms[top].sum() / norms.sum(), rtol=1e-5)
    # default negatives = complement of the positives
    comp = qh.head_decomposition(a, pos)
    torch.testing.assert_close(comp.norm, qh.head_decomposition(a, pos, ~pos).norm)


def _planted(per: int, nh: int, hd: int, shifts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept k's texts = noise + shifts[k] (nh, hd); the last concept is pure noise."""
    lab = torch.arange(len(shifts) + 1).repeat_interleave(per)
    a = 0.02 * torch.randn(lab.numel(), nh, hd)
    for k, shift in enumerate(shifts):
        a[lab == k] += shift
    return a, lab.unsqueeze(0) == torch.arange(len(shifts) + 1).unsqueeze(1)


def test_planted_head_is_ranked_first_with_concentration_near_one():
    per, nh, hd = 50, 32, 16
    planted = [5, 0, 31]
    shifts = []
    for h in planted:
        s = torch.zeros(nh, hd)
        s[h] = 3.0 * torch.nn.functional.normalize(torch.randn(hd), dim=0)
        shifts.append(s)
    out = qh.head_decomposition(*_planted(per, nh, hd, shifts))
    for k, h in enumerate(planted):
        assert out.top_heads[k, 0] == h
        assert out.selectivity[k].argmax() == h
        assert out.concentration[k] > 0.9
    # the same concept strength spread evenly over all heads: concentration about 10 / 32
    spread = qh.head_decomposition(
        *_planted(per, nh, hd, [0.5 * torch.nn.functional.normalize(torch.randn(nh, hd), dim=-1)])
    )
    assert 0.25 < spread.concentration[0] < 0.45


def test_selectivity_stays_accurate_when_negatives_sit_far_from_the_centre():
    n, nh, hd = 300, 2, 4
    a = torch.randn(n, nh, hd)
    neg = torch.zeros(1, n, dtype=torch.bool)
    neg[0, :40] = True
    a[:40] = 1e3 + 1e-2 * torch.randn(40, nh, hd)  # a tight negative cluster, far away
    pos = torch.zeros(1, n, dtype=torch.bool)
    pos[0, 100:150] = True
    out = qh.head_decomposition(a, pos, neg)
    an = a.double().numpy()
    for h in range(nh):
        diff = an[100:150, h].mean(0) - an[:40, h].mean(0)
        sd = np.std(an[:40, h] @ (diff / np.linalg.norm(diff)), ddof=1)
        np.testing.assert_allclose(out.selectivity[0, h], np.linalg.norm(diff) / sd, rtol=1e-2)
