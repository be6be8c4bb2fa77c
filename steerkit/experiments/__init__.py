"""The experiments, each a room of its own: `intervene/` (force R, measure what changes, with
calibrated statistics and controls; docs/intervene.md) and `steer_eval/` (does a concept vector make
the text express the concept, at what cost; docs/steer-eval.md). What both use lies on this floor:
prompts.py (prompts, sampling seeds), batch.py (the teacher-forced batch), measures.py; shared
statistics live on the ground floor (`steerkit.stats`).

The intervention experiment's public names stay importable from here; note that the name
`steerkit.experiments.intervene` is the `intervene` function (as before the rooms existed), while
`import steerkit.experiments.intervene.run` and `from steerkit.experiments.intervene.config import ...`
reach the room's modules.
"""

from .intervene.apparatus import Setup
from .intervene.config import EXPERIMENTS, InterveneConfig, merge_levels, parse_grid
from .intervene.experiment import Results, run_intervention
from .intervene.run import intervene
from .prompts import Prompt, load_prompts

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
