"""The apparatus check: batched generation must equal full recomputation before it is trusted.

Samplers, in order of speed:
- batched:   all rows in one left-padded generate() call (KV cache);
- generate:  one generate() call per prompt (no padding): for recurrent families and models whose
             positions shift under left padding;
- recompute: a full forward per token, no cache: always right, slowest (e.g. RWKV's cached generation
             in transformers 5 disagrees with its full forward).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
SAMPLERS = ("batched", "generate", "recompute")


def pick_sampler(run: Callable[[str], Any], same: Callable[[Any, Any], bool], recurrent: bool, spec: str) -> str:
    """The first sampler in SAMPLERS whose output run(name) equals run("recompute") by `same`
    ("batched" is skipped for recurrent families); "recompute" when none does."""
    ref = run("recompute")
    for name in ("batched", "generate"):
        if name == "batched" and recurrent:
            continue
        if same(run(name), ref):
            return name
    log.warning("%s: cached generate() disagrees with full recomputation; sampling by recomputation (slower)", spec)
    return "recompute"
