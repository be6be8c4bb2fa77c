"""Jamba: Mamba-1 mixers (`mamba`, no heads) interleaved with attention (`self_attn`);
dense MLPs are `feed_forward.down_proj`, MoE blocks have fused experts and no shared expert."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo, BlockKind
from .llama import attention_heads


class JambaAdapter(Adapter):
    family = "jamba"
    model_types = ("jamba",)
    base_path = "model"
    blocks_path = "model.layers"
    final_norm_path = "model.final_layernorm"
    recurrent = True

    def block_info(self, model: Any, index: int) -> BlockInfo:
        block = self.blocks(model)[index]
        if hasattr(block, "mamba"):
            kind: BlockKind
            kind, mixer, out, n, d = "ssm", "mamba", "mamba.out_proj", None, None
        else:
            kind, mixer, out = "attention", "self_attn", "self_attn.o_proj"
            n, d = attention_heads(model.config)  # type: ignore[assignment]
        dense = hasattr(block.feed_forward, "down_proj")
        return BlockInfo(
            index,
            kind,
            mixer,
            out,
            n,
            d,
            "feed_forward.down_proj" if dense else None,  # type: ignore[arg-type]
            no_mlp_reason=None if dense else "MoE block without a shared expert",
        )
