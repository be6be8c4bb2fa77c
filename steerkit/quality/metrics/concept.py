"""Per-concept metrics of one layer: how one-dimensional each concept's positives are (1. rank, with a
null from random groups) and how well each positive story agrees with its concept's vector (2.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...vectors.means import Array, as_bool, as_f32
from .common import EPS, _check_padded, one_thread, unit_rows

# --------------------------------------------------------------------------- 1. rank


@dataclass(frozen=True)
class RankStats:
    """first_pc_variance_ratio (C,): s1^2 / sum_k s_k^2 (> 0.7 one clean direction, < 0.4 fragmented).
    effective_rank (C,): exp(-sum_k p_k log p_k), p_k = s_k / sum_j s_j (Roy & Vetterli 2007).
    singular_values (C, min(P, H)): descending; entries k >= n_c - 1 are set to exactly 0.
    All NaN for a concept with fewer than 2 positives."""

    first_pc_variance_ratio: torch.Tensor
    effective_rank: torch.Tensor
    singular_values: torch.Tensor


def rank_stats(x: Array, mask: Array) -> RankStats:
    """SVD spectrum of each concept's centred positives. x (C, P, H), mask (C, P) bool.

    Padding rows are zeroed after centring, so they add only zero singular values. The singular
    values are the square roots of the eigenvalues of the smaller Gram matrix (P x P or H x H),
    computed in float64 (one batched `eigvalsh`, ~10x faster than a batched SVD of (P, H)).
    Centred data of n_c points has rank <= n_c - 1, so values beyond that are rounding and set to 0.
    """
    xs, m = as_f32(x), as_bool(mask)
    _check_padded(xs, m)
    w = m.to(torch.float32).unsqueeze(-1)  # (C, P, 1)
    n = m.sum(1)  # (C,)
    mean = (xs * w).sum(1) / n.clamp_min(1).unsqueeze(-1)  # (C, H)
    xc = ((xs - mean.unsqueeze(1)) * w).double()  # (C, P, H)
    gram = xc @ xc.transpose(1, 2) if xc.shape[1] <= xc.shape[2] else xc.transpose(1, 2) @ xc
    with one_thread():
        s = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()  # (C, min(P, H)) descending
    s = s * (torch.arange(s.shape[1]) < (n - 1).unsqueeze(1))
    s2 = s.square()
    ratio = s2[:, 0] / s2.sum(1) if s.shape[1] else torch.full((xs.shape[0],), float("nan"))
    p = s / s.sum(1, keepdim=True)
    erank = torch.exp(-torch.xlogy(p, p).sum(1))
    bad = n < 2
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return RankStats(
        first_pc_variance_ratio=torch.where(bad, nan, ratio).float(),
        effective_rank=torch.where(bad, nan, erank).float(),
        singular_values=s.float(),
    )


def rank_null(acts: Array, size: int, n_draws: int = 200, seed: int = 0) -> torch.Tensor:
    """The first-PC variance ratio a concept would get if its `size` positives were any texts:
    ratios of `n_draws` random sets of `size` rows of acts (N, H), drawn without replacement with a
    generator seeded by `seed` (draw d = torch.randperm(N)[:size], in order). -> (n_draws,) fp32.

    Compares a concept's ratio with what diversity alone gives: on whole stories the centred
    positives of any concept spread over several directions, so a fixed 0.4 cut says little."""
    a = as_f32(acts)
    n = a.shape[0]
    if not 2 <= size <= n:
        raise ValueError(f"size must lie in [2, {n}] (the number of texts), got {size}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:size] for _ in range(n_draws)])  # (D, size)
    return rank_stats(a[idx], torch.ones(n_draws, size, dtype=torch.bool)).first_pc_variance_ratio


# --------------------------------------------------------------------------- 2. story agreement


@dataclass(frozen=True)
class StoryAgreement:
    """cos (C, P): cos(x_i - m_c, d_c) per positive, NaN at padding; mean, min (C,) over real rows;
    lowest (C, k): slots (into P) of the k least aligned positives, most outlying first, -1 where
    a concept has fewer than k positives (map slots to texts with `Padded.index`); lowest_cos (C, k)."""

    cos: torch.Tensor
    mean: torch.Tensor
    min: torch.Tensor
    lowest: torch.Tensor
    lowest_cos: torch.Tensor


def story_agreement(x: Array, mask: Array, directions: Array, neg_means: Array, n_lowest: int = 2) -> StoryAgreement:
    """How well each positive tells the concept's story: cos(x_i - m_c, d_c), where m_c is the
    mean of the concept's negatives (C, H) and d_c its direction (C, H; normalised here).
    x (C, P, H), mask (C, P) bool. A mislabelled story has a low or negative cosine."""
    xs, m = as_f32(x), as_bool(mask)
    _check_padded(xs, m)
    d = unit_rows(as_f32(directions))  # (C, H)
    mu = as_f32(neg_means)  # (C, H)
    if d.shape != mu.shape or d.shape != (xs.shape[0], xs.shape[2]):
        raise ValueError(
            f"directions {tuple(d.shape)} and neg_means {tuple(mu.shape)} must be (C, H) = {xs.shape[::2]}"
        )
    diff = xs - mu.unsqueeze(1)  # (C, P, H)
    cos = (diff @ d.unsqueeze(-1)).squeeze(-1) / diff.norm(dim=-1).clamp_min(EPS)  # (C, P)
    cos = cos.masked_fill(~m, float("nan"))
    n = m.sum(1)
    mean = torch.nansum(cos, 1) / n  # NaN when n == 0
    k = min(n_lowest, xs.shape[1])
    vals, slots = torch.topk(cos.masked_fill(~m, float("inf")), k, dim=1, largest=False)
    missing = torch.isinf(vals)
    lowest_cos = vals.masked_fill(missing, float("nan"))
    minimum = lowest_cos[:, 0] if k else torch.full_like(mean, float("nan"))
    return StoryAgreement(cos, mean, minimum, slots.masked_fill(missing, -1), lowest_cos)
