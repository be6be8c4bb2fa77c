"""Couplings through hooks on tiny random models: exact oracles for what each coupling does,
gradients to the core, the normalisation wash-out of `multiplicative`, and hook hygiene."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from steerkit.errors import LayerSpecError
from steerkit.phase import CouplingConfig, PhaseConfig, PhaseCore, PhaseHook, make_coupling


def _hidden(lm) -> int:
    return int(lm.model.get_input_embeddings().weight.shape[1])


def _capture(module, store, key):
    def hook(m, inp, out):
        store[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    return module.register_forward_hook(hook)


def _setup(lm, name, **kw):
    core = PhaseCore(_hidden(lm), PhaseConfig(n_oscillators=16, learn_K=True))
    coupling = make_coupling(CouplingConfig(name=name, **kw), _hidden(lm))
    return core, coupling


@pytest.mark.parametrize("name", ["multiplicative", "additive", "gate"])
@pytest.mark.parametrize("family", ["llama", "mamba", "rwkv", "qwen3_5"])
def test_gradients_reach_core(family, name, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    core, coupling = _setup(lm, name, alpha=0.5)
    ids = torch.randint(0, 256, (2, 8))
    with PhaseHook(lm, core, coupling, 1) as hook:
        logits = lm.model(ids, use_cache=False).logits  # RWKV writes its cache in place
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    params = [core.omega, core.K, core.drive.weight, core.drive.bias, coupling.alpha]
    grads = torch.autograd.grad(loss, params)  # the shared tiny model's own grads stay untouched
    assert hook.last.r.shape == (2, 8)
    for g in grads:
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba", "gpt_neox", "gemma3"])
def test_multiplicative_before_norm_washes_out_additive_does_not(family, tiny_lm_factory):
    """The seeds' failure as a test: couple at the last block, whose output goes straight into the
    final normalisation. Multiplicative changes the block output but not the normalised one."""
    lm = tiny_lm_factory(family)
    a, model = lm.adapter, lm.model
    last = a.n_blocks(model) - 1
    ids = torch.randint(0, 256, (2, 10))
    base: dict[str, torch.Tensor] = {}
    hs = [_capture(a.final_norm(model), base, "norm"), _capture(a.blocks(model)[last], base, "block")]
    with torch.no_grad():
        model(ids)
    for h in hs:
        h.remove()
    rel = {}
    for name in ("multiplicative", "additive"):
        core, coupling = _setup(lm, name, alpha=1.0, center=0.0)
        got: dict[str, torch.Tensor] = {}
        with torch.no_grad(), PhaseHook(lm, core, coupling, last):  # capture hooks run after it
            hs = [_capture(a.final_norm(model), got, "norm"), _capture(a.blocks(model)[last], got, "block")]
            try:
                model(ids)
            finally:
                for h in hs:
                    h.remove()
        block_change = (got["block"] - base["block"]).norm() / base["block"].norm()
        assert block_change > 0.05  # the coupling really acts on the residual stream
        rel[name] = float((got["norm"] - base["norm"]).norm() / base["norm"].norm())
    assert rel["multiplicative"] < 1e-2  # only the norm's eps lets anything through
    assert rel["additive"] > 0.05 and rel["additive"] > 10 * rel["multiplicative"]


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_scales_mixer_output_exactly(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    a, model = lm.adapter, lm.model
    layer = a.n_blocks(model) // 2
    ids = torch.randint(0, 256, (2, 7))
    base: dict[str, torch.Tensor] = {}
    hs = [_capture(a.mixer_write_module(model, layer), base, "m"), _capture(a.blocks(model)[layer], base, "b")]
    with torch.no_grad():
        ref_logits = model(ids).logits
    for h in hs:
        h.remove()
    core, coupling = _setup(lm, "gate", alpha=1.0, center=0.0)
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad(), core.forced(0.7, "clamp"), PhaseHook(lm, core, coupling, layer):
        # these run after the gate hook
        hs = [_capture(a.mixer_write_module(model, layer), got, "m"), _capture(a.blocks(model)[layer], got, "b")]
        try:
            model(ids)
        finally:
            for h in hs:
                h.remove()
    torch.testing.assert_close(got["m"], base["m"] * 1.7, rtol=1e-5, atol=1e-6)
    # and the extra 0.7 m reaches the residual stream (Gemma's post-attention norm would divide a factor
    # on o_proj away: the gate acts after it); the MLP after the mixer does not cancel it
    assert float((got["b"] - base["b"]).norm()) > 0.25 * 0.7 * float(base["m"].norm())
    # zero strength leaves the model exactly as it was
    core, coupling = _setup(lm, "gate", alpha=0.0)
    with torch.no_grad(), PhaseHook(lm, core, coupling, layer):
        torch.testing.assert_close(model(ids).logits, ref_logits, rtol=0, atol=0)


def test_additive_given_direction_exact(tiny_lm_factory):
    lm = tiny_lm_factory("qwen2")
    a, model = lm.adapter, lm.model
    ids = torch.randint(0, 256, (1, 6))
    u = torch.randn(_hidden(lm))
    base: dict[str, torch.Tensor] = {}
    h = _capture(a.blocks(model)[1], base, "b")
    with torch.no_grad():
        model(ids)
    h.remove()
    core = PhaseCore(_hidden(lm))
    coupling = make_coupling(CouplingConfig("additive", alpha=2.0, center=0.5, learn_direction=False), _hidden(lm), u)
    assert "u" not in dict(coupling.named_parameters())
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad(), core.forced(0.9, "clamp"), PhaseHook(lm, core, coupling, 1):
        h = _capture(a.blocks(model)[1], got, "b")
        try:
            model(ids)
        finally:
            h.remove()
    x = base["b"]
    want = x + 2.0 * 0.4 * x.pow(2).mean(-1, keepdim=True).sqrt() * u / u.norm()
    torch.testing.assert_close(got["b"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        make_coupling(CouplingConfig("additive"), _hidden(lm), torch.zeros(_hidden(lm)))
    with pytest.raises(ValueError):
        make_coupling(CouplingConfig("gate"), _hidden(lm), u)


def test_detached_control_and_hook_hygiene(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    model = lm.model
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        ref = model(ids).logits
    core, coupling = _setup(lm, "additive", alpha=1.0)
    core.set_detached(True)  # R computed, nothing applied
    with torch.no_grad(), PhaseHook(lm, core, coupling, 2) as hook:
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)
    assert hook.last.r.shape == (2, 6)
    core.set_detached(False)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), PhaseHook(lm, core, coupling, 2):
        assert not torch.equal(model(ids).logits, ref)
        raise RuntimeError("boom")
    with torch.no_grad():  # hooks are gone even after an exception
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)
    with pytest.raises(LayerSpecError):
        PhaseHook(lm, core, coupling, 99)
    with pytest.raises(ValueError):
        CouplingConfig(name="bogus")  # type: ignore[arg-type]


def test_carry_state_matches_full_sequence_with_cache(tiny_lm_factory):
    """Incremental decoding with a KV cache sees the same R as one pass over the whole sequence."""
    lm = tiny_lm_factory("llama")
    core, coupling = _setup(lm, "additive", alpha=0.5)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad(), PhaseHook(lm, core, coupling, 1) as hook:
        full_logits = lm.model(ids).logits
        r_full = hook.last.r
    with torch.no_grad(), PhaseHook(lm, core, coupling, 1, carry_state=True, keep=None) as hook:
        out = lm.model(ids[:, :5], use_cache=True)
        logits = [out.logits]
        past = out.past_key_values
        for t in range(5, 9):
            out = lm.model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits)
        r_inc = torch.cat([o.r for o in hook.outputs], 1)
    torch.testing.assert_close(r_inc, r_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(logits, 1), full_logits, rtol=1e-4, atol=1e-5)
