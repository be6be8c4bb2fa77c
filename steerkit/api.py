"""The notebook API: the same objects the CLI uses, without files (docs/api.md).

    import steerkit as sk
    lm = sk.load("smollm2-135m")
    vecs = sk.extract_vectors(lm, texts, labels, layers=[10, 15], method="caa")   # in memory
    report = sk.quality_report(lm, vecs, texts, labels)                            # a QualityReport
    with sk.steer(lm, vecs, {"calm": 4.0}, layers=[15]):                           # several layers
        out = lm.generate("The meeting began", max_new_tokens=30)
    sk.read(lm, vecs, "My hands would not stop shaking.")

Every function takes the same `lm` (a `LoadedModel`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models.loading import LoadedModel
from .quality.model import QualityReport
from .vectors.readout import ConceptVectors


def quality_report(
    lm: LoadedModel,
    vectors: ConceptVectors,
    texts: Sequence[str],
    labels: Sequence[str | Iterable[str] | None],
    *,
    k_folds: int = 5,
    ridge_lambda: float = 0.01,
    seed: int = 0,
    manifest: dict[str, dict[str, Any]] | None = None,
) -> QualityReport:
    """The quality report of in-memory vectors on labelled texts (the same metrics as
    `steerkit quality-report`): the texts are captured at the vectors' layers with their pooling.
    labels: one concept name (or a set, or None for a negative-only text) per text; names must be
    the vectors' concepts. manifest: optional {concept: {"valence": v, "arousal": a}} norms."""
    from .capture import capture, parse_pooling
    from .quality.report import QualityConfig, RunData, build_report
    from .vectors.extract import label_membership

    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    names, _ = label_membership(labels)
    unknown = [n for n in names if n not in vectors.concepts]
    if unknown:
        raise ValueError(f"labels {', '.join(unknown[:5])} are not concepts of these vectors")
    res = capture(lm, list(texts), vectors.layers, sites=("resid", "heads"),
                  pooling=parse_pooling(vectors.meta.get("pooling", "mean_after:1")))  # fmt: skip
    sets = [set() if lab is None else {lab} if isinstance(lab, str) else set(lab) for lab in labels]
    meta = [{"sha256": "", "concepts": sorted(s), "sources": [{"kind": "text", "file": "<memory>", "line": i + 1}]}
            for i, s in enumerate(sets)]  # fmt: skip
    w_down = {
        la: w.float().cpu() for la in vectors.layers if (w := lm.adapter.mlp_write_directions(lm.model, la)) is not None
    }
    data = RunData(Path("<memory>"), vectors, res.resid, res.heads, {}, w_down, meta, manifest or {})
    cfg = QualityConfig(ridge_lambda=ridge_lambda, k_folds=k_folds, seed=seed)
    return QualityReport.from_json(build_report(data, cfg))


@dataclass(frozen=True)
class Reading:
    """What `read` found: per-token scores (n_tokens, n_concepts) and the pooled text's scores
    (`ConceptVectors.read_scores`: log-probabilities of the readout probe, or projections without one)."""

    layer: int
    tokens: list[str]
    scores: torch.Tensor
    pooled: dict[str, float]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k concepts with the highest pooled score, best first."""
        return sorted(self.pooled.items(), key=lambda kv: -kv[1])[:k]


def read(lm: LoadedModel, vectors: ConceptVectors, text: str, layer: int | None = None) -> Reading:
    """Read `text`'s hidden states at `layer` (default: the vectors' best layer if known, else the
    middle one) with `vectors.read_scores`: the readout probe's log-probabilities when the vectors
    have one, else projections on every concept's unit vector, centred as the readout was made."""
    from .steering import read_tokens

    if not text.strip():
        raise ValueError("the text is empty")
    if layer is None:
        best = vectors.meta.get("best_layer")
        layer = int(best) if best in vectors.layers else vectors.layers[len(vectors.layers) // 2]
    r = read_tokens(lm, vectors, text, layer)
    pooled = {c: float(v) for c, v in zip(vectors.concepts, r["pooled"].tolist(), strict=True)}
    return Reading(layer, r["tokens"], r["scores"], pooled)
