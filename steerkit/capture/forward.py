"""What every forward pass steerkit runs shares: padding, model inputs, the early stop, and the
`Runner` protocol that capture backends implement.

A backend receives one `Batch` (token ids already on the model's input device, the mask, the
padding side) and returns the pooled value of each wanted (site, layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from .pooling import Pooling

Side = Literal["right", "left"]
Wanted = list[tuple[str, int]]  # (site, layer) pairs to read
Pooled = dict[tuple[str, int], torch.Tensor]  # (site, layer) -> (batch, ...) pooled, fp32 on CPU


def model_context(model: torch.nn.Module) -> int | None:
    """The most tokens the model reads at once (its position table / trained context), or None for
    models without one (recurrent families). Longer inputs are truncated to it, with a warning."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


class StopForward(Exception):
    """Raised from the last needed block's hook to skip the rest of the model."""


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: Side = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> ids, mask (batch, longest) long tensors, padded on `side`."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        if not len(s):
            continue
        sl = slice(0, len(s)) if side == "right" else slice(t - len(s), t)
        ids[r, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[r, sl] = 1
    return ids, mask


def forward_inputs(ids: torch.Tensor, mask: torch.Tensor, left: bool) -> dict[str, torch.Tensor]:
    """attention_mask (on the ids' device) and, for left padding, explicit position ids (real
    tokens count from 0 whatever the padding), as every backend passes them to the model."""
    out = {"attention_mask": mask.to(ids.device)}
    if left:
        out["position_ids"] = (torch.cumsum(mask, 1) - 1).clamp(min=0).to(ids.device)
    return out


@dataclass(frozen=True)
class Batch:
    """One padded batch: ids (b, T) on the model's input device, mask (b, T) on CPU, left padding?"""

    ids: torch.Tensor
    mask: torch.Tensor
    left: bool = False

    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's forward (input_ids, attention_mask, position_ids)."""
        return {"input_ids": self.ids, **forward_inputs(self.ids, self.mask, self.left)}


class Runner(Protocol):
    """A capture backend bound to one model: pools every wanted site of one batch. The forward may
    stop after `last_layer` (the deepest wanted block)."""

    def __call__(self, batch: Batch, wanted: Wanted, last_layer: int, pooling: Pooling) -> Pooled: ...
