"""Per-row steering: one forward hook per steered block that edits every row of a batch by that row's
own edit, so one batch can hold requests (or steer-eval arms) with different vectors, strengths,
blocks and modes. Row r's edit at block L is exactly what `steering.steer` does for one sequence:

    add:             h + d            (d = sum_c alpha_c v_c; relative scale: h + |h| d)
    project_out:     h - P h          (P the projector onto the span of the row's concepts)
    ablate_then_add: (h - P h) + d

on the residual the next block reads (RWKV's eval-time rescaling goes through the adapter). A row with
no edit at a block (or a zero add) is left exactly as it was, so strength 0 equals no steering, bit
for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..steering import SCALES, edit_hidden


@dataclass(frozen=True)
class RowEdit:
    """One row's steering. directions: {block: (hidden,) sum_c alpha_c v_c}; bases: {block: (k, hidden)
    orthonormal rows spanning the concepts} (project_out / ablate_then_add only)."""

    directions: dict[int, torch.Tensor]
    scale: str = "absolute"  # steering.SCALES: relative multiplies by the local norm; the others add as built
    mode: str = "add"  # add | project_out | ablate_then_add
    bases: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.mode not in ("add", "project_out", "ablate_then_add"):
            raise ValueError(f"mode must be add, project_out or ablate_then_add, got {self.mode!r}")

    @property
    def layers(self) -> set[int]:
        return set(self.directions) | set(self.bases)

    def acts_at(self, layer: int) -> bool:
        """False when the edit leaves the row untouched at `layer` (no basis and a zero direction)."""
        if self.mode != "add" and layer in self.bases:
            return True
        d = self.directions.get(layer)
        return d is not None and bool(d.any())


class RowSteer:
    """Forward hooks that apply edits[rows[r]] to row r of each call. Set `rows` (indices into edits)
    before each call; None means all rows in order. An edit of None leaves its row untouched."""

    def __init__(self, lm: Any, edits: Sequence[RowEdit | None]) -> None:
        self.lm, self.edits = lm, list(edits)
        self.rows: list[int] | None = None
        self.calls = 0
        self._cache: dict[Any, tuple[torch.Tensor, Any]] = {}

    @classmethod
    def add(cls, lm: Any, layer: int, delta: torch.Tensor, scale: str) -> RowSteer:
        """Row r gets delta[r] (rows, hidden) added at one block (steer-eval's arms)."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        return cls(lm, [RowEdit({layer: d}, scale) for d in delta.float()])

    @property
    def layers(self) -> list[int]:
        return sorted({la for e in self.edits if e is not None for la in e.layers})

    def _hook(self, layer: int) -> Any:
        def fn(module: Any, args: Any, output: Any) -> Any:
            self.calls += 1
            edits = self.edits if self.rows is None else [self.edits[r] for r in self.rows]
            act = [e is not None and e.acts_at(layer) for e in edits]
            if not any(act):
                return None  # nothing to change: the block's output is untouched
            a, model = self.lm.adapter, self.lm.model
            hidden = a.get_hidden(output)  # (b, seq, hidden)
            if hidden.shape[0] != len(edits):
                raise RuntimeError(f"RowSteer: batch of {hidden.shape[0]} rows, {len(edits)} edits")
            factor = a.output_scale(model, layer)  # the next block reads hidden * factor
            if all(e is None or e.mode == "add" for e in edits):  # one vectorised add for the whole batch
                d, rel = self._stacked(layer, edits, hidden)
                d3 = d[:, None, :]  # (b, 1, hidden)
                if rel is None:  # every row absolute: h + d
                    return a.replace_hidden(output, hidden + d3 / factor if factor != 1.0 else hidden + d3)
                add = torch.where(rel[:, None, None], (hidden * factor).norm(dim=-1, keepdim=True) * d3, d3)
                return a.replace_hidden(output, hidden + add / factor)
            new = hidden.clone()
            for r, e in enumerate(edits):
                if act[r] and e is not None:
                    seen = hidden[r : r + 1] * factor
                    d = e.directions.get(layer, torch.zeros(hidden.shape[-1]))
                    edited = edit_hidden(seen, d, e.bases.get(layer), e.scale, e.mode)  # type: ignore[arg-type]
                    new[r : r + 1] = edited / factor if factor != 1.0 else edited
            return a.replace_hidden(output, new)

        return fn

    def _stacked(self, layer: int, edits: list[RowEdit | None], like: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(b, hidden) directions of these rows at `layer` on like's device and dtype, and (b,) bools for the
        relative rows (None when there are none); kept while `rows` stays the same (one per step otherwise)."""
        key = (layer, None if self.rows is None else tuple(self.rows), like.device, like.dtype)
        got = self._cache.get(key)
        if got is None:
            d = torch.stack([_direction(e, layer, like) for e in edits]).to(like.device, like.dtype)
            flags = [e is not None and e.scale == "relative" for e in edits]
            rel = torch.tensor(flags, device=like.device) if any(flags) else None
            got = self._cache[key] = (d, rel)
        return got

    @contextmanager
    def attached(self) -> Iterator[RowSteer]:
        blocks = self.lm.adapter.blocks(self.lm.model)
        handles = [blocks[la].register_forward_hook(self._hook(la)) for la in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _direction(e: RowEdit | None, layer: int, like: torch.Tensor) -> torch.Tensor:
    d = None if e is None else e.directions.get(layer)
    return torch.zeros(like.shape[-1]) if d is None else d.float().cpu()
