"""Architecture adapters: one file per family, one registry here.

`adapter_for(model)` picks the adapter from `model.config.model_type`; an unknown family is a
one-line error. Users add families with `register_adapter(MyAdapter())` (see docs/adapters.md).
"""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedArchitectureError
from .base import Adapter, BlockInfo, get_module
from .gemma import Gemma3ImageTextAdapter, GemmaAdapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .jamba import JambaAdapter
from .llama import LlamaAdapter
from .mamba import Mamba2Adapter, MambaAdapter
from .qwen_hybrid import QwenHybridAdapter
from .rwkv import RwkvAdapter

REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Register `adapter` for each of its `model_types` (later registrations win)."""
    if not adapter.model_types:
        raise ValueError("an adapter must declare at least one model_type")
    for mt in adapter.model_types:
        REGISTRY[mt] = adapter
    return adapter


for _a in (
    LlamaAdapter(),
    GPT2Adapter(),
    GPTNeoXAdapter(),
    MambaAdapter(),
    Mamba2Adapter(),
    RwkvAdapter(),
    QwenHybridAdapter(),
    JambaAdapter(),
    GemmaAdapter(),
    Gemma3ImageTextAdapter(),
):
    register_adapter(_a)


def supported_model_types() -> list[str]:
    return sorted(REGISTRY)


def adapter_for(model: Any) -> Adapter:
    """The adapter for `model` (by config.model_type)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in REGISTRY:
        raise UnsupportedArchitectureError(
            f"no adapter for model type {mt!r}; supported: {', '.join(supported_model_types())}. "
            "Add one with steerkit.models.adapters.register_adapter() (see docs/adapters.md)"
        )
    return REGISTRY[mt]


__all__ = ["Adapter", "BlockInfo", "REGISTRY", "adapter_for", "get_module", "register_adapter", "supported_model_types"]
