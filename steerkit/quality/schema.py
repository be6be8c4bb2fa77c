"""JSON Schema of quality.json (format_version 1); documented in docs/formats.md."""

from __future__ import annotations

from typing import Any

_NUM = {"type": ["number", "null"]}
_CONCEPT = {
    "type": "object",
    "required": [
        "n_positives",
        "norm",
        "first_pc_variance_ratio",
        "effective_rank",
        "agreement",
        "nearest",
        "redundancy",
        "heldout",
        "single_neuron",
    ],
    "properties": {
        "n_positives": {"type": "integer"},
        "norm": _NUM,
        "first_pc_variance_ratio": _NUM,
        "first_pc_null": {
            "type": ["object", "null"],
            "required": ["median", "p95", "percentile"],
            "properties": {"median": _NUM, "p95": _NUM, "percentile": _NUM},
        },
        "effective_rank": _NUM,
        "agreement": {
            "type": "object",
            "required": ["mean", "min", "lowest", "n_below_0_1"],
            "properties": {
                "mean": _NUM,
                "min": _NUM,
                "n_below_0_1": {"type": "integer"},
                "lowest": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["where", "cos"],
                        "properties": {"where": {"type": "string"}, "cos": _NUM},
                    },
                },
            },
        },
        "nearest": {"type": "array", "items": {"type": "object", "required": ["concept", "cos"]}},
        "redundancy": {
            "type": "object",
            "required": ["r2", "top"],
            "properties": {
                "r2": _NUM,
                "top": {"type": "array", "items": {"type": "object", "required": ["concept", "coef"]}},
            },
        },
        "heldout": {"type": "object", "required": ["top1", "top3", "n"]},
        "single_neuron": {
            "type": "object",
            "oneOf": [{"required": ["abs_cos", "neuron", "cos"]}, {"required": ["skipped"]}],
        },
        "heads": {
            "type": "object",
            "required": ["concentration", "top"],
            "properties": {
                "concentration": _NUM,
                "top": {"type": "array", "items": {"type": "object", "required": ["head", "norm", "selectivity"]}},
            },
        },
    },
}
_TRIAGE_ITEM = {"type": "object", "required": ["concept", "why", "suggestion"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "steerkit quality report",
    "type": "object",
    "required": [
        "format_version",
        "run",
        "created_by",
        "model",
        "method",
        "pooling",
        "n_concepts",
        "n_texts",
        "concepts",
        "settings",
        "best_layer",
        "layers",
        "geometry",
        "triage",
    ],
    "properties": {
        "format_version": {"const": 1},
        "concepts": {"type": "array", "items": {"type": "string"}},
        "best_layer": {"type": "integer"},
        "settings": {"type": "object", "required": ["ridge_lambda", "ridge_fit_intercept", "k_folds", "seed"]},
        "layers": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["heldout", "concepts"],
                "properties": {
                    "heldout": {"type": "object", "required": ["top1", "top3", "chance_top1", "chance_top3"]},
                    "concepts": {"type": "object", "additionalProperties": _CONCEPT},
                },
            },
        },
        "geometry": {"type": "object", "required": ["layer"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "triage": {
            "type": "object",
            "required": ["clean", "fragmented", "redundant", "outlier_heavy", "poorly_read"],
            "additionalProperties": {"type": "array", "items": _TRIAGE_ITEM},
        },
    },
}
