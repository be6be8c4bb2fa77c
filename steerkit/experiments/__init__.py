"""The experiments, each a room of its own: `intervene/` (force R, measure what changes, with
calibrated statistics and controls; docs/intervene.md) and `steer_eval/` (does a concept vector make
the text express the concept, at what cost; docs/steer-eval.md). What both use lies on this floor:
prompts.py (prompts, sampling seeds), batch.py (the teacher-forced batch), measures.py; shared
statistics live on the ground floor (`steerkit.stats`).

The intervention experiment's public names stay importable from here.
"""

from .intervene import (
    EXPERIMENTS,
    InterveneConfig,
    Prompt,
    Results,
    Setup,
    intervene,
    load_prompts,
    merge_levels,
    parse_grid,
    run_intervention,
)

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
