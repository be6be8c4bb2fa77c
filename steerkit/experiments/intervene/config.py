"""The design of an intervention experiment: settings, R levels, the three experiments (the prompts
and per-arm seeds live on the floor below, `steerkit.experiments.prompts`, shared with steer-eval).

Paired design (docs/intervene.md): for every prompt, the model with the trained phase core
free-running (the `free` arm) is compared with the same model with R forced to each level (one
arm per level), everything else identical. Three experiments share prompts, levels and seeds:

- real:     the trained core and coupling;
- negative: the same with the coupling detached (R computed, not applied): must show nothing;
- positive: the trained core driving a planted additive coupling of known strength
            (alpha = positive_alpha along a fixed random unit direction): must show an effect.

Seeds: sampled generations of arm a, prompt i, draw j use `arm_seed(seed, i, a, j)`; each arm has
its own seeds, so under the null the generations of two arms are exchangeable and the paired
sign-flip test is exact. Teacher-forced measures use no randomness that reaches the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from ...errors import ExperimentError
from ...phase.core import ForceMethod

EXPERIMENTS: tuple[str, ...] = ("real", "negative", "positive")
MAX_LEVELS = 101  # forced-R levels per run (each level is an arm: prompts x seeds generations)
R_MAX_APPLIED = 1.0 - 1e-6  # PhaseCore forces R in [0, 1); a requested 1.0 is applied as this


@dataclass(frozen=True)
class InterveneConfig:
    """Settings of `steerkit intervene`; the CLI options mirror these fields.

    levels: forced R values in [0, 1] (1.0 is applied as 1 - 1e-6).
    seeds: sampled generations per prompt and arm. max_new_tokens, temperature: sampling.
    top_k: k of the top-k overlap. distinct_n: n of distinct-n. continuation_tokens: length of the
    greedy continuation made for prompts that have none. positive_alpha: strength of the planted
    additive coupling (the residual at the coupled block moves by positive_alpha * |R - center| *
    rms(h) along a fixed unit direction). alpha: significance level after Holm correction.
    kl_floor: a per-prompt KL below this (nats/token) counts as exactly 0 (numerical noise of
    non-deterministic kernels). batch_prompts: prompts per forward pass / generate() call.
    """

    levels: tuple[float, ...]
    method: ForceMethod = "vonmises"
    seeds: int = 5
    seed: int = 0
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 10
    distinct_n: int = 2
    continuation_tokens: int = 24
    positive_alpha: float = 0.5
    alpha: float = 0.05
    permutations: int = 10000
    bootstrap: int = 2000
    kl_floor: float = 1e-7
    batch_prompts: int = 10
    readout_layer: int | None = None
    concepts: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        from ...validate import nonfinite_fields

        bad = nonfinite_fields(self)
        if bad:
            raise ValueError(f"{', '.join(bad)} must be finite numbers (got NaN or inf)")
        check_levels(self.levels)
        if self.method not in get_args(ForceMethod):
            raise ValueError(f"method must be one of {get_args(ForceMethod)}, got {self.method!r}")
        for name in ("seeds", "max_new_tokens", "top_k", "distinct_n", "continuation_tokens", "batch_prompts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.permutations < 100 or self.bootstrap < 100:
            raise ValueError("permutations and bootstrap must be >= 100")
        if self.positive_alpha <= 0 or self.kl_floor < 0:
            raise ValueError("positive_alpha must be > 0 and kl_floor >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_levels(levels: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """Levels must be a non-empty list of finite numbers in [0, 1] without duplicates."""
    if len(levels) == 0:
        raise ExperimentError("no R level given: pass --force-R R (repeatable) or --grid START:STOP:STEP")
    bad = [r for r in levels if not (math.isfinite(r) and 0.0 <= r <= 1.0)]
    if bad:
        raise ExperimentError(f"forced R must lie in [0, 1] (R is an order parameter); got {bad}")
    if len(set(levels)) != len(levels):
        raise ExperimentError(f"duplicate R levels in {list(levels)}")
    return tuple(float(r) for r in levels)


def applied_level(r: float) -> float:
    """The value handed to PhaseCore.set_force (which needs R < 1)."""
    return min(float(r), R_MAX_APPLIED)


def parse_grid(spec: str) -> tuple[float, ...]:
    """'START:STOP:STEP' -> START, START+STEP, ..., STOP (inclusive, rounded to 10 decimals)."""
    parts = spec.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError as e:
        raise ExperimentError(f"--grid {spec!r}: use START:STOP:STEP, e.g. 0:1:0.1") from e
    if not all(math.isfinite(x) for x in (start, stop, step)):
        raise ExperimentError(f"--grid {spec!r}: START, STOP and STEP must be finite numbers, e.g. 0:1:0.1")
    if not step > 0 or stop < start:
        raise ExperimentError(f"--grid {spec!r}: need STEP > 0 and STOP >= START")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > MAX_LEVELS:
        raise ExperimentError(f"--grid {spec!r} gives {n:,} levels, more than {MAX_LEVELS}; use a larger STEP")
    return check_levels([round(start + k * step, 10) for k in range(n)])


def merge_levels(force: tuple[float, ...] | list[float], grid: str | None) -> tuple[float, ...]:
    """--force-R values plus the --grid values, sorted, duplicates removed."""
    levels = [float(r) for r in force] + (list(parse_grid(grid)) if grid else [])
    bad = [r for r in levels if not (math.isfinite(r) and 0.0 <= r <= 1.0)]
    if bad:
        raise ExperimentError(f"forced R must lie in [0, 1] (R is an order parameter); got {bad}")
    return check_levels(sorted(set(levels)))
