"""steerkit: interpretability and steering vectors for recurrent, hybrid and transformer LMs.

The notebook API (docs/api.md): `load`, `extract_vectors`, `quality_report`, `steer`, `read`, and
the `ConceptVectors` and `QualityReport` objects they exchange (`steerkit.capture.capture` for raw
activations: `steerkit.capture` is the subpackage). Imports are lazy, so
`import steerkit` (and `steerkit --help`) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__ as __version__

_EXPORTS = {
    "load": "steerkit.models",
    "extract_vectors": "steerkit.vectors.extract",
    "quality_report": "steerkit.api",
    "read": "steerkit.api",
    "steer": "steerkit.steering",
    "ConceptVectors": "steerkit.vectors.readout",
    "QualityReport": "steerkit.quality.model",
    "LoadedModel": "steerkit.models.loading",
    "METHODS": "steerkit.vectors.methods",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'steerkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
