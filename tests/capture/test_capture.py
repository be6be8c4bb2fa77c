"""Capture oracles: output_hidden_states rule, per-head reconstruction, padding and batching
invariance, early stop, the cache and its corruption handling."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from steerkit.capture import capture, make_batches, parse_layers, parse_pooling, pool
from steerkit.capture.cache import ActivationCache
from steerkit.errors import LayerSpecError
from steerkit.models.adapters import get_module

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She walked home in the rain.",
    "Once upon a time, in a small village, there lived an old baker who rose before dawn.",
    "Paris.",
    "The quick brown fox jumps over the lazy dog.",  # duplicate
    "He opened the letter at the kitchen table; the grade was good, and he smiled.",
]


def _reference(lm, text, layer):
    """Block `layer`'s output for one text through the family's output_hidden_states rule."""
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    n = lm.adapter.n_blocks(lm.model)
    if layer == n - 1:  # the last entry carries the final norm: invert through a hook instead
        return None, ids
    return hs[lm.adapter.hidden_states_index(layer)][0], ids


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean", "mean_after:2"])
def test_resid_matches_hidden_states_rule(family, pooling, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    res = capture(lm, TEXTS, [0, 2], pooling=parse_pooling(pooling), max_batch_tokens=64)
    p = parse_pooling(pooling)
    for layer in (0, 2):
        for i, text in enumerate(TEXTS):
            ref, _ = _reference(lm, text, layer)
            want = pool(ref[None], torch.ones(1, ref.shape[0]), p)[0]
            torch.testing.assert_close(res.resid[layer][i], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_through_out_projection_equal_mixer_output(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    a, model = lm.adapter, lm.model
    layers = list(range(a.n_blocks(model)))
    res = capture(
        lm, TEXTS[:3], list(range(lm.adapter.n_blocks(lm.model))), sites=("heads",), pooling=parse_pooling("mean")
    )
    for layer in layers:
        info = a.block_info(model, layer)
        if not info.n_heads:
            assert ("heads", layer) in res.skipped and layer not in res.heads
            continue
        proj = a.mixer_out_module(model, layer)
        w = proj.weight.t() if type(proj).__name__ == "Conv1D" else proj.weight
        for i, text in enumerate(TEXTS[:3]):
            got = {}
            h = get_module(a.blocks(model)[layer], info.mixer).register_forward_hook(
                lambda m, inp, out, got=got: got.__setitem__("o", a.get_hidden(out).mean(1)[0])
            )
            try:
                with torch.no_grad():
                    model(lm.tokenizer(text, return_tensors="pt").input_ids)
            finally:
                h.remove()
            heads = res.heads[layer][i]  # (n_heads, head_dim)
            assert heads.shape == (info.n_heads, info.head_dim)
            recon = torch.einsum("hd,ohd->o", heads, w.view(w.shape[0], info.n_heads, info.head_dim))
            recon = recon + (proj.bias if proj.bias is not None else 0)
            torch.testing.assert_close(recon, got["o"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen3", "gemma3"])
def test_left_padding_equals_right_padding(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    for pooling in ("last", "mean"):
        r = capture(lm, TEXTS, [1, 3], pooling=parse_pooling(pooling), padding_side="right", sites=("resid", "mlp"))
        le = capture(lm, TEXTS, [1, 3], pooling=parse_pooling(pooling), padding_side="left", sites=("resid", "mlp"))
        for layer in (1, 3):
            torch.testing.assert_close(r.resid[layer], le.resid[layer], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(r.mlp[layer], le.mlp[layer], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_size_one_equals_bucketed(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    one = capture(lm, TEXTS, [1, 3], sites=("resid", "heads", "mlp"), pooling=parse_pooling("mean"), max_batch_tokens=1)
    big = capture(
        lm, TEXTS, [1, 3], sites=("resid", "heads", "mlp"), pooling=parse_pooling("mean"), max_batch_tokens=4096
    )
    assert one.stats["n_batches"] == 5 and big.stats["n_batches"] == 1 and big.stats["n_unique"] == 5
    for site in ("resid", "heads", "mlp"):
        for layer, v in one.site(site).items():
            torch.testing.assert_close(v, big.site(site)[layer], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(big.resid[1][0], big.resid[1][4])  # duplicates share values


@pytest.mark.parametrize("family", ["llama", "rwkv", "mamba", "qwen3_5"])
def test_early_stop_runs_no_later_block(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    calls = [0] * lm.adapter.n_blocks(lm.model)
    hs = [
        b.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
        for k, b in enumerate(lm.adapter.blocks(lm.model))
    ]
    head_calls = []
    hh = lm.model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1))
    try:
        capture(lm, TEXTS[:2], [1])
    finally:
        for h in hs:
            h.remove()
        hh.remove()
    assert calls[:2] == [1, 1] and calls[2:] == [0, 0] and not head_calls


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba2", "qwen3_5"])
def test_early_stop_inside_the_last_block(family, tiny_lm_factory):
    """Only heads wanted at the last block: its MLP and the block's output never run; the heads
    equal those of a capture that runs the block to the end."""
    lm = tiny_lm_factory(family)
    layer = next(i for i in range(4) if lm.adapter.block_info(lm.model, i).n_heads)
    block = lm.adapter.blocks(lm.model)[layer]
    down = lm.adapter.mlp_down_module(lm.model, layer)
    calls = {"block": 0, "down": 0}
    hs = [block.register_forward_hook(lambda *a: calls.__setitem__("block", calls["block"] + 1))]
    if down is not None:
        hs.append(down.register_forward_hook(lambda *a: calls.__setitem__("down", calls["down"] + 1)))
    try:
        early = capture(lm, TEXTS[:3], [layer], sites=("heads",), pooling=parse_pooling("mean"))
    finally:
        for h in hs:
            h.remove()
    assert calls == {"block": 0, "down": 0}
    full = capture(lm, TEXTS[:3], [layer], sites=("heads", "resid"), pooling=parse_pooling("mean"))
    torch.testing.assert_close(early.heads[layer], full.heads[layer], atol=0, rtol=0)


def test_cache_hit_and_corrupt_shard(tmp_path, tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    first = capture(lm, TEXTS, [1, 2], cache_dir=tmp_path, max_batch_tokens=32)
    assert first.stats["n_computed"] == 5
    again = capture(lm, TEXTS, [1, 2], cache_dir=tmp_path)
    assert again.stats["n_computed"] == 0 and again.stats["n_cached"] == 5
    torch.testing.assert_close(first.resid[2], again.resid[2], atol=0, rtol=0)
    cache = ActivationCache(tmp_path, lm.info["fingerprint"])
    victim = sorted(cache.shards)[0]
    n_victim = len(cache.shards[victim]["texts"])
    data = bytearray((cache.dir / victim).read_bytes())
    data[-3] ^= 0xFF
    (cache.dir / victim).write_bytes(bytes(data))
    third = capture(lm, TEXTS, [1, 2], cache_dir=tmp_path)
    assert third.stats["n_computed"] == n_victim
    torch.testing.assert_close(first.resid[2], third.resid[2], atol=1e-6, rtol=0)


def test_layer_specs():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("-1", 30) == [29]
    assert parse_layers("0.5", 31) == [15]
    assert parse_layers("4:10:2,0", 30) == [0, 4, 6, 8]
    assert parse_layers([1, -2], 4) == [1, 2]
    with pytest.raises(LayerSpecError, match=r"layer 40 out of range: the model has 30 blocks \(0..29\)"):
        parse_layers("40", 30)
    for bad in ("x", "1.5", "5:2", ""):
        with pytest.raises(LayerSpecError):
            parse_layers(bad, 30)


def test_make_batches_respects_budget():
    lengths = [5, 50, 7, 3, 48, 9, 100]
    batches = make_batches(lengths, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100


def test_invalid_site_and_pooling(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(ValueError, match="valid: resid, heads, mlp"):
        capture(lm, TEXTS, [1], sites=("attn",))
    with pytest.raises(ValueError, match="valid: last, mean"):
        capture(lm, TEXTS, [1], pooling=parse_pooling("max"))


@pytest.mark.parametrize("family", ["qwen2", "mamba", "rwkv", "qwen3_5"])
def test_nnsight_backend_agrees_with_hooks(family, tiny_lm_factory):
    pytest.importorskip("nnsight")
    lm = tiny_lm_factory(family)
    sites = ("resid", "heads", "mlp")
    a = capture(lm, TEXTS, [0, 2], sites=sites, pooling=parse_pooling("mean"), backend="hooks")
    b = capture(lm, TEXTS, [0, 2], sites=sites, pooling=parse_pooling("mean"), backend="nnsight")
    assert a.skipped == b.skipped
    for site in sites:
        assert a.site(site).keys() == b.site(site).keys()
        for layer, v in a.site(site).items():
            torch.testing.assert_close(v, b.site(site)[layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_backend_agrees_with_hooks(family, tiny_lm_factory, monkeypatch):
    """transformer-lens TransformerBridge reads the same numbers, on a copy: the model is untouched."""
    from transformer_lens.model_bridge import TransformerBridge

    lm = tiny_lm_factory(family)
    calls = []
    real = TransformerBridge.run_with_cache

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("stop_at_layer"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "run_with_cache", spy)
    names = [n for n, _ in lm.model.named_modules()]
    attn = lm.model.config._attn_implementation
    sites = ("resid", "heads", "mlp")
    a = capture(lm, TEXTS, [0, 2], sites=sites, pooling=parse_pooling("mean_after:1"), backend="hooks")
    b = capture(
        lm, TEXTS, [0, 2], sites=sites, pooling=parse_pooling("mean_after:1"), backend="lens", max_batch_tokens=64
    )
    assert calls and set(calls) == {3}, "the bridge must run, stopping after block 2"
    assert [n for n, _ in lm.model.named_modules()] == names and lm.model.config._attn_implementation == attn
    lens_only = {w: why for w, why in b.skipped.items() if w not in a.skipped}
    assert all("transformer-lens has no hook point" in why for why in lens_only.values())
    # transformer-lens re-implements Gated DeltaNet, so its out_proj input has no hook point
    delta = {("heads", i) for i in (0, 2) if lm.adapter.block_info(lm.model, i).kind == "linear_attention"}
    assert set(lens_only) == delta
    for site in sites:
        for layer, v in b.site(site).items():
            torch.testing.assert_close(v, a.site(site)[layer], atol=1e-5, rtol=1e-5)
        assert b.site(site).keys() | {lay for s, lay in lens_only if s == site} == a.site(site).keys()


@pytest.mark.real
def test_lens_backend_agrees_with_hooks_on_smollm(smollm):
    """Real weights: the bridge runs eager attention, the user's model keeps sdpa; fp32 agreement 1e-5."""
    texts = TEXTS[:4]
    kw = dict(layers=[3, 20], sites=("resid", "heads", "mlp"), pooling=parse_pooling("mean_after:1"))
    a = capture(smollm, texts, **kw)
    b = capture(smollm, texts, backend="lens", padding_side="left", **kw)
    assert a.skipped == b.skipped == {}
    for site in kw["sites"]:
        for layer, v in a.site(site).items():
            torch.testing.assert_close(b.site(site)[layer], v, atol=1e-5, rtol=1e-5)


def test_cache_of_an_older_format_is_replaced(tmp_path, tiny_lm_factory):
    """An index of another version is not trusted: its shards are freed and the rows recomputed."""
    import json

    lm = tiny_lm_factory("llama")
    folder = tmp_path / lm.info["fingerprint"]
    folder.mkdir()
    (folder / "shard-0123456789abcdef.safetensors").write_bytes(b"old format")
    (folder / "index.json").write_text(json.dumps({"version": 1, "shards": {"shard-0123456789abcdef.safetensors": {}}}))
    res = capture(lm, TEXTS, [1], cache_dir=tmp_path)
    assert res.stats["n_computed"] == 5
    assert not (folder / "shard-0123456789abcdef.safetensors").exists()
    assert json.loads((folder / "index.json").read_text())["version"] == 2
    assert capture(lm, TEXTS, [1], cache_dir=tmp_path).stats["n_cached"] == 5


def test_two_caches_on_one_folder_keep_each_others_shards(tmp_path):
    """Two captures sharing a cache folder (e.g. two processes): neither index write loses the
    other's shards; a shard dropped as corrupt is not adopted back."""
    a, b = ActivationCache(tmp_path, "fp", flush_seconds=0), ActivationCache(tmp_path, "fp", flush_seconds=0)
    a.put_rows(["t1", "t2"], {"resid|mean|1": torch.ones(2, 3)})
    b.put_rows(["t3"], {"resid|mean|1": torch.zeros(1, 3)})
    c = ActivationCache(tmp_path, "fp")
    assert c.has("t1|resid|mean|1") and c.has("t3|resid|mean|1")
    torch.testing.assert_close(c.get("t2|resid|mean|1"), torch.ones(3))
    victim = c.where["t3|resid|mean|1"][0]
    (c.dir / victim).write_bytes(b"garbage")
    assert c.get("t3|resid|mean|1") is None  # corrupt: dropped
    b.put_rows(["t4"], {"resid|mean|1": torch.ones(1, 3)})  # b still lists the victim in memory
    d = ActivationCache(tmp_path, "fp")
    assert not d.has("t3|resid|mean|1") and d.has("t4|resid|mean|1") and d.has("t1|resid|mean|1")


def test_cache_keys_truncation_and_cross_check_backends_always_compute(tmp_path, tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    full = capture(lm, TEXTS, [1], cache_dir=tmp_path, pooling=parse_pooling("mean"))
    cut = capture(lm, TEXTS, [1], cache_dir=tmp_path, pooling=parse_pooling("mean"), max_tokens=2)
    assert cut.stats["n_computed"] == 5  # truncated texts are other entries, not cache hits
    ref = capture(lm, TEXTS, [1], pooling=parse_pooling("mean"), max_tokens=2)
    torch.testing.assert_close(cut.resid[1], ref.resid[1], atol=0, rtol=0)
    assert not torch.allclose(cut.resid[1], full.resid[1])
    again = capture(lm, TEXTS, [1], cache_dir=tmp_path, pooling=parse_pooling("mean"), max_tokens=2)
    assert again.stats["n_cached"] == 5
    lens = capture(lm, TEXTS, [1], cache_dir=tmp_path, pooling=parse_pooling("mean"), backend="lens")
    assert lens.stats["n_computed"] == 5 and lens.stats["n_cached"] == 0
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        capture(lm, TEXTS, [1], max_tokens=0)
