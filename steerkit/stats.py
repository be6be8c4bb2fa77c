"""Shared statistics (pure numpy functions): paired intervention experiments, steer-eval, training's
validation CIs. The ground floor: it imports nothing from steerkit.

- `sign_flip_test`: the paired randomisation test (Fisher 1935, ch. 21; Good, Permutation Tests,
  2005, sec. 3.6.2). Under H0 each per-prompt difference d_i is symmetric about 0, so every sign
  pattern s in {-1, +1}^n is equally likely; the statistic is the mean T = mean_i d_i and
  p = #{s : T(s * d) >= T(d)} / 2^n (two-sided: |T|). Exact enumeration when 2^n <= n_perm, else
  Monte Carlo with p = (1 + #{T* >= T}) / (1 + B), which is exact as a test (Phipson & Smyth,
  Stat. Appl. Genet. Mol. Biol. 9, 2010, eq. 2). Ties count as extreme (conservative).
- `holm`: Holm's step-down adjustment (Holm, Scand. J. Stat. 6, 1979):
  p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the sorted p-values.
- `bootstrap_ci`: percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13).
- `effect_size`: mean, sd, Cohen's d_z = mean / sd of the paired differences, median.
- `spearman` / `trend_test`: Spearman's rho with average ranks for ties; the trend test computes
  rho between dose and effect within each prompt and sign-flip tests the rho_i across prompts.
- `draws_test`: is x one more draw from the (normal) population that R control draws came from?
  t = (x - mean) / (s sqrt(1 + 1/R)) ~ t_{R-1} under H0 (the prediction interval for a new
  observation; Hahn & Meeker, Statistical Intervals, 1991, sec. 4.7). Exact for normal draws,
  also when all R + 1 values share a common (equicorrelated) component.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

Alternative = Literal["two-sided", "greater", "less"]
ALTERNATIVES: tuple[str, ...] = get_args(Alternative)
ZERO_TOL = 1e-12  # |d| at or below this counts as exactly no change


def _check_alt(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _finite(d: np.ndarray | list[float]) -> np.ndarray:
    x = np.asarray(d, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError("paired differences must be finite")
    return x


def all_sign_patterns(n: int) -> np.ndarray:
    """Every sign vector in {-1, +1}^n as rows (2^n, n), row 0 all +1 (the observed labelling)."""
    if n > 24:
        raise ValueError(f"exact enumeration of 2^{n} sign patterns is too large")
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1  # (2^n, n)
    return 1.0 - 2.0 * bits


def sign_flip_test(
    d: np.ndarray | list[float],
    alternative: Alternative = "two-sided",
    n_perm: int = 10000,
    rng: np.random.Generator | int | None = 0,
) -> float:
    """p-value of H0: the paired differences d (n,) are symmetric about 0.

    alternative 'greater': large mean(d) is evidence (e.g. a divergence); 'less': small mean(d).
    Exact over all 2^n sign patterns when 2^n <= n_perm, else Monte Carlo with n_perm patterns.
    All-zero differences give p = 1.
    """
    _check_alt(alternative)
    x = _finite(d)
    n = len(x)
    if n == 0:
        raise ValueError("need at least one paired difference")
    if np.all(np.abs(x) <= ZERO_TOL):
        return 1.0
    if 2**n <= n_perm:
        signs = all_sign_patterns(n)  # (2^n, n)
        exact = True
    else:
        g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        signs = g.choice(np.array([-1.0, 1.0]), size=(n_perm, n))  # (B, n)
        exact = False
    null = signs @ x / n  # (patterns,)
    t = float(x.mean())
    eps = 1e-9 * float(np.abs(x).mean())  # relative: float noise in the sums must not break ties
    if alternative == "two-sided":
        hits = int(np.sum(np.abs(null) >= abs(t) - eps))
    elif alternative == "greater":
        hits = int(np.sum(null >= t - eps))
    else:
        hits = int(np.sum(null <= t + eps))
    if exact:
        return min(1.0, hits / len(null))
    return min(1.0, (1 + hits) / (1 + len(null)))


def min_attainable_p(n: int, alternative: Alternative = "two-sided", n_perm: int = 10000) -> float:
    """The smallest p-value `sign_flip_test` can return for n prompts (a power limit)."""
    _check_alt(alternative)
    if 2**n <= n_perm:
        return (2.0 if alternative == "two-sided" else 1.0) / 2**n
    return 1.0 / (1 + n_perm)


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm-adjusted p-values (same order as the input); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def bootstrap_ci(
    d: np.ndarray | list[float],
    n_boot: int = 2000,
    level: float = 0.95,
    rng: np.random.Generator | int | None = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(d): resample the n prompts with replacement n_boot times."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x = _finite(d)
    if len(x) == 0:
        raise ValueError("need at least one value")
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = g.integers(0, len(x), size=(n_boot, len(x)))  # (B, n)
    means = x[idx].mean(1)  # (B,)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def effect_size(d: np.ndarray | list[float]) -> dict[str, float]:
    """Mean, sd (ddof=1), Cohen's d_z = mean / sd (0 when all d are equal to 0), median, n."""
    x = _finite(d)
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if sd > 0:
        dz = mean / sd
    else:
        dz = 0.0 if abs(mean) <= ZERO_TOL else math.copysign(math.inf, mean)
    return {"mean": mean, "sd": sd, "d_z": dz, "median": float(np.median(x)), "n": len(x)}


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Spearman's rho = Pearson correlation of the (average) ranks; 0 when either side is constant."""
    rx, ry = rankdata(np.asarray(x)), rankdata(np.asarray(y))
    if len(rx) != len(ry):
        raise ValueError("x and y must have the same length")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return 0.0 if den == 0 else float(rx @ ry) / den


def trend_test(
    dose: np.ndarray, effect: np.ndarray, n_perm: int = 10000, rng: np.random.Generator | int | None = 0
) -> dict[str, float]:
    """Monotone dose-response across prompts.

    dose, effect: (n_prompts, n_levels). rho_i = spearman(dose_i, effect_i) per prompt; the
    two-sided sign-flip test of the rho_i asks whether the trend is consistent across prompts.
    """
    dose, effect = np.asarray(dose, dtype=np.float64), np.asarray(effect, dtype=np.float64)
    if dose.shape != effect.shape or dose.ndim != 2:
        raise ValueError(f"dose and effect must both be (n_prompts, n_levels), got {dose.shape}, {effect.shape}")
    rhos = np.array([spearman(dose[i], effect[i]) for i in range(len(dose))])  # (n_prompts,)
    p = sign_flip_test(rhos, "two-sided", n_perm, rng)
    return {"rho": float(rhos.mean()), "p": p, "n": len(rhos)}


def draws_test(x: float, draws: np.ndarray | list[float], alternative: Alternative = "greater") -> float:
    """p-value of H0: x and the R control draws (R,) are exchangeable normal draws (module doc).
    'greater': a large x is evidence. Needs R >= 2; equal draws give p = 0 or 1 (x beyond them or not)."""
    _check_alt(alternative)
    r = _finite(draws)
    if len(r) < 2:
        raise ValueError("need at least two control draws")
    if not math.isfinite(x):
        raise ValueError("x must be finite")
    from scipy.stats import t as t_dist

    m, s = float(r.mean()), float(r.std(ddof=1))
    diff = x - m
    if s <= ZERO_TOL * max(1.0, abs(m)):
        hit = {"greater": diff > 0, "less": diff < 0, "two-sided": diff != 0}[alternative]
        return 0.0 if hit else 1.0
    t = diff / (s * math.sqrt(1.0 + 1.0 / len(r)))
    df = len(r) - 1
    if alternative == "greater":
        return float(t_dist.sf(t, df))
    if alternative == "less":
        return float(t_dist.cdf(t, df))
    return float(min(1.0, 2.0 * t_dist.sf(abs(t), df)))
