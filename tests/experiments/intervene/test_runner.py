"""The measurement apparatus on tiny random models: measures against numpy / brute force, Gumbel-max
sampling against softmax, cached sampling against full recomputation, the negative control is
bit-identical, the positive control injects exactly its documented size, the washout profile, probes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from experiments.helpers import make_setup, word_prompts
from steerkit.errors import ExperimentError
from steerkit.experiments import InterveneConfig, run_intervention
from steerkit.experiments import measures as M
from steerkit.experiments.batch import tf_batch
from steerkit.experiments.intervene.apparatus import arm, forward_capture, planted_coupling, prepare_prompts
from steerkit.experiments.intervene.experiment import make_probe, run_experiment
from steerkit.experiments.intervene.sampling import choose_sampler, generate_rows
from steerkit.experiments.intervene.washout import DEAD, site_profile, summarize_washout
from steerkit.generation import pad_id
from steerkit.vectors.readout import ConceptVectors

CFG = InterveneConfig(levels=(0.9,), seeds=2, max_new_tokens=6, continuation_tokens=4)


def test_measures_against_numpy_and_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    pa = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    pb = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    ta, tb = torch.tensor(a), torch.tensor(b)
    kl = M.kl_per_position(torch.log_softmax(ta, -1), torch.log_softmax(tb, -1)).numpy()
    np.testing.assert_allclose(kl, (pa * np.log(pa / pb)).sum(-1), rtol=1e-10)
    assert torch.all(M.kl_per_position(torch.log_softmax(ta, -1), torch.log_softmax(ta, -1)) == 0)
    tgt = torch.tensor([0, 3, 6, 2, 1])
    np.testing.assert_allclose(M.nll_per_position(torch.log_softmax(ta, -1), tgt).numpy(), -np.log(pa[range(5), tgt]))
    np.testing.assert_allclose(M.entropy_per_position(ta).numpy(), -(pa * np.log(pa)).sum(-1) / math.log(7), rtol=1e-6)
    for k in (1, 3, 7):
        want = [len(set(np.argsort(-a[i])[:k]) & set(np.argsort(-b[i])[:k])) / k for i in range(5)]
        np.testing.assert_allclose(M.topk_overlap(ta, tb, k).numpy(), want)
    assert M.distinct_n([1, 2, 1, 2, 1], 2) == 2 / 4  # bigrams (1,2) (2,1) (1,2) (2,1)
    assert M.distinct_n([1, 2, 3], 1) == 1.0 and M.distinct_n([4, 4, 4, 4], 1) == 0.25
    assert M.distinct_n([5], 2) == 1.0  # no bigram at all
    assert M.generated_length([5, 6, 0, 7], 0) == 2 and M.generated_length([5, 6], 0) == 2
    assert M.sampling_steps(2, 6) == 3 and M.sampling_steps(6, 6) == 6
    with pytest.raises(ValueError, match="known"):
        M.measure_info("loudness")


def test_gumbel_max_draws_follow_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    p = torch.softmax(logits, -1).numpy()
    gens = [torch.Generator().manual_seed(s) for s in range(6000)]
    draws = (logits + M.gumbel_noise(5, gens)).argmax(-1).numpy()
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(draws)))
    again = M.gumbel_noise(5, [torch.Generator().manual_seed(s) for s in range(3)])
    assert torch.equal(again, M.gumbel_noise(5, [torch.Generator().manual_seed(s) for s in range(3)]))


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba", "rwkv", "gemma3"])
@pytest.mark.parametrize("name", ["additive", "gate"])
def test_sampling_equals_full_recomputation(family, name, tiny_lm_factory):
    """The sampler the apparatus check picks (left-padded batch, per-prompt generate(), or recomputation)
    samples exactly what a full forward per token samples, prompt by prompt, with the phases carried
    across cached calls; replaying an arm's own tokens reproduces its distributions exactly."""
    lm = tiny_lm_factory(family)
    setup = make_setup(lm, name=name, layer=1)
    prompts = prepare_prompts(lm, word_prompts(3, seed=7, length=4) + word_prompts(1, seed=8, length=9), 4)
    setup = dataclasses.replace(setup, sampler=choose_sampler(setup, prompts, CFG))
    want_sampler = {"llama": "batched", "gpt2": "batched", "mamba": "generate", "gemma3": "batched"}
    if family in want_sampler:  # transformers' cached RWKV generation disagrees with its full forward
        assert setup.sampler == want_sampler[family]
    ref = dataclasses.replace(setup, sampler="recompute")
    seeds = [[11 + i, 12 + i] for i in range(len(prompts))]
    for level in (None, 0.2):
        with arm(setup, setup.coupling, level, "vonmises", detached=False, carry_state=setup.carry_state) as hook:
            got = generate_rows(setup, hook, prompts, seeds, CFG)
            again = generate_rows(setup, hook, prompts, seeds, CFG, replay=got["tokens"])
        with arm(ref, ref.coupling, level, "vonmises", detached=False) as hook:
            want = generate_rows(ref, hook, prompts, seeds, CFG)
        assert torch.equal(got["tokens"], want["tokens"])
        np.testing.assert_allclose(got["gen_entropy"], want["gen_entropy"], atol=1e-5)
        assert torch.equal(again["tokens"], got["tokens"]) and torch.equal(again["top"], got["top"])


def test_negative_control_is_bit_identical(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    setup = make_setup(lm)
    prompts = prepare_prompts(lm, word_prompts(3), 4)
    ids, mask = tf_batch(prompts, pad_id(lm))
    outs = {}
    for level in (None, 0.1, 0.9):
        with arm(setup, setup.coupling, level, "vonmises", detached=True, carry_state=True) as hook:
            cap = forward_capture(setup, hook, ids, mask, [2, 3], None)
            gen = generate_rows(setup, hook, prompts, [[5, 6]] * 3, CFG)
            assert hook.last.r_applied is None  # R computed, not applied
        outs[level] = (cap["logits"], gen["tokens"], gen["top"])
    for level in (0.1, 0.9):
        assert all(torch.equal(x, y) for x, y in zip(outs[level], outs[None], strict=True))
    with torch.no_grad():
        bare = lm.model(ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(bare, outs[None][0])  # detached = the model without the coupling


def test_positive_control_injects_documented_size(tiny_lm_factory):
    """Planted additive coupling: the forced and free arms differ at the coupled block by exactly
    alpha (r - R_t) rms(h_t) u per token (h: the block's own output, u a unit vector)."""
    lm = tiny_lm_factory("llama")
    setup = make_setup(lm)
    alpha, r = 0.5, 0.9
    planted = planted_coupling(setup, alpha)
    u, c = planted.u.double(), planted.config.center
    assert float(u.norm()) == pytest.approx(1.0) and float(planted.alpha) == alpha
    bare: dict[str, torch.Tensor] = {}
    block2 = lm.adapter.blocks(lm.model)[2]
    for pp in prepare_prompts(lm, word_prompts(3, seed=1), 4):
        ids, mask = tf_batch([pp], pad_id(lm))
        h = block2.register_forward_hook(lambda m, a, o: bare.update(h=lm.adapter.get_hidden(o)[0].double()))
        with torch.no_grad():
            lm.model(ids, use_cache=False)
        h.remove()
        with arm(setup, planted, None, "clamp", detached=False) as hook:
            free = forward_capture(setup, hook, ids, mask, [2, 3], None)
            r_t = hook.last.r[0].double()[:, None]  # (T, 1)
        with arm(setup, planted, r, "clamp", detached=False) as hook:
            forced = forward_capture(setup, hook, ids, mask, [2, 3], None)
        h0 = bare["h"]  # (T, hidden)
        rms = h0.pow(2).mean(-1, keepdim=True).sqrt()
        np.testing.assert_allclose(free["block_2"][0].double(), h0 + alpha * (r_t - c) * rms * u, atol=1e-5)
        np.testing.assert_allclose(forced["block_2"][0].double(), h0 + alpha * (r - c) * rms * u, atol=1e-5)
        keys = ("block_2", "block_3")
        prof = site_profile({k: free[k][0] for k in keys}, {k: forced[k][0] for k in keys})
        want = (alpha * (r - r_t).abs() * rms).squeeze(-1) / (h0 + alpha * (r_t - c) * rms * u).norm(dim=-1)
        assert prof["block_2"]["raw"] == pytest.approx(float(want.mean()), rel=1e-5)


def test_washout_multiplicative_dies_additive_survives(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    prepared = prepare_prompts(lm, word_prompts(2, seed=2), 4)
    cfg = dataclasses.replace(CFG, levels=(0.05,))
    out = {}
    for name, layer in (("multiplicative", 3), ("additive", 3), ("multiplicative", 1)):
        setup = make_setup(lm, name=name, alpha=1.0, layer=layer)
        data = run_experiment(setup, prepared, cfg, "real")
        out[name, layer] = (data, summarize_washout(data.washout[0], layer))
    data, s = out["multiplicative", 3]  # a per-token rescaling right before the final RMSNorm
    assert s["injected"] > 0.01 and s["injected_dir"] < 1e-6
    assert s["logits"] < 0.01 * s["injected"] and s["dies_at"] == "block_3"  # only the norm's eps leaks
    assert np.all(data.diffs["kl"] == 0.0)  # below the floor: nothing reaches the distribution
    _, s = out["additive", 3]
    assert s["dies_at"] is None and s["logits"] > DEAD and s["survival"]["final_norm"] > 0.5
    _, s = out["multiplicative", 1]  # rescaled at block 1, but block 2 adds to a rescaled stream
    assert s["injected_dir"] < 1e-6 and s["dies_at"] is None and s["logits"] > DEAD


def test_probe_scores_match_hidden_states(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    g = torch.Generator().manual_seed(0)
    vec = {la: torch.nn.functional.normalize(torch.randn(3, 32, generator=g), dim=-1) for la in (0, 2)}
    cv = ConceptVectors(["calm", "afraid", "proud"], [0, 2], vec, {la: torch.ones(3) for la in (0, 2)},
                        centers={2: torch.randn(32, generator=g)})  # fmt: skip
    setup = make_setup(lm, layer=1)
    cfg = dataclasses.replace(CFG, concepts=("proud", "calm"))
    probe = make_probe(cv, 1, 32, cfg)
    assert probe.layer == 2 and probe.concepts == ["proud", "calm"]
    prepared = prepare_prompts(lm, word_prompts(2, seed=4), 4)
    data = run_experiment(setup, prepared, cfg, "real", probe)
    for i, pp in enumerate(prepared):
        hs = {}
        ids = torch.tensor([pp.prompt_ids + pp.cont_ids])
        for level in (None, 0.9):
            with arm(setup, setup.coupling, level, "vonmises", detached=False), torch.no_grad():
                hs[level] = lm.model(ids, output_hidden_states=True, use_cache=False).hidden_states[3][0]
        p = len(pp.prompt_ids)
        delta = (hs[0.9] - hs[None])[p - 1 : -1].double().mean(0)  # the centre cancels in the difference
        for c, idx in (("proud", 2), ("calm", 0)):
            assert data.diffs[f"probe:{c}"][i, 0] == pytest.approx(float(delta @ vec[2][idx].double()), abs=1e-5)
    with pytest.raises(ExperimentError, match="none at or after"):
        make_probe(cv, 3, 32, CFG)
    with pytest.raises(ExperimentError, match="hidden size"):
        make_probe(cv, 1, 64, CFG)


def test_run_restores_state_and_is_deterministic(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    setup = make_setup(lm)
    prompts = word_prompts(2, seed=6)
    rng_before = torch.get_rng_state()
    a = run_intervention(setup, prompts, dataclasses.replace(CFG, method="vonmises"))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert setup.core.force_R is None and not setup.core.detached and not setup.core.training
    b = run_intervention(setup, prompts, dataclasses.replace(CFG, method="vonmises"))
    for name in a.experiments:
        for m, d in a.experiments[name].diffs.items():
            assert np.array_equal(d, b.experiments[name].diffs[m]), (name, m)
    assert set(a.experiments) == {"real", "negative", "positive"}
    assert a.experiments["real"].diffs["kl"].shape == (2, 1)
