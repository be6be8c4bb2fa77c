"""Gemma 1/2/3 decoder-only text models (`model.layers[i].self_attn.o_proj`, `mlp.down_proj`, final
norm `model.norm`), and Gemma 3's image-text wrapper, whose language model sits one level down
(`model.language_model.layers`; the vision tower is never touched).

What differs from Llama, and why the Llama rules still hold (checked by tests/models/test_adapters.py
on a tiny Gemma 3 and tests/models/test_gemma3_real.py on gemma3-270m):
- each sublayer is wrapped in two norms (Gemma 2/3: `input_layernorm` -> attention ->
  `post_attention_layernorm`, then `pre_feedforward_layernorm` -> MLP -> `post_feedforward_layernorm`),
  each added to the residual; the block still returns the un-normed residual stream (a Tensor), so
  block-output hooks read and steer the residual exactly as in Llama, and `o_proj` still reads the
  concatenated heads;
- but what o_proj and down_proj write is renormalised before it reaches the residual: a factor on
  o_proj's output is divided away again (the `gate` coupling therefore acts on the post-attention
  norm, `mixer_write_module`), and the post-norm's gain, which spans 0 to ~1600 on gemma3-270m,
  turns MLP neuron j's residual direction into gain * W_down[:, j] (`mlp_write_directions`; median
  cosine to the raw column 0.46 at block 0);
- RMSNorm multiplies by (1 + weight) and the embedding output is scaled by sqrt(hidden_size), so the
  residual stream is far larger than Llama's (token norms from ~26 after the embedding to ~34,000
  after block 17 on gemma3-270m): prefer relative steering strengths;
- Gemma 2/3 mix sliding-window (local) and global attention layers (`config.layer_types`); both
  are `attention` blocks with the same heads, and `attention_window` says which is which;
- `output_hidden_states[i + 1]` is block i's output, the last entry after the final norm (as Llama);
- Gemma 2 caps its logits with tanh (`final_logit_softcapping`) after the LM head; Gemma 3 does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Adapter, BlockInfo
from .llama import attention_heads


def text_config(config: Any) -> Any:
    """The language model's config (`text_config` of an image-text config, else the config)."""
    return getattr(config, "text_config", None) or config


def attention_window(config: Any, index: int) -> int | None:
    """The sliding-window size of block `index`'s attention, or None for global attention."""
    cfg = text_config(config)
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if not types or window is None:
        return None
    return int(window) if types[index] == "sliding_attention" else None


class GemmaAdapter(Adapter):
    family = "gemma"
    model_types: tuple[str, ...] = ("gemma", "gemma2", "gemma3_text")
    base_path = "model"
    blocks_path = "model.layers"
    final_norm_path = "model.norm"

    def block_info(self, model: Any, index: int) -> BlockInfo:
        n, d = attention_heads(text_config(model.config))
        block = self.blocks(model)[index]
        post = hasattr(block, "post_feedforward_layernorm")  # Gemma 2/3 (Gemma 1 has Llama's two norms)
        return BlockInfo(
            index,
            "attention",
            "self_attn",
            "self_attn.o_proj",
            n,
            d,
            "mlp.down_proj",
            attention_window=attention_window(model.config, index),
            mixer_post_norm="post_attention_layernorm" if post else None,
            mlp_post_norm="post_feedforward_layernorm" if post else None,
        )

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        """Gemma's RMSNorm multiplies by (1 + weight)."""
        return 1.0 + super().norm_gain(norm)


class Gemma3ImageTextAdapter(GemmaAdapter):
    """`Gemma3ForConditionalGeneration` (model_type gemma3): the text blocks of its language model.
    The base model (`model`) runs the language model on text-only input."""

    family = "gemma"
    model_types = ("gemma3",)
    base_path = "model"
    blocks_path = "model.language_model.layers"
    final_norm_path = "model.language_model.norm"
