"""RWKV-4: `rwkv.blocks[i]` returns a tuple (hidden, state); time-mix output is
`attention.output` (no heads in RWKV-4); channel-mix down-projection is `feed_forward.value`.

In eval mode with `rescale_every > 0`, transformers divides the hidden state by 2 after every
`rescale_every` blocks; block hooks see the value *before* that division, so `output_scale`
reports the factor and `read_hidden` applies it. `output_hidden_states[i]` is block i's output
(measured on transformers 5.23), the last entry being ln_out of the last block.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, BlockInfo


class RwkvAdapter(Adapter):
    family = "rwkv"
    model_types = ("rwkv",)
    base_path = "rwkv"
    blocks_path = "rwkv.blocks"
    final_norm_path = "rwkv.ln_out"
    recurrent = True
    hidden_state_offset = 0

    def output_scale(self, model: Any, index: int) -> float:
        base = self.base_model(model)
        every = int(getattr(model.config, "rescale_every", 0) or 0)
        if getattr(base, "layers_are_rescaled", False) and every > 0 and (index + 1) % every == 0:
            return 0.5
        return 1.0

    def block_info(self, model: Any, index: int) -> BlockInfo:
        return BlockInfo(index, "rwkv", "attention", "attention.output", None, None, "feed_forward.value")
