"""Qwen3-Next and Qwen3.5: Gated DeltaNet (`linear_attn`) blocks with a full-attention block
every few layers (`config.layer_types`). The full-attention `q_proj` is twice as wide (it carries
an output gate), but `o_proj` still reads n_heads * head_dim. Qwen3-Next MLPs are MoE: the
routed experts are fused 3-D parameters, so the MLP down-projection we expose is the shared
expert's."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo
from .llama import attention_heads


class QwenHybridAdapter(Adapter):
    family = "qwen3_next"
    model_types = ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")
    base_path = "model"
    blocks_path = "model.layers"
    final_norm_path = "model.norm"
    recurrent = True

    def block_info(self, model: Any, index: int) -> BlockInfo:
        cfg = getattr(model.config, "text_config", None) or model.config
        block = self.blocks(model)[index]
        if hasattr(block, "linear_attn"):
            kind, mixer, out = "linear_attention", "linear_attn", "linear_attn.out_proj"
            n, d = int(cfg.linear_num_value_heads), int(cfg.linear_value_head_dim)
        else:
            kind, mixer, out = "attention", "self_attn", "self_attn.o_proj"
            n, d = attention_heads(cfg)
        if hasattr(block.mlp, "shared_expert"):
            down: str | None = "mlp.shared_expert.down_proj"
        elif hasattr(block.mlp, "down_proj"):
            down = "mlp.down_proj"
        else:
            down = None
        reason = None if down else "MoE block without a shared expert"
        return BlockInfo(index, kind, mixer, out, n, d, down, no_mlp_reason=reason)  # type: ignore[arg-type]
