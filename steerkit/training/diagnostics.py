"""Training diagnostics: validation-driven lr control and early stopping, gradient norms per
component with the ratio flag, activation collapse and R collapse.

Following the hybrid-training notes: validate every N steps on a held-out split; stop early after
`patience` validations without improvement; on a plateau (no improvement for a share of the run's
steps) cut the lr by 30-50% and stop after a number of cuts that bring no improvement; compare
gradient norms of the phase core with each block kind of the base (flag a ratio outside 0.3-3.0);
flag components whose output no longer varies across tokens; warn when R > 0.99 on most tokens.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class LRController:
    """Validation bookkeeping. All fields are JSON scalars (saved in checkpoints)."""

    lr_scale: float = 1.0
    best_val: float = math.inf
    best_step: int = 0
    evals_since_best: int = 0
    steps_since_best: int = 0
    last_eval_step: int = 0
    reductions_since_best: int = 0
    n_reductions: int = 0
    stop_reason: str | None = None
    events: list[str] = field(default_factory=list)

    def update(
        self, step: int, val: float, *, patience: int, plateau_steps: int, factor: float, max_bad: int
    ) -> list[str]:
        """Record a validation loss at `step`; returns the events it caused ('improved', 'lr_reduced', 'stop')."""
        events: list[str] = []
        elapsed = step - self.last_eval_step
        self.last_eval_step = step
        if val < self.best_val - 1e-12:
            self.best_val, self.best_step = float(val), step
            self.evals_since_best = self.steps_since_best = self.reductions_since_best = 0
            events.append("improved")
        else:
            self.evals_since_best += 1
            self.steps_since_best += elapsed
            if self.steps_since_best >= plateau_steps:
                if self.reductions_since_best >= max_bad:
                    self.stop_reason = f"plateau after {max_bad} lr reductions without validation improvement"
                else:
                    self.lr_scale *= factor
                    self.n_reductions += 1
                    self.reductions_since_best += 1
                    self.steps_since_best = 0
                    events.append("lr_reduced")
                    log.warning("validation plateau at step %d: lr x%.2f (now x%.3g)", step, factor, self.lr_scale)
            if self.stop_reason is None and self.evals_since_best >= patience:
                self.stop_reason = f"no validation improvement in {patience} evaluations (early stopping)"
            if self.stop_reason:
                events.append("stop")
        self.events.extend(f"{step}:{e}" for e in events)
        return events

    def state(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_val"] = None if math.isinf(self.best_val) else self.best_val
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> LRController:
        d = dict(d)
        d["best_val"] = math.inf if d.get("best_val") is None else d["best_val"]
        return cls(**d)


def grad_norms(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradients of each named parameter group (groups without grads are left out)."""
    out: dict[str, float] = {}
    for name, params in groups.items():
        gs = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
        if gs:
            out[name] = float(torch.stack(gs).sum().sqrt())
    return out


def grad_ratios(norms: dict[str, float], band: tuple[float, float]) -> tuple[dict[str, float], bool]:
    """phase / base-kind gradient-norm ratios, and whether any lies outside band (both must train)."""
    phase = norms.get("phase")
    ratios: dict[str, float] = {}
    if phase is None:
        return ratios, False
    for k, v in norms.items():
        if k != "phase":
            ratios[k] = phase / v if v > 0 else math.inf
    flag = any(not band[0] <= r <= band[1] for r in ratios.values())
    return ratios, flag


def relative_token_variance(x: torch.Tensor) -> float:
    """Mean over features of the variance across tokens, divided by the mean square.
    x (batch, seq, features) or (batch, seq) -> scalar; 0 means every token gives the same output."""
    x = x.detach().float()
    flat = x.reshape(-1, 1) if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # (tokens, features)
    if flat.shape[0] < 2:
        return math.nan
    var = flat.var(0, unbiased=False).mean()
    return float(var / (flat.pow(2).mean() + 1e-30))


def collapsed(outputs: dict[str, torch.Tensor], threshold: float) -> list[str]:
    """Names of the outputs whose relative token variance is below threshold."""
    return [k for k, v in outputs.items() if relative_token_variance(v) < threshold]


def r_collapse(r: torch.Tensor, level: float = 0.99, share: float = 0.5) -> tuple[float, bool]:
    """(share of tokens with R > level, whether that is most tokens): the seeds' inference failure."""
    frac = float((r.detach() > level).float().mean())
    return frac, frac > share


class Warner:
    """Logs each kind of training trouble once per run: activation collapse (per component),
    R collapse, a phase/base gradient-norm ratio outside its band."""

    def __init__(self, band: tuple[float, float]) -> None:
        self.band = band
        self.warned: set[str] = set()

    def check(self, m: dict[str, Any]) -> None:
        for name in m["collapsed"]:
            if name not in self.warned:
                self.warned.add(name)
                log.warning("activation collapse: %s has near-zero variance across tokens (step %d)", name, m["step"])
        if m["r_collapse"] and "R" not in self.warned:
            self.warned.add("R")
            log.warning("R collapse: R > 0.99 on %.0f%% of tokens (step %d)", 100 * m["R_above_099"], m["step"])
        if m["grad_ratio_flag"] and "ratio" not in self.warned:
            self.warned.add("ratio")
            log.warning("gradient-norm ratio phase/base %s outside %s (step %d)", m["grad_ratio"], self.band, m["step"])
