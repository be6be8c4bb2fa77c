"""Training the phase core: the shared loop and its parts (setup: freezing / LoRA / --from; optim;
checkpoints; signals; diagnostics), the objectives (CE + uncertainty regulation, DPO, ORPO: pure
losses in objectives.py), preference pairs, run directories. See docs/phase.md, docs/preference.md."""

from .config import TrainConfig
from .loop import TrainResult, resume, train
from .runs import find_latest_run, load_phase_run

__all__ = ["TrainConfig", "TrainResult", "find_latest_run", "load_phase_run", "resume", "train"]
