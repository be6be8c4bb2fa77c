"""Concepts against each other: 4. nearest concepts (cosine) and 5. redundancy (how well the other
concepts' vectors rebuild each one: ridge R^2 and the top coefficients)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...vectors.means import Array, as_f32
from .common import EPS, one_thread, unit_rows

# --------------------------------------------------------------------------- 4. nearest concepts


@dataclass(frozen=True)
class Nearest:
    """index (C, k): the k other concepts with the highest cosine, best first; cos (C, k)."""

    index: torch.Tensor
    cos: torch.Tensor


def cosine_matrix(directions: Array) -> torch.Tensor:
    """(C, H) -> (C, C) cosines between concept directions."""
    d = unit_rows(as_f32(directions))
    return d @ d.T


def nearest_concepts(directions: Array, k: int = 5) -> Nearest:
    """Top-k neighbours of each concept by cosine of directions (C, H), self excluded; k is capped at C - 1."""
    sim = cosine_matrix(directions).fill_diagonal_(float("-inf"))
    vals, idx = torch.topk(sim, min(k, sim.shape[0] - 1), dim=1)
    return Nearest(idx, vals)


# --------------------------------------------------------------------------- 5. redundancy


@dataclass(frozen=True)
class Redundancy:
    """r2 (C,): R^2 of concept c's fit from the others (as sklearn's r2_score: 1 - SS_res / SS_tot,
    SS_tot about the mean coordinate, also without intercept); coef (C, C): row c = the weights
    of the other concepts in c's fit, diagonal 0; intercept (C,): 0 unless fit_intercept."""

    r2: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor


def redundancy(directions: Array, lam: float = 0.01, fit_intercept: bool = False) -> Redundancy:
    """Ridge regression of each concept vector on all the other ones, all concepts in one solve.

    Samples are the H coordinates, features the other C - 1 (unit-normalised) directions; the
    objective is sklearn's Ridge(alpha=lam): ||y - X b - b0||^2 + lam ||b||^2, b0 unpenalised and
    used only when fit_intercept (then X and y are centred over the coordinates, as sklearn does).
    Default: no intercept, because directions have no meaningful offset.
    With G the (C, C) Gram matrix of the (centred) directions and Q = (G + lam I)^-1, block
    inversion gives every leave-one-out solution at once: b_c[j] = -Q[c, j] / Q[c, c] for j != c
    (the precision-matrix form of regression on the other variables). Computed in float64.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0 (ridge strength), got {lam}")
    d = unit_rows(as_f32(directions)).double()  # (C, H)
    if d.ndim != 2 or d.shape[0] < 2:
        raise ValueError(f"directions must be (C >= 2, H), got {tuple(d.shape)}")
    mu = d.mean(1, keepdim=True) if fit_intercept else torch.zeros(d.shape[0], 1, dtype=d.dtype)  # (C, 1)
    dc = d - mu
    eye = torch.eye(d.shape[0], dtype=d.dtype)
    gram = dc @ dc.T + lam * eye
    with one_thread():
        q = torch.cholesky_inverse(torch.linalg.cholesky(gram))  # (C, C)
    coef = (-q / q.diagonal().unsqueeze(1)) * (1 - eye)
    resid = dc - coef @ dc  # (C, H)
    ss_res = resid.square().sum(1)
    ss_tot = (d - d.mean(1, keepdim=True)).square().sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(EPS), (ss_res == 0).double())
    intercept = (mu - coef @ mu).squeeze(1)
    return Redundancy(r2.float(), coef.float(), intercept.float())


def top_coefficients(coef: Array, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest |coefficients| of each row of coef (C, C), signed, self excluded:
    -> (index (C, k), value (C, k)); k is capped at C - 1."""
    c = as_f32(coef)
    mag = c.abs().fill_diagonal_(-1.0)
    _, idx = torch.topk(mag, min(k, c.shape[0] - 1), dim=1)
    return idx, c.gather(1, idx)
