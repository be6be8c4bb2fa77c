"""Group means of pooled activations, all concepts at once: the diff-of-means arithmetic that the
vector methods (methods.py) and the quality report (steerkit.quality.metrics) share.

Inputs may be tensors on any device or numpy arrays; they are moved to CPU float32 first (`as_f32`).
Shape letters: C concepts, N texts, F features (e.g. H hidden size).
"""

from __future__ import annotations

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def as_f32(x: Array) -> torch.Tensor:
    """Any tensor (any device, any float dtype) or array -> detached CPU float32 tensor."""
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float32)


def as_bool(x: Array) -> torch.Tensor:
    """Any tensor or array -> detached CPU bool tensor."""
    return torch.as_tensor(x).detach().to(device="cpu").bool()


def _check_membership(m: torch.Tensor, n: int, name: str) -> None:
    if m.ndim != 2 or m.shape[1] != n:
        raise ValueError(f"{name} must be (concepts, {n}) bool, got shape {tuple(m.shape)}")


def group_means(acts: Array, membership: Array) -> torch.Tensor:
    """Mean activation of each group: acts (N, *F), membership (C, N) bool -> (C, *F).

    One matrix product: (membership @ acts) / counts. An empty group gives a NaN row.
    """
    a = as_f32(acts)
    m = as_bool(membership)
    _check_membership(m, a.shape[0], "membership")
    sums = m.to(torch.float32) @ a.reshape(a.shape[0], -1)  # (C, F)
    return (sums / m.sum(1, keepdim=True)).reshape(m.shape[0], *a.shape[1:])


def pos_neg_means(acts: Array, positives: Array, negatives: Array | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of each concept's positives and negatives: acts (N, *F), positives (C, N) bool,
    negatives (C, N) bool or None (= the complement of the positives) -> two (C, *F) tensors.
    One (C, N) @ (N, F) product per group (the complement costs none: total - positives).
    An empty group gives a NaN row. Raises ValueError when a text is both a positive and a
    negative of one concept."""
    a = as_f32(acts)
    n = a.shape[0]
    flat = a.reshape(n, -1)  # (N, F)
    pos = as_bool(positives)
    _check_membership(pos, n, "positives")
    pos_sum = pos.to(torch.float32) @ flat  # (C, F)
    n_pos = pos.sum(1, keepdim=True)
    if negatives is None:
        neg_sum = flat.sum(0, keepdim=True) - pos_sum
        n_neg = n - n_pos
    else:
        neg = as_bool(negatives)
        _check_membership(neg, n, "negatives")
        if neg.shape != pos.shape:
            raise ValueError(f"positives {tuple(pos.shape)} and negatives {tuple(neg.shape)} differ in shape")
        if (pos & neg).any():
            raise ValueError("a text is both a positive and a negative of the same concept")
        neg_sum = neg.to(torch.float32) @ flat
        n_neg = neg.sum(1, keepdim=True)
    shape = (pos.shape[0], *a.shape[1:])
    return (pos_sum / n_pos).reshape(shape), (neg_sum / n_neg).reshape(shape)


def diff_of_means(acts: Array, positives: Array, negatives: Array | None = None) -> torch.Tensor:
    """Contrastive activation addition (Rimsky et al. 2024, eq. 1), all concepts at once:
        v_c = mean_{n in pos(c)} a_n - mean_{n in neg(c)} a_n.

    acts (N, *F); positives (C, N) bool; negatives (C, N) bool, or None for the complement of
    the positives (every other text). Returns the raw (not unit) vectors (C, *F); a concept
    with no positives or no negatives gets a NaN row. Raises ValueError when a text is both a
    positive and a negative of one concept.
    """
    pos_mean, neg_mean = pos_neg_means(acts, positives, negatives)
    return pos_mean - neg_mean
