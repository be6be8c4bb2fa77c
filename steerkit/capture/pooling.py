"""Pooling a block's (batch, seq, dim) activations to (batch, dim) over non-pad tokens."""

from __future__ import annotations

from collections.abc import Callable
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


MAX_SKIP = 1_000_000  # mean_after:N beyond any text steerkit reads (validate.MAX_TEXT_CHARS)
LAST = Pooling("last")
MEAN = Pooling("mean")


def parse_pooling(spec: str | Pooling) -> Pooling:
    """The one parser of pooling specs: `last`, `mean`, `mean_after:N` (N >= 0)."""
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
        if 0 <= n <= MAX_SKIP:
            return Pooling("mean_after", n)
    raise ValueError(f"invalid pooling {spec!r}; valid: last, mean, mean_after:N (0 <= N <= {MAX_SKIP:,})")


def make_pooler(mask: torch.Tensor, pooling: Pooling) -> Callable[[torch.Tensor], torch.Tensor]:
    """The pooling of one batch as a function h (batch, seq, dim) -> (batch, dim) fp32.

    mask (batch, seq) has 1 at real tokens; left and right padding both work (positions are located
    through the mask). The mask work is done once here, so the hooks of every captured site of a
    batch share it; means are one batched matrix product with per-row weights."""
    t = mask.shape[1]
    last = t - 1 - torch.flip(mask, dims=[1]).float().argmax(dim=1)  # (batch,) last real token
    if pooling.kind == "last":

        def take_last(h: torch.Tensor) -> torch.Tensor:
            return h[torch.arange(h.shape[0], device=h.device), last.to(h.device)].float()

        return take_last
    m = mask.float()
    if pooling.kind == "mean_after":
        pos = torch.cumsum(m, dim=1) - 1  # real-token position, (batch, seq)
        keep = m * (pos >= pooling.skip).float()
        short = keep.sum(1) == 0
        if short.any():  # fall back to the last real token
            keep[short] = torch.nn.functional.one_hot(last[short], t).float()
        m = keep
    w = (m / m.sum(1, keepdim=True).clamp(min=1.0)).unsqueeze(1)  # (batch, 1, seq), rows sum to 1

    def weighted_mean(h: torch.Tensor) -> torch.Tensor:
        return torch.bmm(w.to(h.device), h.float()).squeeze(1)

    return weighted_mean


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """h (batch, seq, dim), mask (batch, seq) with 1 at real tokens -> (batch, dim), fp32."""
    return make_pooler(mask, pooling)(h)
