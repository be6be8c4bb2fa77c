"""Kuramoto mean-field dynamics, the order parameter and von Mises phase sampling (pure functions).

The classic model (Kuramoto 1975; review: Acebron et al., Rev. Mod. Phys. 77, 137, 2005, eq. 1-3):

    dtheta_i/dt = omega_i + (K / N) * sum_j sin(theta_j - theta_i) + drive_i
    R * exp(i psi) = (1 / N) * sum_j exp(i theta_j)

Using the order parameter the sum becomes the mean-field form
    dtheta_i/dt = omega_i + K * R * sin(psi - theta_i) + drive_i,
and R sin(psi - theta_i) = S cos(theta_i) - C sin(theta_i) with C = mean cos(theta), S = mean sin(theta),
which needs neither atan2 nor R, so the step has exact gradients even at R = 0.

Forcing R: phases drawn i.i.d. from a von Mises(mu, kappa) distribution have mean resultant length
A(kappa) = I1(kappa) / I0(kappa) (Mardia & Jupp, Directional Statistics, 2000, eq. 3.5.31-3.5.34), so
kappa = A^{-1}(R) gives phases whose expected resultant is R. `clamp_phases` instead places N phases
evenly on an arc whose resultant length is exactly R.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import i0e, i1e

EPS = 1e-8  # added to R^2 so that dR/dtheta exists at R = 0


def order_parameter(theta: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, psi) of phases theta (..., N): R e^{i psi} = mean_j e^{i theta_j}.

    R = sqrt(C^2 + S^2 + eps) (so R >= sqrt(eps) and its gradient is finite everywhere).
    """
    c = torch.cos(theta).mean(-1)  # (...)
    s = torch.sin(theta).mean(-1)  # (...)
    r = torch.sqrt(c * c + s * s + eps)  # (...)
    psi = torch.atan2(s, c)  # (...)
    return r, psi


def mean_field_velocity(
    theta: torch.Tensor, omega: torch.Tensor, k: torch.Tensor | float, drive: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """dtheta/dt = omega + K R sin(psi - theta) + drive, for theta (..., N), omega (N,), drive (..., N)."""
    c = torch.cos(theta)  # (..., N)
    s = torch.sin(theta)  # (..., N)
    cm = c.mean(-1, keepdim=True)  # (..., 1)  = R cos psi
    sm = s.mean(-1, keepdim=True)  # (..., 1)  = R sin psi
    coupling = sm * c - cm * s  # (..., N)  = R sin(psi - theta_i)
    return omega + k * coupling + drive  # (..., N)


def mean_field_step(
    theta: torch.Tensor,
    omega: torch.Tensor,
    k: torch.Tensor | float,
    dt: float,
    drive: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """One explicit Euler step of the mean-field Kuramoto equation. theta (..., N) -> (..., N)."""
    return theta + dt * mean_field_velocity(theta, omega, k, drive)


def pairwise_velocity(
    theta: torch.Tensor, omega: torch.Tensor, k: torch.Tensor | float, drive: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """The O(N^2) pairwise form omega_i + (K/N) sum_j sin(theta_j - theta_i) + drive_i (for tests)."""
    diff = theta.unsqueeze(-2) - theta.unsqueeze(-1)  # (..., N, N): [i, j] = theta_j - theta_i
    return omega + k * torch.sin(diff).mean(-1) + drive  # (..., N)


def pairwise_step(
    theta: torch.Tensor,
    omega: torch.Tensor,
    k: torch.Tensor | float,
    dt: float,
    drive: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """One Euler step of the pairwise Kuramoto equations. theta (..., N) -> (..., N)."""
    return theta + dt * pairwise_velocity(theta, omega, k, drive)


def integrate(
    theta0: torch.Tensor,
    omega: torch.Tensor,
    k: torch.Tensor | float,
    dt: float,
    n_steps: int,
    drive: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Euler-integrate n_steps with a constant drive; returns the trajectory (n_steps + 1, ..., N)."""
    out = [theta0]
    th = theta0
    for _ in range(n_steps):
        th = mean_field_step(th, omega, k, dt, drive)
        out.append(th)
    return torch.stack(out)


# ---- forcing R ---------------------------------------------------------------------------
def bessel_ratio(kappa: np.ndarray | float) -> np.ndarray:
    """A(kappa) = I1(kappa) / I0(kappa), computed with exponentially scaled Bessel functions."""
    k = np.asarray(kappa, dtype=np.float64)
    return np.where(k == 0, 0.0, i1e(k) / i0e(k))


def kappa_for_r(r: float, tol: float = 1e-12, max_iter: int = 50) -> float:
    """The von Mises concentration kappa with A(kappa) = I1(kappa)/I0(kappa) = r, for r in [0, 1).

    Starts from Best & Fisher's approximation (Mardia & Jupp eq. 5.3.8 region), refined by Newton
    with A'(kappa) = 1 - A/kappa - A^2 (Mardia & Jupp eq. 3.5.35), safeguarded by bisection.
    """
    if not 0.0 <= r < 1.0:
        raise ValueError(f"r must lie in [0, 1), got {r}")
    if r < 1e-12:
        return 0.0
    if r < 0.53:
        k = 2 * r + r**3 + 5 * r**5 / 6
    elif r < 0.85:
        k = -0.4 + 1.39 * r + 0.43 / (1 - r)
    else:
        k = 1 / (r**3 - 4 * r**2 + 3 * r)
    lo, hi = 0.0, max(2 * k, 1.0)
    while float(bessel_ratio(hi)) < r:
        hi *= 2
    for _ in range(max_iter):
        a = float(bessel_ratio(k))
        f = a - r
        if abs(f) < tol:
            break
        if f > 0:
            hi = min(hi, k)
        else:
            lo = max(lo, k)
        deriv = 1 - a / k - a * a
        step = k - f / deriv if deriv > 0 else -1.0
        k = step if lo < step < hi else 0.5 * (lo + hi)
    return float(k)


def sample_vonmises_phases(
    r: float, shape: tuple[int, ...], mu: torch.Tensor | float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Phases (*shape) i.i.d. von Mises(mu, kappa(r)): their expected resultant vector is r e^{i mu}.

    mu broadcasts against shape (e.g. (batch, 1) for one mean phase per row). Draws use the
    Best & Fisher (1979) rejection algorithm on `generator` (the global torch RNG when None).
    """
    kappa = kappa_for_r(r)
    if kappa == 0.0:
        u = torch.rand(shape, generator=generator)
        return (u * 2 * math.pi - math.pi) + mu
    return _vonmises_rejection(kappa, shape, generator) + mu


def _vonmises_rejection(kappa: float, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Best & Fisher (1979) rejection sampler on an explicit generator. Returns (*shape) in (-pi, pi]."""
    n = int(np.prod(shape)) if shape else 1
    tau = 1 + math.sqrt(1 + 4 * kappa * kappa)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    rr = (1 + rho * rho) / (2 * rho)
    out = torch.empty(n, dtype=torch.float64)
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 16
        u1, u2, u3 = torch.rand((3, m), generator=generator, dtype=torch.float64)
        z = torch.cos(math.pi * u1)
        f = (1 + rr * z) / (rr + z)
        c = kappa * (rr - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        x = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        x = x[ok][: n - filled]
        out[filled : filled + len(x)] = x
        filled += len(x)
    return out.reshape(shape).to(torch.float32)


def arc_resultant(half_width: float, n: int) -> float:
    """Resultant length of n phases at half_width * (2j + 1 - n) / n, j = 0..n-1 (an evenly filled arc).

    Sum of a geometric series (the Dirichlet kernel): R(a) = sin(a) / (n sin(a / n)), decreasing
    from 1 at a = 0 to 0 at a = pi (phases evenly spread on the whole circle).
    """
    if half_width == 0.0:
        return 1.0
    return abs(math.sin(half_width) / (n * math.sin(half_width / n)))


def clamp_phases(r: float, n: int, mu: torch.Tensor | float = 0.0) -> torch.Tensor:
    """n deterministic phases (..., n) symmetric around mu whose resultant length is exactly r."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"r must lie in [0, 1], got {r}")
    lo, hi = 0.0, math.pi
    for _ in range(80):  # bisection on the monotone arc_resultant
        mid = 0.5 * (lo + hi)
        if arc_resultant(mid, n) > r:
            lo = mid
        else:
            hi = mid
    a = 0.5 * (lo + hi)
    offsets = torch.tensor([a * (2 * j + 1 - n) / n for j in range(n)], dtype=torch.float32)  # (n,)
    mu_t = torch.as_tensor(mu, dtype=torch.float32)
    return mu_t.unsqueeze(-1) + offsets  # (..., n)
