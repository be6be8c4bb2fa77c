"""What the training loop and its objectives share: one step's output and the Objective protocol.

The loop (loop.py) drives an Objective (ce.py: CE + U; preference.py: DPO / ORPO); the objectives see
the loop only through `TrainerView`. Both sides import this module, so neither imports the other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..phase.couplings import PhaseHook
from .config import TrainConfig
from .runs import RunPaths


@dataclass
class StepOut:
    """One step's loss and what the loop logs: scalars, and R / U per token (mask: which count)."""

    loss: torch.Tensor
    scalars: dict[str, Any]
    r: torch.Tensor  # (rows, positions)
    u: torch.Tensor  # (rows, positions)
    mask: torch.Tensor | None = None


class TrainerView(Protocol):
    """The part of the loop's Trainer that an objective uses."""

    cfg: TrainConfig
    paths: RunPaths
    lm: Any  # a LoadedModel
    device: Any  # where batches go (sharded: the first shard)

    @property
    def model(self) -> Any: ...

    def phase_hook(self) -> PhaseHook: ...

    def trainable_state(self) -> dict[str, torch.Tensor]: ...

    def load_trainable(self, tensors: dict[str, torch.Tensor], prefix: str) -> None: ...


class Objective(Protocol):
    def prepare(self, t: TrainerView) -> dict[str, Any]:
        """Load and check the data (before anything is written); returns facts for config.json."""
        ...

    def begin(self, t: TrainerView, fresh: bool) -> None:
        """After the run folder exists (fresh) or before the checkpoint is restored (resume)."""
        ...

    def step(self, t: TrainerView, hook: PhaseHook, step: int) -> StepOut: ...

    def validate(self, t: TrainerView, hook: PhaseHook) -> tuple[dict[str, Any], float]:
        """Held-out metrics and the score the lr controller minimises."""
        ...
