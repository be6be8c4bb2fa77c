"""The statistics against independent computations: brute-force sign flips, Holm by hand, the exact
bootstrap distribution by enumeration, scipy's Spearman, and coverage on simulated data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from steerkit import stats


def _brute_sign_flip(d, alternative):
    d = np.asarray(d, float)
    t = d.mean()
    hits = 0
    pats = list(itertools.product([1.0, -1.0], repeat=len(d)))
    for s in pats:
        m = float(np.dot(s, d)) / len(d)
        if alternative == "two-sided":
            hits += abs(m) >= abs(t) - 1e-12
        elif alternative == "greater":
            hits += m >= t - 1e-12
        else:
            hits += m <= t + 1e-12
    return hits / len(pats)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_sign_flip_exact_equals_brute_force(alternative, n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        d = rng.normal(0.3, 1.0, n)
        assert stats.sign_flip_test(d, alternative) == pytest.approx(_brute_sign_flip(d, alternative), abs=1e-12)


def test_sign_flip_by_hand_and_symmetries():
    assert stats.sign_flip_test([1, 2, 3], "greater") == 1 / 8  # only +++ reaches mean 2
    assert stats.sign_flip_test([1, 2, 3], "two-sided") == 2 / 8  # +++ and ---
    assert stats.sign_flip_test([1, 2, 3], "less") == 1.0
    assert stats.sign_flip_test([0.0, 0.0, 0.0, 0.0]) == 1.0  # nothing changed at all
    assert stats.sign_flip_test([1, -1, 1, -1], "two-sided") == 1.0
    d = np.array([0.5, -0.2, 1.3, 0.7, 0.1, -0.4, 0.9])
    assert stats.sign_flip_test(d, "greater") == stats.sign_flip_test(-d, "less")
    assert stats.sign_flip_test(d) == stats.sign_flip_test(-d)
    for n in (4, 8, 12):
        assert stats.sign_flip_test(np.ones(n), "greater") == stats.min_attainable_p(n, "greater") == 1 / 2**n
        assert stats.sign_flip_test(np.ones(n)) == stats.min_attainable_p(n) == 2 / 2**n
    with pytest.raises(ValueError, match="alternative"):
        stats.sign_flip_test([1.0], "bigger")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        stats.sign_flip_test([1.0, float("nan")])


def test_sign_flip_monte_carlo_close_to_exact():
    rng = np.random.default_rng(3)
    d = rng.normal(0.45, 1.0, 15)  # 2^15 patterns > n_perm: Monte Carlo branch
    exact = _brute_sign_flip(d, "two-sided")
    mc = stats.sign_flip_test(d, "two-sided", n_perm=20000, rng=1)
    assert 0.01 < exact < 0.9
    assert mc == pytest.approx(exact, abs=0.012)  # 3 binomial sd at 20000 draws
    assert stats.sign_flip_test(np.ones(15), "greater", n_perm=999) == 1 / 1000  # (1 + 0) / (1 + B)


def test_sign_flip_null_uniform_and_power():
    """Calibration of the test itself: symmetric noise -> uniform p; a shift -> detected."""
    rng = np.random.default_rng(0)
    p_null = np.array([stats.sign_flip_test(rng.standard_t(3, 12)) for _ in range(600)])
    assert 0.02 <= np.mean(p_null <= 0.05) <= 0.08
    assert np.max(np.abs(np.sort(p_null) - (np.arange(1, 601) / 600))) < 0.07  # KS distance to uniform
    p_alt = np.array([stats.sign_flip_test(rng.normal(1.2, 1.0, 12)) for _ in range(300)])
    assert np.mean(p_alt <= 0.05) >= 0.9


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = stats.holm([0.02, float("nan"), 0.01])  # NaN does not count as a test
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
    rng = np.random.default_rng(0)
    for _ in range(20):  # against a direct transcription of Holm's definition
        q = rng.uniform(0, 0.2, 7)
        order = np.argsort(q)
        expect = np.empty(7)
        for rank, i in enumerate(order):
            expect[i] = min(1.0, max(min(1.0, (7 - j) * q[order[j]]) for j in range(rank + 1)))
        assert stats.holm(q) == pytest.approx(expect)


def test_bootstrap_matches_exact_enumeration():
    """n = 5: all 5^5 equally likely resamples give the exact bootstrap distribution of the mean."""
    d = np.array([0.3, -1.2, 2.5, 0.8, 0.1])
    means = np.sort([d[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    lo, hi = stats.bootstrap_ci(d, n_boot=200_000, level=0.95, rng=4)
    cdf = np.arange(1, len(means) + 1) / len(means)
    for q, v in ((0.025, lo), (0.975, hi)):
        below = cdf[np.searchsorted(means, v, side="right") - 1] if v >= means[0] else 0.0
        assert abs(below - q) < 0.006, (q, v, below)


def test_bootstrap_coverage_and_effect_size():
    rng = np.random.default_rng(1)
    cover = 0
    for _ in range(300):
        x = rng.normal(0.5, 1.0, 30)
        lo, hi = stats.bootstrap_ci(x, 1000, 0.95, rng)
        cover += lo <= 0.5 <= hi
    assert 0.90 <= cover / 300 <= 0.98
    es = stats.effect_size([1.0, 2.0, 3.0, 6.0])
    assert es["mean"] == 3.0 and es["median"] == 2.5 and es["n"] == 4
    assert es["sd"] == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3))
    assert es["d_z"] == pytest.approx(3.0 / es["sd"])
    assert stats.effect_size([0.0, 0.0])["d_z"] == 0.0
    assert stats.effect_size([2.0, 2.0])["d_z"] == math.inf


def test_spearman_against_scipy_and_trend():
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = rng.integers(0, 5, 9).astype(float)  # ties
        y = x + rng.normal(0, 1, 9)
        assert stats.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert stats.spearman([1, 2, 3], [10, 20, 30]) == 1.0
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert stats.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert list(stats.rankdata(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    dose = np.tile(np.linspace(0, 1, 5), (10, 1))
    trend = stats.trend_test(dose, 2 * dose + rng.normal(0, 0.2, dose.shape))
    assert trend["rho"] > 0.8 and trend["p"] < 0.01
    flat = stats.trend_test(dose, rng.normal(0, 1, dose.shape))
    assert flat["p"] > 0.01
    with pytest.raises(ValueError):
        stats.trend_test(dose, dose[:, :3])


def test_power_note_names_the_binding_limit():
    """20 prompts could reach p = 2^-20 exactly; 100 permutations cap p at 1/101: the advice must
    be to raise --permutations, not to add prompts. With 4 prompts the prompts are the limit."""
    from steerkit.experiments.intervene.analysis import _remedy, power_note
    from steerkit.experiments.intervene.config import InterveneConfig

    few_perm = InterveneConfig(levels=(0.3,), permutations=100)
    pw = power_note(20, 7, few_perm)
    assert not pw["one_sided_possible"] and pw["one_sided_limited_by"] == "permutations"
    assert "raise --permutations" in _remedy(pw, few_perm, "one_sided") and "above 140" in _remedy(
        pw, few_perm, "one_sided"
    )
    pw = power_note(4, 7, InterveneConfig(levels=(0.3,)))
    assert not pw["one_sided_possible"] and pw["one_sided_limited_by"] == "prompts"
    assert _remedy(pw, InterveneConfig(levels=(0.3,)), "one_sided") == "use more prompts"
    assert power_note(20, 7, InterveneConfig(levels=(0.3,)))["one_sided_possible"]
