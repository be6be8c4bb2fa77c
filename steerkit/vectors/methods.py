"""Concept-vector methods: a registry of pure functions on pooled activations.

Every method takes one `MethodInputs` (one layer's activations and the corpus structure) and returns
(unit vectors (n_concepts, hidden), raw norms (n_concepts,)). `METHODS` maps a name to its `Method`;
the CLI choices, `ExtractConfig`, extraction and the quality report's per-fold rebuild all read it.
Adding a method = one function + one registry entry.

Shapes: a (n_texts, hidden); pos / neg (n_concepts, n_texts) bool membership of each text among a
concept's positives / negatives; scenario (n_texts,) int id of the paired scenario of each text or -1;
neutral (n_neutral, hidden) or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .means import group_means


@dataclass(frozen=True)
class MethodInputs:
    a: torch.Tensor  # (n_texts, hidden)
    pos: torch.Tensor  # (n_concepts, n_texts) bool
    neg: torch.Tensor  # (n_concepts, n_texts) bool
    scenario: torch.Tensor | None = None  # (n_texts,) long, -1 outside scenarios
    neutral: torch.Tensor | None = None  # (n_neutral, hidden)

    def subset(self, keep: torch.Tensor) -> MethodInputs:
        """The same inputs restricted to the texts where keep (n_texts,) is True (a training fold)."""
        return MethodInputs(
            self.a[keep],
            self.pos[:, keep],
            self.neg[:, keep],
            None if self.scenario is None else self.scenario[keep],
            self.neutral,
        )


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[[MethodInputs], tuple[torch.Tensor, torch.Tensor]]
    needs_neutral: bool = False
    summary: str = ""


def _mean0(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(c, h) group means, zeros for an empty group (the paired mix weights those by 0)."""
    return group_means(a, m).nan_to_num(0.0)


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = v.norm(dim=1)  # (c,)
    return v / norms.clamp(min=1e-12).unsqueeze(1), norms


def caa(x: MethodInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive activation addition: v_c = mean(A[pos_c]) - mean(A[neg_c]), unit-normalised,
    with the raw norm kept (Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation
    Addition", arXiv 2312.06681, eq. 1 with pooled story activations)."""
    a = x.a.float()
    return _unit(_mean0(a, x.pos) - _mean0(a, x.neg))


def paired(x: MethodInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenario-controlled contrast (Wang et al. 2025, arXiv 2510.11328): within each paired
    scenario, subtract the scenario mean over its framings and baseline, so what the events
    contribute cancels; the concept's paired contrast p_c is the mean of its residualised
    framings. The unpaired contrast u_c is CAA over texts outside any scenario. The two are
    combined as unit vectors weighted by how many texts each rests on:
        v_c = (n_p * p_c/|p_c| + n_u * u_c/|u_c|) / (n_p + n_u), then unit-normalised;
    a concept with no framings gets u_c alone. The raw norm is that of the count-weighted mix of
    the raw contrasts."""
    a, pos, neg = x.a.float(), x.pos, x.neg
    scenario = x.scenario if x.scenario is not None else torch.full((a.shape[0],), -1, dtype=torch.long)
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
    p_raw = _mean0(resid, p_mask)  # (c, h)
    u_raw = _mean0(a, u_pos) - _mean0(a, u_neg)
    n_p = p_mask.sum(1, keepdim=True).float()
    n_u = u_pos.sum(1, keepdim=True).float()
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
    z = neutral.float() - neutral.float().mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    ratio = torch.cumsum(s**2, 0) / (s**2).sum().clamp(min=1e-12)
    k = int((ratio < variance).sum().item()) + 1
    return vh[:k]


def centered(x: MethodInputs, variance: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """v_c = mean(A[pos_c]) - mean(A) (the global mean of all story activations), then the top
    principal components of the neutral corpus explaining `variance` of its variance are
    projected out: v <- v - V^T V v (the recipe of Anthropic's 2026 emotion-vector study)."""
    if x.neutral is None:
        raise ValueError("the centered method needs neutral activations")
    a = x.a.float()
    v = _mean0(a, x.pos) - a.mean(0, keepdim=True)
    basis = neutral_subspace(x.neutral, variance)  # (k, h)
    v = v - (v @ basis.t()) @ basis
    return _unit(v)


def _along(x: MethodInputs, unit: torch.Tensor) -> torch.Tensor:
    """(c,) the mean difference mean(A[pos_c]) - mean(A[neg_c]) projected on each unit row: the raw
    norm of a direction-only method, so `--scale absolute` alpha = 1 shifts by the class separation."""
    diff = _mean0(x.a.float(), x.pos) - _mean0(x.a.float(), x.neg)
    return (diff * unit).sum(1)


def pca(x: MethodInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """First principal component of the paired differences d_ij = a_i - a_j over every pair of a
    positive i and a negative j of the concept (uncentred, as steering-vectors' `pca_aggregator`;
    repeng's `pca_diff` centres the differences, which for concept-vs-rest pairs removes the very
    mean difference that carries the concept). In closed form over all pairs,
        M = E[d d^T] = Cov(pos) + Cov(neg) + (mu_pos - mu_neg)(mu_pos - mu_neg)^T,
    whose top eigenvector is found with a full (deterministic) eigendecomposition, never a
    randomized solver (repeng#78). Sign by a projection vote (repeng): the direction on which
    most pairs have the positive above the negative."""
    a = x.a.double()
    units = torch.zeros(x.pos.shape[0], a.shape[1], dtype=torch.float64)
    for c in range(x.pos.shape[0]):
        p, n = a[x.pos[c]], a[x.neg[c]]
        if len(p) == 0 or len(n) == 0:
            continue
        dp, dn = p - p.mean(0), n - n.mean(0)
        delta = (p.mean(0) - n.mean(0)).unsqueeze(0)
        z = torch.cat([dp / len(p) ** 0.5, dn / len(n) ** 0.5, delta])  # M = z^T z
        if z.shape[0] < z.shape[1]:
            _, _, vh = torch.linalg.svd(z, full_matrices=False)
            v = vh[0]
        else:
            _, vecs = torch.linalg.eigh(z.t() @ z)
            v = vecs[:, -1]
        pp, pn = (p @ v).numpy(), np.sort((n @ v).numpy())
        above = np.searchsorted(pn, pp, side="left").sum() / (len(pp) * len(pn))  # share of pairs p > n
        units[c] = v if above >= 0.5 else -v
    u = units.float()
    return u, _along(x, u)


def logistic(x: MethodInputs, c_reg: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight vector of an L2 logistic regression separating the concept's positives from its
    negatives (scikit-learn, lbfgs, C = c_reg, classes balanced), unit-normalised: steering-vectors'
    `logistic_aggregator`. Deterministic (lbfgs has no randomness)."""
    from sklearn.linear_model import LogisticRegression

    a = x.a.double().numpy()
    units = torch.zeros(x.pos.shape[0], a.shape[1])
    for c in range(x.pos.shape[0]):
        p, n = x.pos[c].numpy(), x.neg[c].numpy()
        if not p.any() or not n.any():
            continue
        rows = p | n
        clf = LogisticRegression(C=c_reg, class_weight="balanced", max_iter=2000)
        clf.fit(a[rows], p[rows].astype(int))
        units[c] = torch.from_numpy(clf.coef_[0]).float()
    u = units / units.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return u, _along(x, u)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("caa", caa, summary="mean of positives minus mean of negatives"),
        Method("paired", paired, summary="scenario-controlled contrast (framings minus their scenario mean)"),
        Method("centered", centered, needs_neutral=True, summary="minus the global mean, neutral PCs projected out"),
        Method("pca", pca, summary="first principal component of positive-negative differences"),
        Method("logistic", logistic, summary="logistic-regression weight vector"),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def compute(name: str, x: MethodInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit (c, hidden), raw norms (c,)) of method `name`."""
    return get_method(name).fn(x)
