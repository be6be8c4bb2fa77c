"""`steerkit steer-eval`: does adding a concept vector make the text express the concept, at what
cost? See docs/steer-eval.md and run.py for this room's map."""

from .config import SteerEvalConfig
from .run import evaluate

__all__ = ["SteerEvalConfig", "evaluate"]
