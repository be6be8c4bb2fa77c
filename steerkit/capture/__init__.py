"""Capture pooled residual, per-head and MLP activations (see docs/capture.md)."""

from .cache import ActivationCache
from .engine import SITES, CaptureResult, capture, make_batches, text_sha
from .layers import default_spread, depth_label, parse_layers
from .pooling import Pooling, parse_pooling, pool

__all__ = [
    "SITES",
    "ActivationCache",
    "CaptureResult",
    "Pooling",
    "capture",
    "default_spread",
    "depth_label",
    "make_batches",
    "parse_layers",
    "parse_pooling",
    "pool",
    "text_sha",
]
