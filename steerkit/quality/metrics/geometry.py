"""8. Geometry of the whole concept set: principal components of the vectors against named variables
(e.g. valence, arousal), with Pearson and Spearman correlations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ...vectors.means import Array, as_f32
from .common import EPS, one_thread, unit_rows

# --------------------------------------------------------------------------- 8. geometry


@dataclass(frozen=True)
class Correlation:
    """Correlation of one principal component's scores with one concept variable (n concepts)."""

    pc: int  # 1-based
    variable: str
    n: int
    pearson_r: float
    pearson_p: float
    spearman_r: float
    spearman_p: float


@dataclass(frozen=True)
class Geometry:
    """scores (C, n_components): PC scores of each concept; explained_variance_ratio (n_components,);
    components (n_components, H); correlations: one per (component, variable)."""

    scores: torch.Tensor
    explained_variance_ratio: torch.Tensor
    components: torch.Tensor
    correlations: tuple[Correlation, ...]


def concept_geometry(directions: Array, variables: Mapping[str, Array], n_components: int = 2) -> Geometry:
    """PCA of the unit concept directions (C, H) and how the top components track concept variables
    (e.g. {"valence": (C,), "arousal": (C,)}), by Pearson and Spearman r with p-values (scipy).

    A component's sign is arbitrary (flipping it flips every r of that component). To be
    deterministic we use sklearn's convention (svd_flip on the components: the largest-|.| loading
    of each component is positive), and report signed r. Concepts whose variable is NaN are left
    out of that variable's correlations; with fewer than 3 left, r and p are NaN.
    """
    d = unit_rows(as_f32(directions)).double()
    dc = d - d.mean(0)  # (C, H)
    k = min(n_components, *dc.shape)
    # PCA through the (C, C) Gram matrix: dc dc^T = U S^2 U^T, scores = U S, components = S^-1 U^T dc
    # (an order of magnitude faster than an SVD of (C, H) for C << H).
    gram = dc @ dc.T
    with one_thread():
        ev, u = torch.linalg.eigh(gram)
    ev, u = ev.flip(0).clamp_min(0), u.flip(1)  # descending
    s = ev.sqrt()
    comps = (u[:, :k].T @ dc) / s[:k].clamp_min(EPS).unsqueeze(1)  # (k, H)
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)  # (k,)
    signs[signs == 0] = 1
    scores = (u[:, :k] * s[:k] * signs).float()  # (C, k)
    evr = (ev[:k] / ev.sum()).float()
    out = []
    for name, values in variables.items():  # a handful of variables x components: bookkeeping only
        v = as_f32(values).double().numpy()
        if v.shape != (d.shape[0],):
            raise ValueError(f"variable {name!r} must have shape ({d.shape[0]},), got {v.shape}")
        ok = np.isfinite(v)
        for j in range(k):
            x, y = scores[ok, j].double().numpy(), v[ok]
            if ok.sum() < 3:
                out.append(Correlation(j + 1, name, int(ok.sum()), *(float("nan"),) * 4))
                continue
            pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
            out.append(Correlation(j + 1, name, int(ok.sum()), float(pr[0]), float(pr[1]), float(sr[0]), float(sr[1])))
    return Geometry(scores, evr, (comps * signs.unsqueeze(1)).float(), tuple(out))
