"""Tiny random models of every supported family, built from configs (milliseconds on CPU).

Used by the fixtures in conftest.py. Each builder returns a fresh, seeded, eval-mode model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as T

VOCAB = 320  # >= 256 bytes + a few specials of the test tokenizer


def _llama() -> T.PretrainedConfig:
    return T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def _qwen2() -> T.PretrainedConfig:
    return T.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def _qwen3() -> T.PretrainedConfig:
    return T.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )


def _gpt2() -> T.PretrainedConfig:
    return T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=256)


def _neox() -> T.PretrainedConfig:
    return T.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
    )


def _mamba() -> T.PretrainedConfig:
    return T.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=4, expand=2)


def _mamba2() -> T.PretrainedConfig:
    return T.Mamba2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=4,
        expand=2,
        num_heads=8,
        head_dim=8,
        n_groups=1,
        chunk_size=16,
    )


def _rwkv() -> T.PretrainedConfig:
    return T.RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        attention_hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        context_length=256,
        rescale_every=2,
    )


def _qwen3_next() -> T.PretrainedConfig:
    return T.Qwen3NextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        max_position_embeddings=256,
    )


def _qwen3_5() -> T.PretrainedConfig:
    return T.Qwen3_5TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        max_position_embeddings=256,
    )


def _jamba() -> T.PretrainedConfig:
    return T.JambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=1,
        num_experts_per_tok=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    )


def _gemma3() -> T.PretrainedConfig:
    # sliding-window (local) and global attention alternate; a window of 4 tokens is shorter than the
    # test texts, so the local blocks really drop context
    return T.Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=256,
    )


CONFIGS: dict[str, Callable[[], T.PretrainedConfig]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gpt2": _gpt2,
    "gpt_neox": _neox,
    "mamba": _mamba,
    "mamba2": _mamba2,
    "rwkv": _rwkv,
    "qwen3_next": _qwen3_next,
    "qwen3_5": _qwen3_5,
    "jamba": _jamba,
    "gemma3": _gemma3,
}


# Families whose norms start as the identity (Gemma's zero-initialised (1 + weight)): random norm
# weights make the oracles see a wrong norm convention or a skipped norm.
RANDOM_NORMS = {"gemma3"}


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """A fresh tiny random causal LM of `family` (eval mode, fp32)."""
    torch.manual_seed(seed)
    cfg = CONFIGS[family]()
    model = T.AutoModelForCausalLM.from_config(cfg)
    if family in RANDOM_NORMS:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.2)
    return model.eval()
