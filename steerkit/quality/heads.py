"""Per-head decomposition of concept vectors (quality report, issue 6): which heads carry a concept.

Design: the caller passes every text's per-head activations once, heads (N, n_heads, head_dim)
(the input of the mixer out-projection, pooled per text), with a (C, N) bool membership matrix of
positives, and optionally an explicit (C, N) negatives matrix (default: every other text). So the
same activation tensor serves all concepts and each statistic is one batched product over
concepts x heads; nothing is copied per concept.

Shapes: C concepts, N texts, nh heads, hd head size. Inputs may live on any device; they are moved
to CPU float32 first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import EPS, Array, as_bool, as_f32, pos_neg_means

# Elements of the (concepts x texts x heads) projection tensor held at once (float32: 128 MiB).
_CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class HeadDecomposition:
    """diff (C, nh, hd): per-head diff-of-means vectors; norm (C, nh): their L2 norms, in each
    head's own output space (before the out-projection); selectivity (C, nh): norm / std over the
    concept's negatives of the projection onto the unit diff direction (a scale-free d'-like
    ratio, comparable across heads); top_heads (C, k), top_norms (C, k): the k heads of largest norm,
    best first; concentration (C,): sum of the top-k norms / sum of all head norms
    (> 0.5 = a sparse head circuit; exactly 1 when nh <= k)."""

    diff: torch.Tensor
    norm: torch.Tensor
    selectivity: torch.Tensor
    top_heads: torch.Tensor
    top_norms: torch.Tensor
    concentration: torch.Tensor


def head_decomposition(
    heads: Array, positives: Array, negatives: Array | None = None, top_k: int = 10
) -> HeadDecomposition:
    """Diff-of-means per concept and head (CAA, Rimsky et al. 2024, applied per head), with
    selectivity and concentration.

    heads (N, nh, hd): every text's per-head activations; positives (C, N) bool; negatives (C, N)
    bool or None (= the complement of the positives). For concept c and head h, with
    v = mean_pos a[:, h] - mean_neg a[:, h] and u = v / |v|:
        norm = |v|,   selectivity = |v| / std_{n in neg(c)}(a_n[h] . u)   (sample std, ddof = 1).
    Zero std gives inf (or NaN when the norm is 0 too). The projections are computed on
    activations centred by their global mean (std is shift-invariant; this keeps float32 exact
    enough), in chunks of concepts so memory stays bounded (one (nh, N, chunk) tensor).
    """
    a = as_f32(heads)
    if a.ndim != 3:
        raise ValueError(f"heads must be (texts, n_heads, head_dim), got {tuple(a.shape)}")
    pos = as_bool(positives)
    neg = ~pos if negatives is None else as_bool(negatives)
    center = a.mean(0)  # (nh, hd)
    pos_mean, neg_mean = pos_neg_means(a, pos, neg)  # (C, nh, hd) each; validates shapes and overlap
    diff = pos_mean - neg_mean
    norm = diff.norm(dim=-1)  # (C, nh)
    u = diff / norm.unsqueeze(-1).clamp_min(EPS)  # (C, nh, hd)
    # p = (a - center) . u for every text; its mean over the negatives is known without a pass:
    # m = (neg_mean - center) . u. Then var = sum_neg (p - m)^2 / (n - 1): an error e in m adds
    # only n e^2, so float32 stays accurate even when the negatives sit far from the centre.
    m = ((neg_mean - center) * u).sum(-1)  # (C, nh)
    ac = (a - center).transpose(0, 1)  # (nh, N, hd)
    w = neg.T.to(torch.float32)  # (N, C)
    n_neg = w.sum(0)  # (C,)
    sum_sq = torch.empty_like(norm)
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[0] * a.shape[1]))
    for s in range(0, pos.shape[0], step):  # chunks of concepts, bounded memory; batched inside
        proj = ac @ u[s : s + step].permute(1, 2, 0)  # (nh, N, c)
        proj.sub_(m[s : s + step].T.unsqueeze(1)).square_().mul_(w[:, s : s + step])
        sum_sq[s : s + step] = proj.sum(1).T  # (c, nh)
    std = (sum_sq / (n_neg.unsqueeze(1) - 1)).sqrt()
    k = min(top_k, a.shape[1])
    top_norms, top_heads = torch.topk(norm, k, dim=1)
    concentration = top_norms.sum(1) / norm.sum(1)
    return HeadDecomposition(diff, norm, norm / std, top_heads, top_norms, concentration)
