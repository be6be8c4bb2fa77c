"""GPT-NeoX / Pythia: `gpt_neox.layers[i].attention.dense`, `mlp.dense_4h_to_h`."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    base_path = "gpt_neox"
    blocks_path = "gpt_neox.layers"
    final_norm_path = "gpt_neox.final_layer_norm"

    def block_info(self, model: Any, index: int) -> BlockInfo:
        cfg = model.config
        n = int(cfg.num_attention_heads)
        return BlockInfo(
            index,
            "attention",
            "attention",
            "attention.dense",
            n,
            int(cfg.hidden_size) // n,
            "mlp.dense_4h_to_h",
        )
