"""Training the phase core: the loop (CE + uncertainty regulation), diagnostics, checkpoints,
run directories. See docs/phase.md."""

from .config import TrainConfig
from .loop import TrainResult, resume, train
from .runs import find_latest_run, load_phase_run

__all__ = ["TrainConfig", "TrainResult", "find_latest_run", "load_phase_run", "resume", "train"]
