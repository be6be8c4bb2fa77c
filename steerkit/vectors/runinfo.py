"""What a vectors run folder says beyond its vectors: the model it was made with, the default block
(the quality report's best layer, else the middle one), and whether a loaded model fits the vectors.
Used by `steer`, `read` and `serve` alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ReadoutError
from .readout import ConceptVectors

MAX_ALPHA = 1e4  # a steering strength beyond this only overflows the hidden state (docs/formats.md)


def default_layer(vectors_dir: Path, layers: list[int]) -> int:
    """The run's quality-report best_layer when it is one of `layers`, else the middle one."""
    from ..validate import QUALITY_BEST_LAYER_SCHEMA, read_json

    q = vectors_dir / "quality.json"
    if q.is_file():
        best = read_json(q, "quality report", ReadoutError, QUALITY_BEST_LAYER_SCHEMA).get("best_layer")
        if best in layers:
            return int(best)
    return layers[len(layers) // 2]


def run_model(cv: ConceptVectors, vectors_dir: str | Path) -> str:
    """The model spec the vectors were made with (readout.json `model.spec`)."""
    spec = cv.meta.get("model", {}).get("spec")
    if not spec:
        raise ReadoutError(f"{vectors_dir}/readout.json names no model (model.spec); pass the model with -m")
    return str(spec)


def check_model(cv: ConceptVectors, lm: Any, layers: int | list[int]) -> None:
    """The vectors must fit the model: same hidden size, and the blocks must exist."""
    spec, run_spec = lm.info["spec"], cv.meta.get("model", {}).get("spec", "?")
    hidden, n_blocks = lm.adapter.hidden_size(lm.model), lm.adapter.n_blocks(lm.model)
    if cv.hidden_size != hidden:
        raise ReadoutError(
            f"the vectors have hidden size {cv.hidden_size} but model {spec} has {hidden}; "
            f"pass the run's model (-m {run_spec}) or leave -m out"
        )
    for layer in [layers] if isinstance(layers, int) else layers:
        if not 0 <= layer < n_blocks:
            raise ReadoutError(
                f"layer {layer} is not in model {spec}, which has {n_blocks} blocks (0..{n_blocks - 1}); "
                f"pass the run's model (-m {run_spec}) or leave -m out"
            )
