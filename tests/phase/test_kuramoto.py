"""Oracles for the Kuramoto math and the PhaseCore: pairwise equations, scipy ODE integration,
scipy's von Mises distribution and Bessel functions, numpy re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from steerkit.phase import PhaseConfig, PhaseCore
from steerkit.phase import kuramoto as K


def test_mean_field_step_equals_pairwise():
    g = torch.Generator().manual_seed(1)
    n = 16
    theta = torch.rand((5, n), generator=g, dtype=torch.float64) * 6.28 - 3.14
    omega = torch.randn(n, generator=g, dtype=torch.float64)
    drive = torch.randn((5, n), generator=g, dtype=torch.float64)
    for k in (0.3, 2.0, 7.5):
        mf = K.mean_field_step(theta, omega, k, 0.05, drive)
        # independent numpy pairwise form: (K/N) sum_j sin(theta_j - theta_i)
        th = theta.numpy()
        pair = omega.numpy() + k / n * np.sin(th[:, None, :] - th[:, :, None]).sum(-1) + drive.numpy()
        np.testing.assert_allclose(mf.numpy(), th + 0.05 * pair, rtol=0, atol=1e-12)
        torch.testing.assert_close(mf, K.pairwise_step(theta, omega, k, 0.05, drive), rtol=0, atol=1e-12)


def test_order_parameter_matches_numpy():
    th = np.random.default_rng(0).uniform(-math.pi, math.pi, (7, 16))
    z = np.exp(1j * th).mean(-1)
    r, psi = K.order_parameter(torch.from_numpy(th), eps=0.0)
    np.testing.assert_allclose(r.numpy(), np.abs(z), atol=1e-12)
    np.testing.assert_allclose(psi.numpy(), np.angle(z), atol=1e-12)
    # evenly spread phases: R = 0 exactly, but the eps floor keeps R and its gradient finite
    even = torch.linspace(0, 2 * math.pi, 17, dtype=torch.float64)[:-1].requires_grad_(True)
    r0, _ = K.order_parameter(even)
    r0.backward()
    assert abs(float(r0.detach()) - math.sqrt(K.EPS)) < 1e-9 and torch.isfinite(even.grad).all()


def test_r_trajectory_matches_scipy_ode():
    rng = np.random.default_rng(3)
    n, k, t_end = 16, 2.0, 4.0
    omega = rng.normal(0, 0.5, n)
    th0 = rng.uniform(-math.pi, math.pi, n)

    def rhs(_t: float, th: np.ndarray) -> np.ndarray:  # classic pairwise model
        return omega + k / n * np.sin(th[None, :] - th[:, None]).sum(1)

    times = np.linspace(0, t_end, 9)
    sol = integrate.solve_ivp(rhs, (0, t_end), th0, t_eval=times, method="DOP853", rtol=1e-10, atol=1e-12)
    r_ref = np.abs(np.exp(1j * sol.y).mean(0))  # (9,)
    dt = 2e-4
    n_steps = round(t_end / dt)
    traj = K.integrate(torch.from_numpy(th0), torch.from_numpy(omega), k, dt, n_steps)
    r, _ = K.order_parameter(traj, eps=0.0)  # (n_steps + 1,)
    idx = np.round(times / dt).astype(int)
    assert r_ref.max() - r_ref.min() > 0.1  # the trajectory actually moves
    np.testing.assert_allclose(r.numpy()[idx], r_ref, atol=1e-3)


@pytest.mark.parametrize("r", [0.0, 0.05, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_kappa_solves_bessel_ratio(r):
    kappa = K.kappa_for_r(r)
    if r == 0:
        assert kappa == 0
        return
    assert special.iv(1, kappa) / special.iv(0, kappa) == pytest.approx(r, abs=1e-9)
    # independent: E[cos x] under scipy's von Mises density
    mean_cos, _ = integrate.quad(lambda x: math.cos(x) * stats.vonmises.pdf(x, kappa), -math.pi, math.pi)
    assert mean_cos == pytest.approx(r, abs=1e-7)


def test_kappa_rejects_bad_r():
    with pytest.raises(ValueError):
        K.kappa_for_r(1.0)
    with pytest.raises(ValueError):
        K.kappa_for_r(-0.1)


@pytest.mark.parametrize("r", [0.2, 0.5, 0.85, 0.97])
def test_forced_samples_have_requested_r(r):
    n, m = 16, 3000
    g = torch.Generator().manual_seed(int(r * 100))
    th = K.sample_vonmises_phases(r, (m, n), mu=0.7, generator=g).double()  # (m, n)
    # the expected resultant vector is r e^{i mu}: mean of cos(theta - mu) over m*n draws
    proj = torch.cos(th - 0.7).mean()
    assert abs(float(proj) - r) < 4 / math.sqrt(m * n)
    assert abs(float(torch.sin(th - 0.7).mean())) < 4 / math.sqrt(m * n)
    # per set of N oscillators, R is near r within the finite-N spread ~ 1/sqrt(N)
    rn, _ = K.order_parameter(th, eps=0.0)
    assert abs(float(rn.mean()) - r) < 1.5 / math.sqrt(n)
    # the draws follow scipy's von Mises law
    x = torch.remainder(th - 0.7 + math.pi, 2 * math.pi) - math.pi
    p = stats.kstest(x.reshape(-1)[:5000].numpy(), stats.vonmises(K.kappa_for_r(r)).cdf).pvalue
    assert p > 1e-3


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("r", [0.0, 0.3, 0.9, 0.999, 1.0])
def test_clamp_phases_exact_r(n, r):
    th = K.clamp_phases(r, n, mu=torch.tensor([0.0, 1.5])).double().numpy()  # (2, n)
    z = np.exp(1j * th).mean(-1)
    np.testing.assert_allclose(np.abs(z), r, atol=1e-6)
    if r > 0.01:
        np.testing.assert_allclose(np.angle(z), [0.0, 1.5], atol=1e-5)


# ---- PhaseCore ------------------------------------------------------------------------------
def _numpy_core(core: PhaseCore, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent re-implementation: RMS-normalised projection, pairwise Euler steps per token."""
    w = core.drive.weight.detach().double().numpy()
    b = core.drive.bias.detach().double().numpy()
    om = core.omega.detach().double().numpy()
    k, dt, steps = float(core.K), core.config.dt, core.config.steps_per_token
    x = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6)
    drive = x @ w.T + b  # (B, T, N)
    th = np.tile(core.theta0.double().numpy(), (h.shape[0], 1))
    rs, thetas = [], []
    for t in range(h.shape[1]):
        for _ in range(steps):
            th = th + dt * (om + k / len(om) * np.sin(th[:, None, :] - th[:, :, None]).sum(-1) + drive[:, t])
        thetas.append(th)
        rs.append(np.abs(np.exp(1j * th).mean(-1)))
    return np.stack(rs, 1), np.stack(thetas, 1)


def test_phase_core_matches_numpy_and_carries_state():
    core = PhaseCore(24, PhaseConfig(n_oscillators=16, steps_per_token=3, dt=0.1)).double()
    h = torch.randn(3, 11, 24, dtype=torch.float64) * 5
    out = core(h)
    r_ref, th_ref = _numpy_core(core, h.numpy())
    np.testing.assert_allclose(out.theta.detach().numpy(), th_ref, atol=1e-9)
    np.testing.assert_allclose(out.r.detach().numpy(), r_ref, atol=1e-6)  # eps floor only
    assert out.r.shape == (3, 11) and out.psi.shape == (3, 11) and out.state.shape == (3, 16)
    # the phase state carries across calls exactly like one long call
    a = core(h[:, :4])
    b = core(h[:, 4:], a.state)
    torch.testing.assert_close(torch.cat([a.r, b.r], 1), out.r)
    # padding does not move the phases
    mask = torch.ones(3, 11)
    mask[0, 5:] = 0
    m = core(h, mask=mask)
    torch.testing.assert_close(m.theta[0, 5:], m.theta[0, 4:5].expand(6, -1))
    torch.testing.assert_close(m.r[1:], out.r[1:])


def test_phase_core_forced_and_detached():
    core = PhaseCore(8, PhaseConfig(n_oscillators=16))
    h = torch.randn(4, 6, 8)
    with core.forced(0.9, "clamp"):
        out = core(h)
    r_emp, _ = K.order_parameter(out.theta, eps=0.0)
    torch.testing.assert_close(r_emp, torch.full((4, 6), 0.9), atol=1e-5, rtol=0)
    assert out.forced and torch.equal(out.r_applied, torch.full((4, 6), 0.9))
    with core.forced(0.6):
        out = core(h)
    r_emp, _ = K.order_parameter(out.theta, eps=0.0)
    assert abs(float(r_emp.mean()) - 0.6) < 0.15 and torch.equal(out.r, torch.full((4, 6), 0.6))
    assert core.force_R is None  # the context restored the dynamics
    free = core(h)
    core.set_detached(True)
    det = core(h)
    assert det.r_applied is None
    torch.testing.assert_close(det.r, free.r)  # R is still computed
    core.set_detached(True, 0.5)
    assert torch.equal(core(h).r_applied, torch.full((4, 6), 0.5))
    with pytest.raises(ValueError):
        core.set_force(0.5, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PhaseConfig(n_oscillators=1)
