"""Capture pooled residual, per-head and MLP activations (see docs/capture.md)."""

from .cache import ActivationCache
from .engine import SITES, CaptureResult, capture, check_max_tokens, check_sites, make_batches, text_sha
from .forward import Batch, Runner, StopForward, forward_inputs, pad
from .layers import BlockSpec, check_blocks, default_spread, depth_label, parse_layers
from .pooling import LAST, MEAN, Pooling, parse_pooling, pool

__all__ = [
    "LAST",
    "MEAN",
    "SITES",
    "ActivationCache",
    "Batch",
    "BlockSpec",
    "CaptureResult",
    "Pooling",
    "Runner",
    "StopForward",
    "capture",
    "check_blocks",
    "check_max_tokens",
    "check_sites",
    "default_spread",
    "depth_label",
    "forward_inputs",
    "make_batches",
    "pad",
    "parse_layers",
    "parse_pooling",
    "pool",
    "text_sha",
]
