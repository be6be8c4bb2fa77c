"""What the server serves: the loaded model, the run's concept vectors (loaded once at start), the
defaults `steer` and `read` use (best layer, operating points) and the limits. Requests can name
concepts only, never a file, a tensor or code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """max_new_tokens: the largest max_tokens a request may ask; max_batch: rows decoded together;
    max_queue: requests waiting before 503; max_body_bytes: request bodies over this get 413."""

    max_new_tokens: int = 1024
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    max_stop: int = 4


@dataclass
class ServeContext:
    lm: Any
    vectors: Any  # ConceptVectors
    run: Path
    model_id: str
    default_layer: int
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None

    @property
    def context_length(self) -> int | None:
        from ..capture.forward import model_context

        return model_context(self.lm.model)

    def readout_kind(self, layer: int) -> str:
        """log_prob where the run has a readout probe at `layer` (read_scores gives log p(concept | h)),
        else projection (centred projections on the unit vectors)."""
        return "log_prob" if layer in getattr(self.vectors, "probes", {}) else "projection"

    def reader(self, layer: int, idx: list[int]) -> Any:
        """(n, hidden) residuals at `layer` -> (n, len(idx)) scores, exactly as `read` computes them."""
        cv = self.vectors
        score = cv.read_scores
        sel = torch.tensor(idx, dtype=torch.long)

        def fn(h: torch.Tensor) -> torch.Tensor:
            return score(h, layer)[..., sel]

        return fn

    def describe_concepts(self) -> dict[str, Any]:
        cv = self.vectors
        return {
            "object": "list",
            "model": self.model_id,
            "concepts": list(cv.concepts),
            "layers": list(cv.layers),
            "readout_layer": self.default_layer,
            "readout_kind": {str(la): self.readout_kind(la) for la in cv.layers},
            "steer_layer": self.default_layer,
            "pooling": cv.meta.get("pooling"),
            "method": cv.meta.get("method"),
            "operating_points": self.operating_points,
            "max_alpha": _max_alpha(),
        }


def _max_alpha() -> float:
    from ..vectors.runinfo import MAX_ALPHA

    return MAX_ALPHA


def operating_points(run: Path, concepts: list[str]) -> dict[str, dict[str, Any]]:
    """{concept: {"alpha", "layer", "scale"}} from the run's steer_eval.json, for the concepts that have
    one; {} when the run has no steer-eval or it was made with other vectors."""
    import json

    from ..errors import SteerkitError
    from ..experiments.steer_eval.report import operating_points_for

    p = run / "steer_eval.json"
    if not p.is_file():
        return {}
    try:
        points = json.loads(p.read_text()).get("operating_points") or {}
        named = [c for c in concepts if points.get(c)]
        out = {}
        for c in named:
            op = operating_points_for(run, [c], True)[c]
            out[c] = {"alpha": float(op["alpha"]), "layer": int(op["layer"]), "scale": str(op["scale"])}
        return out
    except (SteerkitError, ValueError, TypeError, KeyError, OSError) as e:
        log.warning("%s: operating points not used (%s)", p, e)
        return {}


def load_context(
    vectors_dir: str | None, model: str | None, load_kwargs: dict[str, Any], limits: Limits, api_key: str | None
) -> ServeContext:
    """Load the run (default: the latest extract run) and its model (default: the run's)."""
    from ..errors import SteerkitError
    from ..models import load
    from ..runs import latest_run
    from ..vectors import ConceptVectors
    from ..vectors.runinfo import check_model, default_layer, run_model

    if vectors_dir is None:
        found = latest_run("extract")
        if found is None:
            raise SteerkitError("no extract run found under runs/; run `steerkit extract --stories corpora/` first "
                                "or pass --vectors RUN")  # fmt: skip
        run = found
    else:
        run = Path(vectors_dir)
    cv = ConceptVectors.load(run)
    lm = load(model or run_model(cv, run), **load_kwargs)
    check_model(cv, lm, cv.layers)
    layer = default_layer(run, cv.layers)
    return ServeContext(lm=lm, vectors=cv, run=run, model_id=str(lm.info.get("spec", model)), default_layer=layer,
                        operating_points=operating_points(run, list(cv.concepts)), limits=limits, api_key=api_key)  # fmt: skip
