"""Intervention experiments: force R, measure what changes, with calibrated statistics, a negative
and a positive control, and a norm-washout diagnostic. See docs/intervene.md.

This room: config.py (settings, R levels), apparatus.py (setup, arms, teacher-forced capture),
sampling.py (sampled generations), washout.py (norm-washout profiles), experiment.py (the three
experiments), analysis.py (tests and verdicts), report.py (the files), run.py (the command).
"""

from ..prompts import Prompt, load_prompts
from .apparatus import Setup
from .config import EXPERIMENTS, InterveneConfig, merge_levels, parse_grid
from .experiment import Results, run_intervention
from .run import intervene

__all__ = [
    "EXPERIMENTS",
    "InterveneConfig",
    "Prompt",
    "Results",
    "Setup",
    "intervene",
    "load_prompts",
    "merge_levels",
    "parse_grid",
    "run_intervention",
]
