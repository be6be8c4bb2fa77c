"""The quality report as a typed tree (what `steerkit.quality_report` returns).

`QualityReport.from_json(quality_json_dict)` parses the dict that `build_report` assembles and
quality.json stores; `to_json()` gives that dict back unchanged (the schema in schema.py validates
it), so the file format and the object can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConceptQuality:
    """One concept at one layer. Ratios in [0, 1]; None where a metric does not apply."""

    name: str
    n_positives: int
    norm: float | None
    first_pc_variance_ratio: float | None
    effective_rank: float | None
    agreement_mean: float | None
    heldout_top1: float | None
    heldout_top3: float | None
    redundancy_r2: float | None
    nearest: list[tuple[str, float]]
    single_neuron_abs_cos: float | None
    head_concentration: float | None

    @classmethod
    def from_json(cls, name: str, e: dict[str, Any]) -> ConceptQuality:
        return cls(
            name=name,
            n_positives=int(e["n_positives"]),
            norm=e.get("norm"),
            first_pc_variance_ratio=e.get("first_pc_variance_ratio"),
            effective_rank=e.get("effective_rank"),
            agreement_mean=e.get("agreement", {}).get("mean"),
            heldout_top1=e.get("heldout", {}).get("top1"),
            heldout_top3=e.get("heldout", {}).get("top3"),
            redundancy_r2=e.get("redundancy", {}).get("r2"),
            nearest=[(n["concept"], n["cos"]) for n in e.get("nearest", [])],
            single_neuron_abs_cos=e.get("single_neuron", {}).get("abs_cos"),
            head_concentration=(e.get("heads") or {}).get("concentration"),
        )


@dataclass(frozen=True)
class LayerQuality:
    """Held-out readout over all concepts at one block, and each concept's metrics there."""

    layer: int
    heldout_top1: float | None
    heldout_top3: float | None
    chance_top1: float | None
    chance_top3: float | None
    concepts: dict[str, ConceptQuality]

    @classmethod
    def from_json(cls, layer: int, d: dict[str, Any]) -> LayerQuality:
        h = d["heldout"]
        return cls(
            layer=layer,
            heldout_top1=h.get("top1"),
            heldout_top3=h.get("top3"),
            chance_top1=h.get("chance_top1"),
            chance_top3=h.get("chance_top3"),
            concepts={n: ConceptQuality.from_json(n, e) for n, e in d["concepts"].items()},
        )


@dataclass(frozen=True)
class QualityReport:
    """The whole report: per-layer trees, the best layer (highest held-out top-1), the triage
    buckets at that layer, notes, and the quality.json dict it was parsed from (`to_json`)."""

    concepts: list[str]
    method: str | None
    pooling: str | None
    best_layer: int
    layers: dict[int, LayerQuality]
    triage: dict[str, list[dict[str, str]]]
    notes: list[str]
    _json: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityReport:
        return cls(
            concepts=list(d["concepts"]),
            method=d.get("method"),
            pooling=d.get("pooling"),
            best_layer=int(d["best_layer"]),
            layers={int(k): LayerQuality.from_json(int(k), v) for k, v in d["layers"].items()},
            triage=d.get("triage", {}),
            notes=list(d.get("notes", [])),
            _json=d,
        )

    def to_json(self) -> dict[str, Any]:
        """The quality.json dict (validated by `steerkit.quality.schema`)."""
        return self._json

    @property
    def best(self) -> LayerQuality:
        return self.layers[self.best_layer]

    def concept(self, name: str, layer: int | None = None) -> ConceptQuality:
        """A concept's metrics at `layer` (default: the best layer)."""
        return self.layers[self.best_layer if layer is None else layer].concepts[name]

    def markdown(self) -> str:
        from .render import markdown

        return markdown(self._json)
