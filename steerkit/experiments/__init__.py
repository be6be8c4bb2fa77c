"""Intervention experiments: force R, measure what changes, with calibrated statistics, a negative
and a positive control, and a norm-washout diagnostic. See docs/intervene.md."""

from .design import EXPERIMENTS, InterveneConfig, Prompt, load_prompts, merge_levels, parse_grid
from .experiment import Results, run_intervention
from .run import intervene
from .runner import Setup

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
