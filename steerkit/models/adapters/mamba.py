"""Mamba (no heads, no MLP) and Mamba2 (heads = SSM heads feeding `mixer.out_proj`)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo, transformers_at_least

NO_MLP = "Mamba blocks have no MLP"


class MambaAdapter(Adapter):
    family = "mamba"
    model_types: tuple[str, ...] = ("mamba", "falcon_mamba")
    base_path = "backbone"
    blocks_path = "backbone.layers"
    final_norm_path = "backbone.norm_f"
    recurrent = True
    hidden_state_offset = 0  # output_hidden_states[i] is block i's output (transformers 5.23)

    def block_info(self, model: Any, index: int) -> BlockInfo:
        return BlockInfo(index, "ssm", "mixer", "mixer.out_proj", None, None, None, no_mlp_reason=NO_MLP)


class Mamba2Adapter(MambaAdapter):
    family = "mamba2"
    model_types = ("mamba2",)
    # transformers 5.25 moved Mamba2's output_hidden_states to the Llama rule (hs[0] the embeddings,
    # hs[i + 1] block i's output); up to 5.24 hs[i] was block i's output. Block hooks never changed.
    hidden_state_offset = 1 if transformers_at_least("5.25") else 0

    def block_info(self, model: Any, index: int) -> BlockInfo:
        cfg = model.config
        return BlockInfo(
            index,
            "ssm",
            "mixer",
            "mixer.out_proj",
            int(cfg.num_heads),
            int(cfg.head_dim),
            None,
            no_mlp_reason=NO_MLP,
        )
