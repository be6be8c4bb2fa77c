"""Pooling a block's (batch, seq, dim) activations to (batch, dim) over non-pad tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pooling:
    """`last`: the last non-pad token; `mean`: mean over non-pad tokens; `mean_after:N`: mean
    over non-pad tokens from the N-th real token on (texts with <= N tokens use their last token)."""

    kind: str  # "last" | "mean" | "mean_after"
    skip: int = 0

    @property
    def name(self) -> str:
        return f"mean_after:{self.skip}" if self.kind == "mean_after" else self.kind


def parse_pooling(spec: str | Pooling) -> Pooling:
    if isinstance(spec, Pooling):
        return spec
    s = spec.strip().lower()
    if s in ("last", "mean"):
        return Pooling(s)
    if s.startswith("mean_after:"):
        try:
            n = int(s.split(":", 1)[1])
        except ValueError:
            n = -1
        if n >= 0:
            return Pooling("mean_after", n)
    raise ValueError(f"invalid pooling {spec!r}; valid: last, mean, mean_after:N (N >= 0)")


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """h (batch, seq, dim), mask (batch, seq) with 1 at real tokens -> (batch, dim), fp32.

    Works for left and right padding: positions are located through the mask."""
    mask = mask.to(h.device)
    t = h.shape[1]
    if pooling.kind == "last":
        last = t - 1 - torch.flip(mask, dims=[1]).float().argmax(dim=1)  # (batch,)
        return h[torch.arange(h.shape[0], device=h.device), last].float()
    m = mask.float()
    if pooling.kind == "mean_after":
        pos = torch.cumsum(m, dim=1) - 1  # real-token position, (batch, seq)
        keep = m * (pos >= pooling.skip).float()
        short = keep.sum(1) == 0
        if short.any():  # fall back to the last real token
            last = t - 1 - torch.flip(mask, dims=[1]).float().argmax(dim=1)
            keep[short] = torch.nn.functional.one_hot(last[short], t).float()
        m = keep
    w = m.unsqueeze(-1)  # (batch, seq, 1)
    return (h.float() * w).sum(1) / w.sum(1).clamp(min=1.0)
