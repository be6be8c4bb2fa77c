"""3. Single-neuron alignment: does a concept's vector coincide with one MLP neuron's output direction?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...vectors.means import Array, as_f32
from .common import EPS, unit_rows

# --------------------------------------------------------------------------- 3. single neuron


@dataclass(frozen=True)
class NeuronAlignment:
    """abs_cos (C,): max_j |cos(d_c, W[:, j])|; neuron (C,) long: that j; cos (C,): its signed cosine."""

    abs_cos: torch.Tensor
    neuron: torch.Tensor
    cos: torch.Tensor


def neuron_alignment(directions: Array, w_down: Array) -> NeuronAlignment:
    """Is the concept one MLP neuron's output direction? directions (C, H); w_down (H, I), column j
    being the residual direction neuron j writes (`Adapter.mlp_write_directions`). One (C, H) @ (H, I)
    product divided by the column norms (no normalised copy of W). Dead (zero) columns give cos 0."""
    d = unit_rows(as_f32(directions))  # (C, H)
    w = as_f32(w_down)
    if w.ndim != 2 or w.shape[0] != d.shape[1]:
        raise ValueError(f"w_down must be (hidden={d.shape[1]}, intermediate), got {tuple(w.shape)}")
    cos = (d @ w) / w.square().sum(0).sqrt().clamp_min(EPS)  # (C, I); faster than w.norm(dim=0)
    best = cos.abs().argmax(1)  # (C,)
    signed = cos.gather(1, best.unsqueeze(1)).squeeze(1)
    return NeuronAlignment(signed.abs(), best, signed)
