"""PhaseCore: N Kuramoto oscillators driven by a model's hidden state, carried across tokens.

For every token t the core runs `steps_per_token` mean-field Euler steps (kuramoto.py)
    theta <- theta + dt * (omega + K R sin(psi - theta) + drive_t),   drive_t = W (h_t / rms(h_t)) + b
and reports R_t, psi_t and the phases. The phase state is carried from token to token like the
state of a recurrent model. Hidden states are RMS-normalised before the projection so the same
initialisation suits models whose residual norms differ by orders of magnitude.

Modes (not part of the saved state):
- force_R = r: the dynamics are bypassed; phases are drawn from a von Mises with resultant r
  ('vonmises') or placed deterministically with resultant exactly r ('clamp'); the coupling
  receives r itself.
- detached = True: R is still computed and reported, but the coupling receives the constant
  `detached_R` (or nothing at all when detached_R is None): the negative control.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from . import kuramoto

ForceMethod = Literal["vonmises", "clamp"]


@dataclass(frozen=True)
class PhaseConfig:
    """Oscillator hyper-parameters. Units: omega and drive in radians per unit time, dt in time units."""

    n_oscillators: int = 16
    K: float = 2.0
    learn_K: bool = False
    dt: float = 0.1
    steps_per_token: int = 4
    omega_std: float = 0.5  # natural frequencies are initialised N(0, omega_std^2)
    drive_std: float = 0.5  # initial drive has about this standard deviation per oscillator

    def __post_init__(self) -> None:
        if self.n_oscillators < 2:
            raise ValueError(f"n_oscillators must be >= 2, got {self.n_oscillators}")
        if self.dt <= 0 or self.steps_per_token < 1:
            raise ValueError(f"dt must be > 0 and steps_per_token >= 1, got {self.dt}, {self.steps_per_token}")
        if self.omega_std < 0 or self.drive_std < 0:
            raise ValueError("omega_std and drive_std must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PhaseOutput:
    """What the core produced for one forward call.

    r, psi: (batch, seq); theta: (batch, seq, N) phases after each token; drive: (batch, seq, N);
    state: (batch, N) phases after the last token; r_applied: (batch, seq) what the coupling uses,
    or None when the coupling must do nothing (detached without a constant).
    """

    r: torch.Tensor
    psi: torch.Tensor
    theta: torch.Tensor
    drive: torch.Tensor
    state: torch.Tensor
    r_applied: torch.Tensor | None
    forced: bool = False


class PhaseCore(nn.Module):
    """N oscillators with learnable natural frequencies omega, coupling K (optionally learnable)
    and a learned drive projection hidden -> N. A separate module: the language model is never
    wrapped; couplings.PhaseHook connects the two through hooks."""

    def __init__(self, hidden_size: int, config: PhaseConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PhaseConfig()
        self.hidden_size = hidden_size
        n = config.n_oscillators
        self.omega = nn.Parameter(torch.randn(n) * config.omega_std)  # (N,)
        k = torch.tensor(float(config.K))
        if config.learn_K:
            self.K = nn.Parameter(k)
        else:
            self.register_buffer("K", k)
        self.drive = nn.Linear(hidden_size, n)
        with torch.no_grad():
            self.drive.weight.normal_(0.0, config.drive_std / math.sqrt(hidden_size))
            self.drive.bias.zero_()
        self.theta0: torch.Tensor
        self.register_buffer("theta0", torch.rand(n) * 2 * math.pi - math.pi)  # (N,) initial phases
        self.force_R: float | None = None
        self.force_method: ForceMethod = "vonmises"
        self.detached = False
        self.detached_R: float | None = None

    # ---- modes ------------------------------------------------------------------------
    def set_force(self, r: float | None, method: ForceMethod = "vonmises") -> None:
        """Force R to r (None: back to the dynamics)."""
        if method not in get_args(ForceMethod):
            raise ValueError(f"force method must be one of {get_args(ForceMethod)}, got {method!r}")
        if r is not None and not 0.0 <= r < 1.0:
            raise ValueError(f"forced R must lie in [0, 1), got {r}")
        self.force_R, self.force_method = r, method

    def set_detached(self, detached: bool, constant: float | None = None) -> None:
        """Negative control: R is computed but the coupling gets `constant` (None: nothing)."""
        self.detached, self.detached_R = detached, constant

    @contextmanager
    def forced(self, r: float | None, method: ForceMethod = "vonmises") -> Iterator[PhaseCore]:
        old = (self.force_R, self.force_method)
        self.set_force(r, method)
        try:
            yield self
        finally:
            self.force_R, self.force_method = old

    # ---- dynamics ---------------------------------------------------------------------
    def initial_state(self, batch: int) -> torch.Tensor:
        return self.theta0.unsqueeze(0).expand(batch, -1).clone()  # (batch, N)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """drive = W (h / rms(h)) + b. h (batch, seq, hidden) -> (batch, seq, N)."""
        h = h.to(self.drive.weight.dtype)
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)  # (batch, seq, hidden)
        return self.drive(x)

    def forward(
        self, h: torch.Tensor, state: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> PhaseOutput:
        """Run the oscillators over the positions of h (batch, seq, hidden).

        state: (batch, N) phases carried from a previous call (None: theta0).
        mask: (batch, seq) 1 for real tokens; the phases do not move on padding.
        """
        b, t, _ = h.shape
        drive = self.project(h)  # (batch, seq, N)
        theta = self.initial_state(b).to(drive) if state is None else state.to(drive)  # (batch, N)
        if self.force_R is not None:
            return self._forced(drive, theta, mask)
        cfg = self.config
        thetas: list[torch.Tensor] = []
        for i in range(t):
            new = theta
            d = drive[:, i]  # (batch, N)
            for _ in range(cfg.steps_per_token):
                new = kuramoto.mean_field_step(new, self.omega, self.K, cfg.dt, d)
            theta = new if mask is None else torch.where(mask[:, i, None].bool(), new, theta)
            thetas.append(theta)
        th = torch.stack(thetas, 1)  # (batch, seq, N)
        r, psi = kuramoto.order_parameter(th)  # (batch, seq)
        return PhaseOutput(r, psi, th, drive, theta, self._applied(r))

    def _forced(self, drive: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor | None) -> PhaseOutput:
        """Bypass the dynamics: the mean phase turns at the mean natural frequency."""
        b, t, n = drive.shape
        assert self.force_R is not None
        r0 = float(self.force_R)
        _, psi0 = kuramoto.order_parameter(theta.detach())  # (batch,)
        turn = self.config.steps_per_token * self.config.dt * self.omega.detach().mean()
        steps = torch.arange(1, t + 1, dtype=drive.dtype, device=drive.device)  # (seq,)
        if mask is not None:
            steps = mask.to(drive.dtype).cumsum(1)  # (batch, seq): padding does not advance
        psi = (psi0.unsqueeze(1) + turn * steps).expand(b, t)  # (batch, seq)
        if self.force_method == "clamp":
            th = kuramoto.clamp_phases(r0, n, psi.cpu()).to(drive)  # (batch, seq, N)
        else:
            th = kuramoto.sample_vonmises_phases(r0, (b, t, n)).to(drive) + psi.unsqueeze(-1)
        th = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        psi = torch.remainder(psi + math.pi, 2 * math.pi) - math.pi
        r = torch.full((b, t), r0, dtype=drive.dtype, device=drive.device)
        return PhaseOutput(r, psi, th, drive, th[:, -1], self._applied(r), forced=True)

    def _applied(self, r: torch.Tensor) -> torch.Tensor | None:
        if not self.detached:
            return r
        if self.detached_R is None:
            return None
        return torch.full_like(r, float(self.detached_R)).detach()

    def extra_repr(self) -> str:
        c = self.config
        return f"hidden={self.hidden_size}, N={c.n_oscillators}, K={float(self.K):.3g}, dt={c.dt}, steps={c.steps_per_token}"
