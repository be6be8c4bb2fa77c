"""Calibration of the whole test procedure on a tiny model, simulated at the level of per-prompt paired
differences (fast, and exact: the simulated experiments use the very seeds real runs would use).

Null: coupling detached. Teacher-forced measures are then exactly 0 on every prompt (p = 1); the
sampled-generation measures vary with the seeds. For B experiments with base seeds b = 0..B-1 we
generate every (prompt, arm, draw) of all of them in one batch per (prompt, arm), check that
`run_experiment` with seed b reproduces experiment b exactly, then test each experiment.

Power: the positive control (planted additive coupling, alpha = InterveneConfig().positive_alpha,
the documented strength) on random subsets of 8 of 16 prompts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.helpers import make_setup, word_prompts
from steerkit import stats
from steerkit.experiments import InterveneConfig
from steerkit.experiments import measures as M
from steerkit.experiments.intervene.apparatus import arm, prepare_prompts
from steerkit.experiments.intervene.experiment import GEN_MEASURES, run_experiment
from steerkit.experiments.intervene.sampling import generate_rows
from steerkit.experiments.prompts import arm_seed

LEVEL = 0.9
B = 400  # simulated experiments (binomial sd of a 5% rate: 1.1%)
CFG = InterveneConfig(levels=(LEVEL,), seeds=2, max_new_tokens=12, distinct_n=1, continuation_tokens=6)


def _pool(setup, prepared, cfg, n_exp):
    """Per-seed generation measures (n_prompts, 2 arms, n_exp, seeds) of the negative control's arms
    for base seeds 0..n_exp-1, one generate() call per (prompt, arm)."""
    out = {m: np.zeros((len(prepared), 2, n_exp, cfg.seeds)) for m in GEN_MEASURES}
    for i, pp in enumerate(prepared):
        for a, level in enumerate((None, LEVEL)):
            seeds = [arm_seed(b, i, a, j) for b in range(n_exp) for j in range(cfg.seeds)]
            with arm(setup, setup.coupling, level, cfg.method, detached=True, carry_state=setup.carry_state) as hook:
                g = generate_rows(setup, hook, [pp], [seeds], cfg)
            for m in GEN_MEASURES:
                out[m][i, a] = g[m].reshape(n_exp, cfg.seeds)
    return out


def _pvalues(diffs: dict[str, np.ndarray], cfg) -> dict[str, float]:
    return {m: stats.sign_flip_test(d, M.measure_info(m)[0], cfg.permutations) for m, d in diffs.items()}


@pytest.fixture(scope="module")
def null_sim(peaked_lm):
    setup = make_setup(peaked_lm)
    prepared = prepare_prompts(peaked_lm, word_prompts(12, seed=3), 6)
    real = {b: run_experiment(setup, prepared, dataclasses.replace(CFG, seed=b), "negative") for b in (0, 1)}
    return setup, prepared, real, _pool(setup, prepared, CFG, B)


def test_null_simulation_is_faithful(null_sim):
    """Detached coupling: teacher-forced measures exactly 0; the pool reproduces real runs exactly."""
    _, _, real, pool = null_sim
    for data in real.values():
        for m in ("kl", "entropy", "nll", "topk"):
            assert np.all(data.diffs[m] == 0.0), m
        assert all(v["raw"] == 0.0 for prof in data.washout for v in prof.values())
    for b, data in real.items():
        for m in GEN_MEASURES:
            # same tokens; U differs only by float32 rounding between batch sizes
            np.testing.assert_allclose(data.per_seed[m], pool[m][:, :, b, :], rtol=0, atol=1e-5, err_msg=m)
            want = pool[m][:, 1, b].mean(-1) - pool[m][:, 0, b].mean(-1)
            np.testing.assert_allclose(data.diffs[m][:, 0], want, rtol=0, atol=1e-5)
    # the generation measures really vary (otherwise the null would be degenerate)
    for m in GEN_MEASURES:
        assert np.std(pool[m]) > 0, m


def test_null_pvalues_uniform_and_fpr(null_sim):
    _, prepared, _, pool = null_sim
    p = {m: [] for m in (*GEN_MEASURES, "any_holm")}
    for b in range(B):
        diffs = {m: pool[m][:, 1, b].mean(-1) - pool[m][:, 0, b].mean(-1) for m in GEN_MEASURES}
        pv = _pvalues(diffs, CFG)
        for m in GEN_MEASURES:
            p[m].append(pv[m])
        family = [*pv.values(), 1.0, 1.0, 1.0, 1.0]  # kl, entropy, nll, topk: exactly 0 -> p = 1
        p["any_holm"].append(float(np.min(stats.holm(family))))
    grid = np.linspace(0.01, 0.99, 99)
    for m in GEN_MEASURES:
        x = np.sort(p[m])
        fpr = float(np.mean(x <= 0.05))
        cdf = np.searchsorted(x, grid, side="right") / B  # P(p <= a)
        assert np.max(cdf - grid) < 0.05, m  # valid: never more rejections than the level promises
        if m == "distinct":
            # distinct-1 of 12-token texts is 1.0 for most draws: most d_i are exactly 0 and the test
            # is valid but conservative (it can only err towards larger p-values)
            assert fpr <= 0.08, (m, fpr)
            continue
        assert 0.02 <= fpr <= 0.08, (m, fpr)
        assert np.mean(x) >= 0.45, m
        if m == "gen_entropy":  # continuous: p-values uniform (KS distance)
            ks = float(np.max(np.abs(x - np.arange(1, B + 1) / B)))
            assert ks < 0.09, (m, ks)  # 1.63 / sqrt(400) = 0.082 is the 1% critical value for iid draws
    assert np.mean(np.array(p["any_holm"]) < 0.05) <= 0.08  # family-wise error after Holm


def test_planted_shift_detected(null_sim):
    """An additive effect of d_z = 1.2 (shift / sd of the null per-prompt differences) on 12 prompts is
    detected in >= 90% of simulated experiments (before correction)."""
    _, _, _, pool = null_sim
    m = "gen_entropy"
    null = np.stack([pool[m][:, 1, b].mean(-1) - pool[m][:, 0, b].mean(-1) for b in range(B)])  # (B, n)
    shift = 1.2 * float(null.std())
    hits = [stats.sign_flip_test(null[b] + shift) <= 0.05 for b in range(B)]
    assert np.mean(hits) >= 0.9


def test_positive_control_power(peaked_lm):
    """Planted additive coupling of the documented strength, 8 of 16 prompts per simulated experiment,
    Holm over all 7 measures with the sampled ones at p = 1 (the least favourable case): KL detects it
    in >= 90% of experiments."""
    setup = make_setup(peaked_lm)
    cfg = dataclasses.replace(CFG, positive_alpha=InterveneConfig(levels=(0.5,)).positive_alpha)
    prepared = prepare_prompts(peaked_lm, word_prompts(16, seed=5), 6)
    data = run_experiment(setup, prepared, cfg, "positive")
    assert np.all(data.diffs["kl"][:, 0] > cfg.kl_floor)
    rng = np.random.default_rng(0)
    detected = []
    for _ in range(B):
        idx = rng.choice(16, 8, replace=False)
        pv = _pvalues({m: data.diffs[m][idx, 0] for m in ("kl", "entropy", "nll")}, cfg)
        family = [pv["kl"], pv["entropy"], pv["nll"], 1.0, 1.0, 1.0, 1.0]
        detected.append(stats.holm(family)[0] < cfg.alpha)
    assert np.mean(detected) >= 0.9
    # the same experiment with the coupling detached detects nothing
    neg = run_experiment(setup, prepared, cfg, "negative")
    assert stats.sign_flip_test(neg.diffs["kl"][:, 0], "greater") == 1.0
