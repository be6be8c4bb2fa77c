"""steerkit: interpretability and steering vectors for recurrent, hybrid and transformer LMs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # lazy: `import steerkit` stays cheap
    if name == "load":
        from .models import load

        return load
    if name == "steer":
        from .steering import steer

        return steer
    raise AttributeError(name)
