"""What the quality metrics share: unit rows, single-threaded small decompositions, and each
concept's positives gathered into one padded batch. Shape letters: see `steerkit.quality.metrics`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ...vectors.means import Array, _check_membership, as_bool, as_f32

EPS = 1e-12


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm along the last dim; zero rows stay zero, NaN rows stay NaN."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(EPS)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small LAPACK decompositions (C x C, P x P) single-threaded, then restore the thread count.

    Threaded MKL eigh/svd gain nothing at these sizes and collapse when the cores are shared:
    on the 2-core dev machine under load, eigh of a 200 x 200 matrix took 3 s with 2 threads and
    0.01 s with 1 (svd of 200 x 4096: 8.8 s vs 0.2 s). torch.set_num_threads is process-wide.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
