"""Mamba (no heads, no MLP) and Mamba2 (heads = SSM heads feeding `mixer.out_proj`)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo

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
