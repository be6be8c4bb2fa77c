"""Concept-vector methods: pure functions on pooled activations.

Shapes: A (n_texts, hidden) activations of one layer; pos (n_concepts, n_texts) bool membership of
each text among a concept's positives; neg (n_concepts, n_texts) bool membership among its
negatives. Every method returns (unit vectors (n_concepts, hidden), raw norms (n_concepts,)).
"""

from __future__ import annotations

import torch


def _masked_mean(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """a (n, h), m (c, n) bool -> (c, h) mean of the selected rows (zeros where none)."""
    w = m.to(a.dtype)
    return (w @ a) / w.sum(1, keepdim=True).clamp(min=1.0)


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = v.norm(dim=1)  # (c,)
    return v / norms.clamp(min=1e-12).unsqueeze(1), norms


def caa(a: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive activation addition: v_c = mean(A[pos_c]) - mean(A[neg_c]), unit-normalised,
    with the raw norm kept (Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation
    Addition", arXiv 2312.06681, eq. 1 with pooled story activations)."""
    a = a.float()
    return _unit(_masked_mean(a, pos) - _masked_mean(a, neg))


def paired(
    a: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, scenario: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenario-controlled contrast (Wang et al. 2025, arXiv 2510.11328): within each paired
    scenario, subtract the scenario mean over its framings and baseline, so what the events
    contribute cancels; the concept's paired contrast p_c is the mean of its residualised
    framings. The unpaired contrast u_c is CAA over texts outside any scenario. The two are
    combined as unit vectors weighted by how many texts each rests on:
        v_c = (n_p * p_c/|p_c| + n_u * u_c/|u_c|) / (n_p + n_u), then unit-normalised;
    a concept with no framings gets u_c alone. The raw norm is that of the count-weighted mix of
    the raw contrasts.

    scenario: (n_texts,) int, the scenario id of each text or -1 for texts in no scenario.
    """
    a = a.float()
    in_s = scenario >= 0
    resid = a.clone()
    if in_s.any():
        ids = scenario[in_s]
        n_s = int(ids.max()) + 1
        onehot = torch.nn.functional.one_hot(ids, n_s).float()  # (n_paired, n_s)
        means = (onehot.t() @ a[in_s]) / onehot.sum(0).clamp(min=1).unsqueeze(1)  # (n_s, h)
        resid[in_s] = a[in_s] - means[ids]
    p_mask = pos & in_s.unsqueeze(0)
    u_pos, u_neg = pos & ~in_s.unsqueeze(0), neg & ~in_s.unsqueeze(0)
    p_raw = _masked_mean(resid, p_mask)  # (c, h)
    u_raw = _masked_mean(a, u_pos) - _masked_mean(a, u_neg)
    n_p = p_mask.sum(1, keepdim=True).float()
    n_u = (u_pos.sum(1, keepdim=True) > 0).float() * u_pos.sum(1, keepdim=True).float()
    p_hat, _ = _unit(p_raw)
    u_hat, _ = _unit(u_raw)
    total = (n_p + n_u).clamp(min=1.0)
    mixed = (n_p * p_hat + n_u * u_hat) / total
    raw = (n_p * p_raw + n_u * u_raw) / total
    unit, _ = _unit(mixed)
    return unit, raw.norm(dim=1)


def neutral_subspace(neutral: torch.Tensor, variance: float = 0.5) -> torch.Tensor:
    """Top principal directions of the neutral activations (n_neutral, hidden) that together
    explain `variance` of their variance -> (k, hidden) orthonormal rows."""
    x = neutral.float() - neutral.float().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    ratio = torch.cumsum(s**2, 0) / (s**2).sum().clamp(min=1e-12)
    k = int((ratio < variance).sum().item()) + 1
    return vh[:k]


def centered(
    a: torch.Tensor, pos: torch.Tensor, neutral: torch.Tensor, variance: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """v_c = mean(A[pos_c]) - mean(A) (the global mean of all story activations), then the top
    principal components of the neutral corpus explaining `variance` of its variance are
    projected out: v <- v - V^T V v (the recipe of Anthropic's 2026 emotion-vector study)."""
    a = a.float()
    v = _masked_mean(a, pos) - a.mean(0, keepdim=True)
    basis = neutral_subspace(neutral, variance)  # (k, h)
    v = v - (v @ basis.t()) @ basis
    return _unit(v)


METHODS = ("caa", "paired", "centered")
