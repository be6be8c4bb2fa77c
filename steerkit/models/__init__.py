"""Model loading, the offline zoo, preflight checks and architecture adapters."""

from .adapters import Adapter, BlockInfo, adapter_for, register_adapter
from .loading import LoadedModel, from_model, load

__all__ = ["Adapter", "BlockInfo", "LoadedModel", "adapter_for", "from_model", "load", "register_adapter"]
