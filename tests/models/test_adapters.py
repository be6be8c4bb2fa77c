"""Adapter oracles, every family: block hooks vs output_hidden_states, per-head decomposition
through the mixer out-projection, MLP down-projection orientation."""

from __future__ import annotations

import pytest
import tiny_models
import torch
import transformers as T
from conftest import FAMILIES

from steerkit.errors import UnsupportedArchitectureError
from steerkit.models.adapters import adapter_for, get_module


def _run_with_hooks(lm, ids):
    a, model = lm.adapter, lm.model
    blocks, mix_in, mix_out, down_in, down_out = {}, {}, {}, {}, {}
    handles = []
    for i, b in enumerate(a.blocks(model)):
        info = a.block_info(model, i)
        handles.append(
            b.register_forward_hook(
                lambda m, inp, out, i=i: blocks.__setitem__(i, a.read_hidden(model, i, out).clone())
            )
        )
        handles.append(
            a.mixer_out_module(model, i).register_forward_hook(
                lambda m, inp, out, i=i: mix_in.__setitem__(i, inp[0].clone())
            )
        )
        handles.append(
            get_module(b, info.mixer).register_forward_hook(
                lambda m, inp, out, i=i: mix_out.__setitem__(i, a.get_hidden(out).clone())
            )
        )
        down = a.mlp_down_module(model, i)
        if down is not None:

            def keep(m, inp, out, i=i):
                down_in[i], down_out[i] = inp[0].clone(), out.clone()

            handles.append(down.register_forward_hook(keep))
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, blocks, mix_in, mix_out, down_in, down_out


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_oracles(family, tiny_lm_factory):
    _check_oracles(tiny_lm_factory(family))


def _check_oracles(lm):
    a, model = lm.adapter, lm.model
    ids = torch.randint(0, 256, (2, 9))
    out, blocks, mix_in, mix_out, down_in, down_out = _run_with_hooks(lm, ids)
    hs = out.hidden_states
    n = a.n_blocks(model)
    assert len(blocks) == n
    # 1. block outputs follow the family's output_hidden_states rule; the last one is pre-norm
    for i in range(n - 1):
        torch.testing.assert_close(blocks[i], hs[a.hidden_states_index(i)], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.final_norm(model)(blocks[n - 1]), hs[-1], atol=1e-5, rtol=1e-5)
    for i in range(n):
        info = a.block_info(model, i)
        # 2. per-head pieces through the out-projection sum to the mixer output
        x = mix_in[i]
        proj = a.mixer_out_module(model, i)
        w = proj.weight.t() if type(proj).__name__ == "Conv1D" else proj.weight  # (out, in)
        h, d = (info.n_heads, info.head_dim) if info.n_heads else (1, x.shape[-1])
        assert h * d == x.shape[-1], f"block {i}: {h}x{d} != {x.shape[-1]}"
        per_head = torch.einsum("bthd,ohd->btho", x.view(*x.shape[:2], h, d), w.view(w.shape[0], h, d))
        recon = per_head.sum(2) + (proj.bias if proj.bias is not None else 0)
        torch.testing.assert_close(recon, mix_out[i], atol=1e-5, rtol=1e-4)
        # 3. the MLP down weight is (hidden, intermediate) and reproduces the down-projection
        wd = a.mlp_down_weight(model, i)
        if info.mlp_down is None:
            assert wd is None and info.no_mlp_reason
            continue
        hidden = blocks[i].shape[-1]
        assert wd.shape == (hidden, down_in[i].shape[-1])
        bias = get_module(a.blocks(model)[i], info.mlp_down).bias
        torch.testing.assert_close(
            down_in[i] @ wd.t() + (bias if bias is not None else 0), down_out[i], atol=1e-5, rtol=1e-4
        )


def _gemma_variant(kind):
    """Tiny Gemma 1, Gemma 2 and Gemma 3 image-text models (the text Gemma 3 is in FAMILIES)."""
    small = dict(vocab_size=tiny_models.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)  # fmt: skip
    if kind == "gemma":
        cfg = T.GemmaConfig(**small)
    elif kind == "gemma2":  # alternates sliding and global attention; caps its logits
        cfg = T.Gemma2Config(**small, sliding_window=4, query_pre_attn_scalar=8)
    else:
        vision = T.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      image_size=16, patch_size=8)  # fmt: skip
        cfg = T.Gemma3Config(text_config=tiny_models.CONFIGS["gemma3"](), vision_config=vision, mm_tokens_per_image=4)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # (1 + weight) norms start as the identity: make a wrong convention visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3_image_text"])
def test_gemma_variants(kind, tiny_tok):
    from steerkit.models import from_model

    lm = from_model(_gemma_variant(kind), tiny_tok, spec=f"tiny-{kind}")
    assert lm.adapter.family == "gemma"
    _check_oracles(lm)
    windows = [i.attention_window for i in lm.adapter.block_infos(lm.model)]
    assert windows == ([None] * 4 if kind == "gemma" else [4, None, 4, None])
    post = [i.mixer_post_norm for i in lm.adapter.block_infos(lm.model)]
    assert post == [None if kind == "gemma" else "post_attention_layernorm"] * 4
    if kind == "gemma3_image_text":  # the text blocks, not the vision tower's
        assert lm.adapter.blocks(lm.model) is lm.model.model.language_model.layers


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_what_a_block_writes_into_the_residual_stream(family, tiny_lm_factory):
    """block output - block input = the mixer's write (`mixer_write_module`'s output) + the MLP's write;
    and the MLP's write is `mlp_write_directions` @ the neuron activations, divided per token by the
    post-norm's rms (Gemma) or not at all (Llama, where the directions are the down weight itself)."""
    lm = tiny_lm_factory(family)
    a, model = lm.adapter, lm.model
    ids = torch.randint(0, 256, (2, 9))
    for i in range(a.n_blocks(model)):
        info, block = a.block_info(model, i), a.blocks(model)[i]
        seen: dict[str, torch.Tensor] = {}

        def keep(key, seen=seen):
            return lambda m, inp, out: seen.__setitem__(key, a.get_hidden(out))

        def keep_input(m, args, kw, seen=seen):
            seen["in"] = kw.get("hidden_states", args[0] if args else None)

        def keep_down(m, inp, out, seen=seen):
            seen["act"], seen["down"] = inp[0], out

        post = get_module(block, info.mlp_post_norm) if info.mlp_post_norm else a.mlp_down_module(model, i)
        hooks = [
            block.register_forward_pre_hook(keep_input, with_kwargs=True),
            block.register_forward_hook(keep("out")),
            a.mixer_write_module(model, i).register_forward_hook(keep("mix")),
            a.mlp_down_module(model, i).register_forward_hook(keep_down),
            post.register_forward_hook(keep("mlp")),
        ]
        try:
            with torch.no_grad():
                model(ids)
        finally:
            for h in hooks:
                h.remove()
        torch.testing.assert_close(seen["out"] - seen["in"], seen["mix"] + seen["mlp"], atol=1e-4, rtol=1e-4)
        dirs = a.mlp_write_directions(model, i)  # (hidden, intermediate)
        if info.mlp_post_norm:
            eps = get_module(block, info.mlp_post_norm).eps
            rms = (seen["down"].pow(2).mean(-1, keepdim=True) + eps).sqrt()
        else:
            assert torch.equal(dirs, a.mlp_down_weight(model, i))
            rms = 1.0
        torch.testing.assert_close(seen["act"] @ dirs.t() / rms, seen["mlp"], atol=1e-4, rtol=1e-4)


def test_hybrid_block_kinds(tiny_lm_factory):
    lm = tiny_lm_factory("qwen3_5")
    kinds = [i.kind for i in lm.adapter.block_infos(lm.model)]
    assert kinds == ["linear_attention", "linear_attention", "linear_attention", "attention"]
    lm = tiny_lm_factory("jamba")
    assert [i.kind for i in lm.adapter.block_infos(lm.model)] == ["ssm", "attention", "ssm", "attention"]


def test_unsupported_architecture_is_one_line():
    import transformers as T

    model = T.AutoModelForCausalLM.from_config(T.BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedArchitectureError) as e:
        adapter_for(model)
    assert "register_adapter" in str(e.value) and "\n" not in str(e.value)


def _observed_offset(lm, blocks, hs) -> int | None:
    """The offset k for which hs[i + k] equals block i's output for every block but the last, as the
    installed transformers actually behaves (None when no single offset fits)."""
    n = len(blocks)
    for k in (0, 1):
        if all(i + k < len(hs) and torch.allclose(blocks[i], hs[i + k], atol=1e-5, rtol=1e-5) for i in range(n - 1)):
            return k
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_rule_is_the_installed_versions(family, tiny_lm_factory):
    """Catches the next transformers release that moves a family's output_hidden_states rule (5.25 moved
    Mamba2's) with a message that says what moved, instead of an opaque oracle failure."""
    import transformers

    lm = tiny_lm_factory(family)
    ids = torch.randint(0, 256, (1, 7))
    out, blocks, *_ = _run_with_hooks(lm, ids)
    seen = _observed_offset(lm, blocks, out.hidden_states)
    claimed = lm.adapter.hidden_state_offset
    assert seen == claimed, (
        f"{family}: transformers {transformers.__version__} puts block i's output at output_hidden_states"
        f"[i + {seen}], the adapter says [i + {claimed}]: update {type(lm.adapter).__name__}.hidden_state_offset "
        "(keyed on the transformers version, see adapters/mamba.py)"
    )
