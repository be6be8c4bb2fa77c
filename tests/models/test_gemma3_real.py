"""Real model: gemma3-270m (Gemma 3 270M, dequantised from the zoo's Q4_K_M GGUF).

Oracles: the pulled weights equal an independent decoding of the GGUF (tests/ggml_reference.py, via
tests/fixtures/gemma3_270m/reference.json); transformers' forward equals a Gemma 3 forward written
from the architecture (tests/gemma3_reference.py), across the 512-token sliding window; steerkit's
capture, generation and steering paths agree with plain forwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gemma3_reference
import numpy as np
import pytest
import torch

from steerkit.capture import capture, parse_pooling
from steerkit.generation import GenSpec, generate_chunk
from steerkit.models import preflight
from steerkit.steering import steer
from steerkit.vectors import ConceptVectors

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "gemma3_270m" / "reference.json"
TEXTS = [
    "The capital of France is",
    "She walked home in the rain, thinking about the letter she had not yet opened.",
    "Once upon a time",
    "He smiled.",
]

pytestmark = pytest.mark.real


def test_weights_equal_an_independent_dequantisation(gemma3):
    ref = json.loads(REFERENCE.read_text())["tensors"]
    sd = gemma3.model.state_dict()
    assert gemma3.info["missing_keys"] == [] and gemma3.info["n_params"] == 268_098_176
    assert set(ref) == set(sd) - {"lm_head.weight"}  # tied to the embedding
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    for name, want in ref.items():
        t = sd[name].detach().double().reshape(-1)
        assert list(sd[name].shape) == want["shape"], name
        n = t.numel()
        assert math.isclose(float(t.sum()), want["sum"], rel_tol=1e-6, abs_tol=1e-9 * math.sqrt(n * want["sumsq"]))
        assert math.isclose(float(t.square().sum()), want["sumsq"], rel_tol=1e-6), name
        idx = torch.from_numpy(np.linspace(0, n - 1, 8).astype(np.int64))
        np.testing.assert_allclose(t[idx].numpy(), want["values"], rtol=1e-6, atol=0, err_msg=name)


def test_forward_equals_an_independent_implementation(gemma3):
    """520 tokens: the last 8 positions see past the 512-token window of the local layers."""
    model, a = gemma3.model, gemma3.adapter
    ids = torch.randint(4, model.config.vocab_size, (520,), generator=torch.Generator().manual_seed(0))
    w = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(ids[None], output_hidden_states=True, logits_to_keep=8)
        want_logits, want_blocks = gemma3_reference.forward(w, ids)
        no_window = gemma3_reference.forward(w, ids, window=None, n_layers=1)[1][0]
    hs = out.hidden_states
    n = a.n_blocks(model)
    assert n == 18 and [i.attention_window for i in a.block_infos(model)] == ([512] * 5 + [None]) * 3
    for i in range(n - 1):  # the adapter's output_hidden_states rule, against the reference blocks
        got = hs[a.hidden_states_index(i)][0]
        assert float((got - want_blocks[i]).norm() / want_blocks[i].norm()) < 1e-5, f"block {i}"
    torch.testing.assert_close(hs[-1][0], a.final_norm(model)(want_blocks[-1]), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out.logits[0], want_logits, atol=2e-3, rtol=1e-4)  # logits span ~60
    assert bool((out.logits[0].argmax(-1) == want_logits.argmax(-1)).all())
    # the test sees the window: without it block 0 differs where the window cuts (positions >= 512)
    late = (no_window[512:] - want_blocks[0][512:]).norm() / want_blocks[0][512:].norm()
    early = (no_window[:512] - want_blocks[0][:512]).norm() / want_blocks[0][:512].norm()
    assert float(late) > 1e-3 and float(early) < 1e-6


def test_capture_path_gives_the_plain_forward(gemma3):
    """Bucketed, padded capture of several texts = one plain forward per text; the last block's
    residual through the final norm and the LM head gives the plain forward's logits."""
    a, model = gemma3.adapter, gemma3.model
    res = capture(gemma3, TEXTS, [5, 17], pooling=parse_pooling("last"), max_batch_tokens=4096)
    assert res.stats["n_batches"] == 1
    for i, text in enumerate(TEXTS):
        ids = gemma3.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        torch.testing.assert_close(res.resid[5][i], out.hidden_states[a.hidden_states_index(5)][0, -1], atol=1e-3,
                                   rtol=1e-4)  # fmt: skip
        with torch.no_grad():
            logits = model.get_output_embeddings()(a.final_norm(model)(res.resid[17][i]))
        torch.testing.assert_close(logits, out.logits[0, -1], atol=2e-3, rtol=1e-4)


def test_greedy_generation_is_sane_and_batching_changes_nothing(gemma3):
    rep = preflight.run(gemma3)
    assert rep.ok, rep.failures
    assert rep.table["attention pattern"].startswith("LLLLLGLLLLLGLLLLLG (L: window 512")
    tok = gemma3.tokenizer
    ids = tok(TEXTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        top = tok.convert_ids_to_tokens(gemma3.model(ids).logits[0, -1].topk(5).indices.tolist())
    assert "▁Paris" in top, top
    # steerkit's left-padded batched generation = one prompt at a time (greedy)
    prompts = [tok(t).input_ids for t in TEXTS[:2]]
    spec = GenSpec(max_new=8, greedy=True)
    batched = generate_chunk(gemma3, "batched", prompts, [0, 1], [0, 0], None, spec)
    alone = generate_chunk(gemma3, "generate", prompts, [0, 1], [0, 0], None, spec)
    assert torch.equal(batched, alone)


def test_block_output_steering(gemma3):
    """Steering on a block's output: zero strength is bit-identical, the edit is exact, and adding the
    unembedding direction of ' Paris' at block 9 makes it the next token after unrelated prompts."""
    a, model, tok = gemma3.adapter, gemma3.model, gemma3.tokenizer
    paris = tok.convert_tokens_to_ids("▁Paris")
    v = torch.nn.functional.normalize(model.get_input_embeddings().weight[paris].detach(), dim=0)
    cv = ConceptVectors(["paris"], [9], {9: v[None]}, {9: torch.ones(1)})
    block = a.blocks(model)[9]
    seen: dict[str, torch.Tensor] = {}

    def keep(key):
        return lambda m, i, o: seen.__setitem__(key, a.get_hidden(o).clone())

    for prompt in ("I went to", "My favourite colour is", "The weather today is"):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            h = block.register_forward_hook(keep("plain"))
            base = model(ids).logits[0, -1]
            h.remove()
            with steer(gemma3, cv, {"paris": 0.0}, layers=9, scale="relative"):
                assert torch.equal(model(ids).logits[0, -1], base)
            with steer(gemma3, cv, {"paris": 1.0}, layers=9, scale="relative"):
                h = block.register_forward_hook(keep("steered"))  # registered after steer's: sees its edit
                steered = model(ids).logits[0, -1]
                h.remove()
        plain = seen["plain"]
        torch.testing.assert_close(seen["steered"], plain + plain.norm(dim=-1, keepdim=True) * v, atol=1e-2,
                                   rtol=1e-5)  # fmt: skip
        assert int((base > base[paris]).sum()) > 2  # ' Paris' was not a likely next token
        assert int(steered.argmax()) == paris
