"""Decoder-only transformers with `model.layers[i].self_attn.o_proj` and `mlp.down_proj`:
Llama, Qwen2, Qwen3, Mistral, OLMo, Phi-3 (Gemma has its own adapter, adapters/gemma.py)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo


def attention_heads(config: object) -> tuple[int, int]:
    """(n_heads, head_dim) of a standard multi-head attention config."""
    n = int(config.num_attention_heads)  # type: ignore[attr-defined]
    d = getattr(config, "head_dim", None) or int(config.hidden_size) // n  # type: ignore[attr-defined]
    return n, int(d)


class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2", "phi3")
    base_path = "model"
    blocks_path = "model.layers"
    final_norm_path = "model.norm"

    def block_info(self, model: Any, index: int) -> BlockInfo:
        n, d = attention_heads(model.config)
        return BlockInfo(index, "attention", "self_attn", "self_attn.o_proj", n, d, "mlp.down_proj")
