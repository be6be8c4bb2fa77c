"""What the quality metrics share: unit rows, single-threaded small decompositions, and each
concept's positives gathered into one padded batch. Shape letters: see `steerkit.quality.metrics`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...threads import one_thread  # noqa: F401 (re-exported: the metrics use it)
from ...vectors.means import Array, _check_membership, as_bool, as_f32

EPS = 1e-12


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm along the last dim; zero rows stay zero, NaN rows stay NaN."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(EPS)


@dataclass(frozen=True)
class Padded:
    """Positives gathered per concept. x: (C, P, *F); mask: (C, P) bool, True on real rows;
    index: (C, P) long, the text index of each row, -1 at padding."""

    x: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor


def pad_groups(acts: Array, membership: Array) -> Padded:
    """Gather each concept's positives into a padded batch: acts (N, *F), membership (C, N) bool.

    Rows keep text order; P = the largest group. Padding rows are zero.
    """
    a = as_f32(acts)
    m = as_bool(membership)
    _check_membership(m, a.shape[0], "membership")
    c_idx, n_idx = m.nonzero(as_tuple=True)  # sorted by concept, then text
    counts = m.sum(1)  # (C,)
    p = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(c_idx.numel()) - (torch.cumsum(counts, 0) - counts)[c_idx]
    x = a.new_zeros(m.shape[0], p, *a.shape[1:])
    x[c_idx, slot] = a[n_idx]
    mask = torch.zeros(m.shape[0], p, dtype=torch.bool)
    mask[c_idx, slot] = True
    index = torch.full((m.shape[0], p), -1, dtype=torch.long)
    index[c_idx, slot] = n_idx
    return Padded(x, mask, index)


def _check_padded(x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (C, P, H) and mask (C, P), got {tuple(x.shape)} and {tuple(mask.shape)}")
