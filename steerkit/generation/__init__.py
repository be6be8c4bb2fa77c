"""The one place that generates text from a LoadedModel: left-padded batches with a KV cache, per-row
steering and sampling, token replay, per-row stopping, and the apparatus check that batched
generation equals full recomputation. intervene, steer-eval, `steer`, `LoadedModel.generate` and
`steerkit serve` all generate through here.

- batch.py:    padding, the generation config, batched generate() and the no-cache recompute loop
- sampling.py: samplers as pure functions of logits and per-row seeds (Gumbel-max), LogitsProcessors
- steer.py:    per-row steering (a different edit per row, on one or several blocks)
- check.py:    the apparatus check that picks a sampler (batched / per prompt / recompute)
- stream.py:   token-by-token generation of independent requests (per-row steering, sampling, stop
               conditions, readout rows) in whole batches
- continuous.py: the same rows batched continuously (requests join a running KV cache between steps
               and leave when done), the embedded engine of `steerkit serve`
"""

from .batch import (
    gen_config,
    generate_batch,
    generate_chunk,
    generate_one,
    generate_recompute,
    left_pad,
    pad_id,
    rows_by_prompt,
)
from .check import SAMPLERS, pick_sampler
from .sampling import GenSpec, Greedy, Sampler, generated_length, gumbel_noise, sample_rows, trim
from .steer import RowEdit, RowSteer

__all__ = [
    "SAMPLERS",
    "GenSpec",
    "Greedy",
    "RowEdit",
    "RowSteer",
    "Sampler",
    "gen_config",
    "generate_batch",
    "generate_chunk",
    "generate_one",
    "generate_recompute",
    "generated_length",
    "gumbel_noise",
    "left_pad",
    "pad_id",
    "pick_sampler",
    "rows_by_prompt",
    "sample_rows",
    "trim",
]
