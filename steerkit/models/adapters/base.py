"""The adapter interface: everything steerkit knows about a model family's internals.

The rest of steerkit never touches `model.model.layers` directly; it asks an adapter for
blocks, block kinds, the mixer out-projection (whose input is the concatenation of per-head
outputs), the MLP down-projection and the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..offload import module_device, tensor_value

BlockKind = Literal["attention", "linear_attention", "ssm", "rwkv"]


@dataclass(frozen=True)
class BlockInfo:
    """What one block contains. Module paths are relative to the block.

    mixer_out: the mixer's output projection; its input is (batch, seq, n_heads * head_dim).
    n_heads / head_dim: None for mixers without heads (Mamba-1, RWKV-4).
    mlp_down: the MLP down-projection (input: (batch, seq, intermediate)), or None.
    mlp_down_transposed: True for GPT-2 style Conv1D whose weight is (intermediate, hidden).
    attention_window: the sliding-window size of a local attention block (Gemma 2/3), None for
        global attention and for mixers that are not attention.
    mixer_post_norm / mlp_post_norm: a norm the block applies to the mixer's / MLP's output before
        adding it to the residual stream (Gemma 2/3: `post_attention_layernorm`,
        `post_feedforward_layernorm`), None where the projection's output is added as it is. Such a
        norm divides away any scaling of the projection's output and reweights its channels.
    """

    index: int
    kind: BlockKind
    mixer: str
    mixer_out: str
    n_heads: int | None
    head_dim: int | None
    mlp_down: str | None
    mlp_down_transposed: bool = False
    no_mlp_reason: str | None = None
    attention_window: int | None = None
    mixer_post_norm: str | None = None
    mlp_post_norm: str | None = None


def transformers_at_least(version: str) -> bool:
    """True when the installed transformers is `version` or newer (e.g. "5.25"); facts about
    `output_hidden_states` indexing that changed between releases key on this."""
    from importlib.metadata import version as installed

    from packaging.version import Version

    return Version(installed("transformers")) >= Version(version)


def get_module(root: nn.Module, path: str) -> nn.Module:
    """root.get_submodule(path), with '' meaning root."""
    return root if not path else root.get_submodule(path)


class Adapter:
    """Architecture knowledge for one family. Subclasses set the class attributes and
    implement `block_info`.

    base_path: the base model without LM head (e.g. 'model').
    blocks_path: the block ModuleList, relative to the full causal-LM model.
    final_norm_path: the final norm, relative to the full model.
    hidden_state_offset: output_hidden_states[i + offset] is block i's output for all but the
        last block (whose entry has the final norm applied in every family we support).
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    base_path: str = ""
    blocks_path: str = ""
    final_norm_path: str = ""
    hidden_state_offset: int = 1
    recurrent: bool = False  # True when padding must be on the right (state carries pads)

    # ---- blocks -------------------------------------------------------------------
    def base_model(self, model: Any) -> nn.Module:
        return get_module(model, self.base_path)

    def blocks(self, model: Any) -> nn.ModuleList:
        mods = get_module(model, self.blocks_path)
        assert isinstance(mods, nn.ModuleList)
        return mods

    def n_blocks(self, model: Any) -> int:
        return len(self.blocks(model))

    def final_norm(self, model: Any) -> nn.Module:
        return get_module(model, self.final_norm_path)

    def hidden_size(self, model: Any) -> int:
        """Width of the residual stream (the embedding matrix's second dimension)."""
        return int(model.get_input_embeddings().weight.shape[1])

    def input_device(self, model: Any) -> torch.device:
        """Where token ids must go: the device the embedding runs on (the first shard of a sharded
        model; with CPU / disk offload its weights sit on `meta` and a hook brings them there)."""
        emb: Any = model.get_input_embeddings()
        return module_device(emb) if emb is not None else module_device(model)

    def block_device(self, model: Any, index: int) -> torch.device:
        """The device block `index` runs on (where its hooks see hidden states)."""
        return module_device(self.blocks(model)[index])

    def block_info(self, model: Any, index: int) -> BlockInfo:
        raise NotImplementedError

    def block_infos(self, model: Any) -> list[BlockInfo]:
        return [self.block_info(model, i) for i in range(self.n_blocks(model))]

    # ---- block outputs ------------------------------------------------------------
    @staticmethod
    def get_hidden(output: object) -> torch.Tensor:
        """The hidden state (batch, seq, hidden) inside a block's output (Tensor or tuple)."""
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        raise TypeError(f"unexpected block output type {type(output).__name__}")

    @staticmethod
    def replace_hidden(output: object, hidden: torch.Tensor) -> object:
        """The block output with its hidden state replaced (same container type)."""
        if isinstance(output, torch.Tensor):
            return hidden
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        raise TypeError(f"unexpected block output type {type(output).__name__}")

    def output_scale(self, model: Any, index: int) -> float:
        """Factor the model applies to block `index`'s output before the next block reads it
        (1.0 except RWKV's eval-mode rescaling). Must be called during the forward pass."""
        return 1.0

    def read_hidden(self, model: Any, index: int, output: object) -> torch.Tensor:
        """The residual stream after block `index` as the next block sees it (batch, seq, hidden)."""
        h = self.get_hidden(output)
        scale = self.output_scale(model, index)
        return h if scale == 1.0 else h * scale

    # ---- modules ------------------------------------------------------------------
    def mixer_out_module(self, model: Any, index: int) -> nn.Module:
        return get_module(self.blocks(model)[index], self.block_info(model, index).mixer_out)

    def mlp_down_module(self, model: Any, index: int) -> nn.Module | None:
        info = self.block_info(model, index)
        return None if info.mlp_down is None else get_module(self.blocks(model)[index], info.mlp_down)

    def mixer_write_module(self, model: Any, index: int) -> nn.Module:
        """The module whose output the block adds to the residual stream for its mixer: the mixer's
        post-norm where there is one (Gemma 2/3), else the out-projection. Scale the mixer's
        contribution here: a factor applied before a post-norm is normalised away."""
        info = self.block_info(model, index)
        return get_module(self.blocks(model)[index], info.mixer_post_norm or info.mixer_out)

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel gain (hidden,) of a norm module (its weight; Gemma: 1 + weight)."""
        return tensor_value(norm, "weight").detach()

    def mlp_down_weight(self, model: Any, index: int) -> torch.Tensor | None:
        """The down-projection weight as (hidden, intermediate), whatever the module type: the
        down-projection's output is `x @ W.T` (+ bias). Where the MLP output reaches the residual
        stream through a post-norm, use `mlp_write_directions` for the directions neurons write."""
        info = self.block_info(model, index)
        mod = self.mlp_down_module(model, index)
        if mod is None:
            return None
        w = tensor_value(mod, "weight")  # an offloaded weight is read from its hook
        return w.detach().t() if info.mlp_down_transposed else w.detach()

    def mlp_write_directions(self, model: Any, index: int) -> torch.Tensor | None:
        """(hidden, intermediate): column j is the residual-stream direction MLP neuron j writes.
        The down-projection weight, its rows scaled by the MLP post-norm's gain where the block has
        one (Gemma 2/3: the norm's 1/rms is one positive factor per token, shared by all neurons)."""
        w = self.mlp_down_weight(model, index)
        info = self.block_info(model, index)
        if w is None or info.mlp_post_norm is None:
            return w
        gain = self.norm_gain(get_module(self.blocks(model)[index], info.mlp_post_norm))
        return gain.to(w)[:, None] * w

    def hidden_states_index(self, index: int) -> int:
        """Index into `output_hidden_states` holding block `index`'s output (not the last block)."""
        return index + self.hidden_state_offset

    def describe(self, model: Any) -> dict[str, Any]:
        infos = self.block_infos(model)
        kinds = sorted({i.kind for i in infos})
        heads = sorted({(i.kind, i.n_heads, i.head_dim) for i in infos}, key=str)
        down = self.mlp_down_weight(model, 0) if infos else None
        return {
            "family": self.family,
            "n_blocks": len(infos),
            "block_kinds": kinds if len(kinds) > 1 else kinds[0] if kinds else None,
            "block_kind_pattern": [i.kind for i in infos] if len(kinds) > 1 else None,
            "heads": [
                {"kind": k, "n_heads": n, "head_dim": d} if n else {"kind": k, "n_heads": None} for k, n, d in heads
            ],
            "mlp_down_shape": list(down.shape) if down is not None else None,
            "attention_windows": [i.attention_window for i in infos]
            if any(i.attention_window for i in infos)
            else None,
        }
