"""Settings of `steerkit steer-eval` (the CLI options mirror these fields); imported by the grid, the
analysis and the command, so it imports nothing of theirs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# steering.SCALES, copied so that this module stays free of torch (a test keeps the two equal)
SCALE_NAMES = ("absolute", "equal", "relative")


@dataclass(frozen=True)
class SteerEvalConfig:
    """Settings of `steerkit steer-eval`; the CLI options mirror these fields.

    concepts: names (empty: all). layers: 'auto' (the run layers nearest 1/3, 1/2 and 2/3 of the
    depth) or a block spec (`parse_layers`) of run layers. alphas: strengths (0 is the unsteered
    baseline, always run). scale: absolute (alpha x raw diff-of-means), equal (alpha x the set's median
    vector norm x unit vector: every concept and the random control pushed as hard) or relative (alpha x
    local hidden norm x unit vector); `steering.SCALES`. seeds: sampled continuations per prompt (1 when greedy).
    random_draws: random directions per layer (each at every alpha). max_nll_increase: the
    operating point's fluency budget (nats/token). min_success: the least success rate an operating
    point must reach. top: success = the steered concept among the top `top`. significance: Holm level.
    """

    concepts: tuple[str, ...] = ()
    layers: str = "auto"
    alphas: tuple[float, ...] = (0.0, 3.0, 4.0, 6.0, 8.0)  # no operating point at 2 at 64 tokens (docs/steer-eval.md)
    scale: str = "absolute"
    seeds: int = 2
    seed: int = 0
    max_new_tokens: int = (
        64  # the judge reads 64 tokens top-3 for 99% of written stories, 40 for 89% (docs/steer-eval.md)
    )
    temperature: float = 1.0
    greedy: bool = False
    random_draws: int = 32
    max_nll_increase: float = 1.0
    min_success: float = 0.5
    top: int = 3
    significance: float = 0.05
    permutations: int = 10000
    readout_layer: int | None = None
    batch_rows: int = 128

    def __post_init__(self) -> None:
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas must be finite numbers, got {bad}")
        if not any(a != 0 for a in self.alphas):
            raise ValueError("give at least one alpha other than 0 (0 is the unsteered baseline)")
        if self.scale not in SCALE_NAMES:
            raise ValueError(f"scale must be one of {', '.join(SCALE_NAMES)}, got {self.scale!r}")
        for name in ("seeds", "max_new_tokens", "top", "batch_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.random_draws < 2:
            raise ValueError(f"random-draws must be at least 2 (the control's spread), got {self.random_draws}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (math.isfinite(self.max_nll_increase) and 0.0 <= self.min_success <= 1.0):
            raise ValueError("max-nll-increase must be finite and min-success in [0, 1]")
        if not 0.0 < self.significance < 1.0:
            raise ValueError(f"significance must lie in (0, 1), got {self.significance}")

    @property
    def nonzero_alphas(self) -> list[float]:
        return sorted({float(a) for a in self.alphas if a != 0}, key=lambda a: (abs(a), a))

    @property
    def n_seeds(self) -> int:
        return 1 if self.greedy else self.seeds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
