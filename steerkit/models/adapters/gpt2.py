"""GPT-2: `transformer.h[i]`, Conv1D projections whose weight is stored (in, out)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    base_path = "transformer"
    blocks_path = "transformer.h"
    final_norm_path = "transformer.ln_f"

    def block_info(self, model: Any, index: int) -> BlockInfo:
        cfg = model.config
        n = int(cfg.n_head)
        return BlockInfo(
            index,
            "attention",
            "attn",
            "attn.c_proj",
            n,
            int(cfg.n_embd) // n,
            "mlp.c_proj",
            mlp_down_transposed=True,
        )
