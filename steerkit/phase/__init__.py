"""The Kuramoto phase core: pure math (kuramoto), the PhaseCore module, couplings into a model
through hooks, and per-token metrics (U, R*U, tone, drift action). See docs/phase.md."""

from .core import ForceMethod, PhaseConfig, PhaseCore, PhaseOutput
from .couplings import COUPLINGS, Coupling, CouplingConfig, CouplingName, PhaseHook, make_coupling
from .metrics import ACTIONS, TONES, drift_action, normalized_entropy, summarize, tone_index

__all__ = [
    "ACTIONS",
    "COUPLINGS",
    "TONES",
    "Coupling",
    "CouplingConfig",
    "CouplingName",
    "ForceMethod",
    "PhaseConfig",
    "PhaseCore",
    "PhaseHook",
    "PhaseOutput",
    "drift_action",
    "make_coupling",
    "normalized_entropy",
    "summarize",
    "tone_index",
]
