"""Assemble the quality report of a run folder written by `steerkit extract`.

Reads activations.safetensors (pooled resid + per-head activations of every corpus text),
texts.json (labels), readout.* (the vectors) and mlp_down.safetensors; needs no forward pass.
The math lives in metrics.py / heads.py / heldout.py; this module only arranges it per layer
and concept, triages, and writes quality.json (schema: docs/formats.md) and quality.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirError
from ..vectors.readout import ConceptVectors
from ..version import __version__
from . import metrics as M
from .heads import head_decomposition
from .heldout import held_out_readout
from .triage import CLEAN, NEURON, NULL_PERCENTILE, notes, triage

FORMAT_VERSION = 1


@dataclass(frozen=True)
class QualityConfig:
    ridge_lambda: float = 0.01
    k_folds: int = 5
    seed: int = 0
    top_heads: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ridge_lambda) and self.ridge_lambda > 0):
            raise ValueError(f"ridge_lambda must be a finite number > 0, got {self.ridge_lambda}")
        if self.k_folds < 2:
            raise ValueError(f"k_folds must be >= 2, got {self.k_folds}")


@dataclass
class RunData:
    run: Path
    vectors: ConceptVectors
    resid: dict[int, torch.Tensor]  # layer -> (N, H)
    heads: dict[int, torch.Tensor]  # layer -> (N, nh, hd)
    neutral: dict[int, torch.Tensor]  # layer -> (n_neutral, H); only for the `centered` method
    w_down: dict[int, torch.Tensor]  # layer -> (H, I)
    texts: list[dict[str, Any]]
    manifest: dict[str, dict[str, Any]]  # concept -> manifest entry (valence, arousal, dominance, ...)


def load_run(run: str | Path) -> RunData:
    """Load what the report needs; a one-line RunDirError names what is missing."""
    from safetensors.torch import load_file

    from ..validate import TEXTS_SCHEMA, check_finite, check_schema, expect_dir

    d = expect_dir(run, "run", RunDirError, "pass a run folder written by `steerkit extract`")
    if not (d / "readout.json").is_file():
        raise RunDirError(f"{d} is not a run folder (no readout.json); run `steerkit extract --stories corpora/`")
    cv = ConceptVectors.load(d)
    if not (d / "activations.safetensors").is_file() or not (d / "texts.json").is_file():
        raise RunDirError(
            f"{d} has no activations.safetensors/texts.json; re-run `steerkit extract`, or pass --model to recompute them"
        )
    try:
        acts = load_file(d / "activations.safetensors")
        texts = json.loads((d / "texts.json").read_text())
    except Exception as e:
        raise RunDirError(
            f"{d}: activations or texts.json unreadable ({type(e).__name__}); re-run `steerkit extract`"
        ) from e
    resid = {la: acts[f"resid.layer_{la}"].float() for la in cv.layers if f"resid.layer_{la}" in acts}
    if set(resid) != set(cv.layers):
        raise RunDirError(
            f"{d}: activations lack layers {sorted(set(cv.layers) - set(resid))}; re-run `steerkit extract`"
        )
    check_schema(texts, TEXTS_SCHEMA, str(d / "texts.json"), RunDirError)
    if any(v.shape[0] != len(texts) for v in resid.values()):
        raise RunDirError(f"{d}: activations and texts.json disagree on the number of texts; re-run `steerkit extract`")
    heads = {la: acts[f"heads.layer_{la}"].float() for la in cv.layers if f"heads.layer_{la}" in acts}
    neutral = {la: acts[f"neutral.layer_{la}"].float() for la in cv.layers if f"neutral.layer_{la}" in acts}
    for name, t in acts.items():
        check_finite(t, name, d / "activations.safetensors", RunDirError, "re-run `steerkit extract`")
    w_down: dict[int, torch.Tensor] = {}
    if (d / "mlp_down.safetensors").is_file():
        w = load_file(d / "mlp_down.safetensors")
        for name, t in w.items():
            check_finite(t, name, d / "mlp_down.safetensors", RunDirError, "re-run `steerkit extract`")
        w_down = {la: w[f"layer_{la}"].float() for la in cv.layers if f"layer_{la}" in w}
    manifest: dict[str, dict[str, Any]] = {}
    mpath = Path(cv.meta.get("corpus", {}).get("path", "")) / "manifest.json"
    if mpath.is_file():
        try:
            manifest = {c["name"]: c for c in json.loads(mpath.read_text())["concepts"]}
        except (ValueError, KeyError, TypeError):  # bad JSON or UTF-8: the report goes without norms
            manifest = {}
    return RunData(d, cv, resid, heads, neutral, w_down, texts, manifest)


def _null_summary(draws: torch.Tensor | None, ratio: torch.Tensor) -> dict[str, Any] | None:
    """Median and 95th percentile of the random-set ratios, and the share of them below `ratio`."""
    if draws is None or torch.isnan(ratio):
        return None
    return {
        "median": _f(draws.median()),
        "p95": _f(torch.quantile(draws.double(), 0.95)),
        "percentile": _f((draws < ratio).double().mean()),
    }


def _f(x: Any, nd: int = 4) -> Any:
    """JSON-safe rounded float (NaN/inf -> None)."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, nd)


def _where(text: dict[str, Any]) -> str:
    s = text["sources"][0]
    return f"{s['file']}:{s['line']}"


def build_report(data: RunData, cfg: QualityConfig = QualityConfig()) -> dict[str, Any]:
    """All metrics for all layers and concepts -> the quality.json dict."""
    t0 = time.perf_counter()
    cv = data.vectors
    names = cv.concepts
    n_texts = len(data.texts)
    pos = torch.zeros(len(names), n_texts, dtype=torch.bool)
    for j, t in enumerate(data.texts):
        for c in t["concepts"]:
            if c in names:
                pos[names.index(c), j] = True
    labels = torch.tensor([names.index(t["concepts"][0]) if len(t["concepts"]) == 1 else -1 for t in data.texts])
    n_lab = int((labels >= 0).sum())
    groups = _groups(data)  # a paired scenario's texts share a fold: no situation is read that was trained on
    n_groups = len(set(groups[labels >= 0].tolist()))  # folds deal whole groups
    if cfg.k_folds > n_groups:
        raise RunDirError(
            f"--folds {cfg.k_folds} exceeds the run's {n_groups} groups of single-concept texts ({n_lab} texts; "
            f"a paired scenario's texts are one group); use --folds <= {n_groups}"
        )
    layers: dict[str, Any] = {}
    for layer in cv.layers:
        layers[str(layer)] = _layer_report(data, layer, pos, labels, groups, cfg)
    best = max(cv.layers, key=lambda la: (layers[str(la)]["heldout"]["top1"] or 0.0, -la))
    geometry = _geometry(data, best)
    report = {
        "format_version": FORMAT_VERSION,
        "run": str(data.run),
        "created_by": f"steerkit {__version__}",
        "model": cv.meta.get("model", {}),
        "method": cv.meta.get("method"),
        "pooling": cv.meta.get("pooling"),
        "n_concepts": len(names),
        "n_texts": n_texts,
        "concepts": names,
        "valence": {n: data.manifest.get(n, {}).get("valence") for n in names},
        "arousal": {n: data.manifest.get(n, {}).get("arousal") for n in names},
        "dominance": {n: data.manifest.get(n, {}).get("dominance") for n in names},
        "settings": {
            "ridge_lambda": cfg.ridge_lambda,
            "ridge_fit_intercept": False,
            "k_folds": cfg.k_folds,
            "fold_groups": "paired scenario",  # held-out folds keep a scenario's texts together
            "seed": cfg.seed,
            "top_heads": cfg.top_heads,
            "thresholds": {
                "clean": CLEAN,
                "fragmented_below_null_percentile": NULL_PERCENTILE,
                "poorly_read_binomial_p": NULL_PERCENTILE,
                "redundant_sign_test_p": NULL_PERCENTILE,
                "single_neuron": NEURON,
            },
        },
        "best_layer": best,
        "layers": layers,
        "geometry": geometry,
    }
    report["triage"] = triage(report)
    report["notes"] = notes(report)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def _layer_report(
    data: RunData, layer: int, pos: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, cfg: QualityConfig
) -> dict:
    cv, names = data.vectors, data.vectors.concepts
    acts = data.resid[layer]  # (N, H)
    directions = cv.vectors[layer]  # (C, H) unit rows of the run's method
    padded = M.pad_groups(acts, pos)
    rank = M.rank_stats(padded.x, padded.mask)
    sizes = sorted({int(k) for k in padded.mask.sum(1).tolist() if 2 <= k <= acts.shape[0]})
    null = {k: M.rank_null(acts, k, seed=cfg.seed) for k in sizes}  # size -> (draws,) ratios
    _, neg_mean = M.pos_neg_means(acts, pos, ~pos)
    agree = M.story_agreement(padded.x, padded.mask, directions, neg_mean, n_lowest=2)
    near = M.nearest_concepts(directions, k=min(5, len(names) - 1))
    red = M.redundancy(directions, lam=cfg.ridge_lambda, fit_intercept=False)
    top_idx, top_val = M.top_coefficients(red.coef, k=5)
    neuron = M.neuron_alignment(directions, data.w_down[layer]) if layer in data.w_down else None
    k_heads = None
    heads = None
    if layer in data.heads:
        k_heads = top_k_heads(data.heads[layer].shape[1], cfg.top_heads)
        heads = head_decomposition(data.heads[layer], pos, top_k=k_heads)
    held = held_out_readout(acts, labels, n_concepts=len(names), k_folds=cfg.k_folds, seed=cfg.seed,
                            vector_fn=_method_fn(data, layer, pos), groups=groups)  # fmt: skip
    held_vectors = None
    if layer in cv.probes:  # what `read` uses: the probe, refitted inside each fold on its training texts
        held_vectors = held
        held = held_out_readout(acts, labels, n_concepts=len(names), k_folds=cfg.k_folds, seed=cfg.seed,
                                scorer_fn=_probe_fn(data, layer, pos, groups), groups=groups)  # fmt: skip
    concepts: dict[str, Any] = {}
    for c, name in enumerate(names):
        lowest = []
        for slot, cos in zip(agree.lowest[c].tolist(), agree.lowest_cos[c].tolist(), strict=True):
            if slot >= 0:
                lowest.append({"where": _where(data.texts[int(padded.index[c, slot])]), "cos": _f(cos)})
        entry: dict[str, Any] = {
            "n_positives": int(padded.mask[c].sum()),
            "norm": _f(cv.norms[layer][c]),
            "first_pc_variance_ratio": _f(rank.first_pc_variance_ratio[c]),
            "first_pc_null": _null_summary(null.get(int(padded.mask[c].sum())), rank.first_pc_variance_ratio[c]),
            "effective_rank": _f(rank.effective_rank[c], 2),
            "agreement": {
                "mean": _f(agree.mean[c]),
                "min": _f(agree.min[c]),
                "lowest": lowest,
                "n_below_0_1": int(((agree.cos[c] < 0.1) & padded.mask[c]).sum()),
            },
            "nearest": [
                {"concept": names[int(i)], "cos": _f(v)} for i, v in zip(near.index[c], near.cos[c], strict=True)
            ],
            "redundancy": {
                "r2": _f(red.r2[c]),
                "top": [{"concept": names[int(i)], "coef": _f(v)} for i, v in zip(top_idx[c], top_val[c], strict=True)],
            },
            "heldout": {
                "top1": _f(held.top1[c]),
                "top3": _f(held.top3[c]),
                "n": int(held.n_texts[c]),
                "confused_with": _confused_with(held.predicted, labels, c, names),
            },  # fmt: skip
        }
        if neuron is not None:
            entry["single_neuron"] = {
                "abs_cos": _f(neuron.abs_cos[c]),
                "neuron": int(neuron.neuron[c]),
                "cos": _f(neuron.cos[c]),
            }
        else:
            entry["single_neuron"] = {"skipped": "block has no MLP down-projection (e.g. Mamba) or none was saved"}
        if heads is not None:
            entry["heads"] = {
                "concentration": _f(heads.concentration[c]),
                "top": [
                    {"head": int(h), "norm": _f(n), "selectivity": _f(heads.selectivity[c, int(h)], 3)}
                    for h, n in zip(heads.top_heads[c], heads.top_norms[c], strict=True)
                ],
            }
        concepts[name] = entry
    skipped = [s for s in data.vectors.meta.get("skipped", []) if s.get("layer") == layer]
    return {
        "heldout": {
            "top1": _f(held.top1_overall),
            "top3": _f(held.top3_overall),
            "chance_top1": _f(1 / len(names)),
            "chance_top3": _f(min(1.0, 3 / len(names))),
            "reader": "vectors" if held_vectors is None else "probe",
            **(
                {}
                if held_vectors is None
                else {"vectors_top1": _f(held_vectors.top1_overall), "vectors_top3": _f(held_vectors.top3_overall)}
            ),
        },
        "heads_skipped": skipped[0]["reason"] if skipped and layer not in data.heads else None,
        "top_heads_used": k_heads,
        "concepts": concepts,
    }


def _method_fn(data: RunData, layer: int, pos: torch.Tensor) -> Any:
    """The held-out readout rebuilds vectors with the run's own method (the METHODS registry) from
    the training folds only; None for CAA (the readout's own batched computation), or when a
    method's inputs are missing (a centered run without neutral activations falls back to CAA)."""
    from ..vectors.methods import MethodInputs, get_method

    method = get_method(str(data.vectors.meta.get("method", "caa")))
    if method.name == "caa" or (method.needs_neutral and layer not in data.neutral):
        return None
    x = MethodInputs(data.resid[layer], pos, ~pos, _scenarios(data), data.neutral.get(layer))
    return lambda train: method.fn(x.subset(train))[0]


def _scenarios(data: RunData) -> torch.Tensor:
    """(N,) paired-scenario id of each text of the run, -1 outside scenarios."""
    scen_names = sorted({s["scenario"] for t in data.texts for s in t["sources"] if s.get("scenario")})
    return torch.tensor(
        [next((scen_names.index(s["scenario"]) for s in t["sources"] if s.get("scenario")), -1) for t in data.texts]
    )


def _groups(data: RunData) -> torch.Tensor:
    """(N,) group of each text of the run: its paired scenario, else its first identical text (as
    extract groups the probe's cross-validation)."""
    from ..vectors.probe import story_groups

    return story_groups([t["sha256"] or str(i) for i, t in enumerate(data.texts)], _scenarios(data))


def _probe_fn(data: RunData, layer: int, pos: torch.Tensor, groups: torch.Tensor) -> Any:
    """The held-out readout of a run with a readout probe: within each fold, a probe fitted as
    extract fits it (standardisation, C_reg by grouped CV) on the training texts only."""
    from ..vectors.probe import fit_readout_probe

    acts, kind = data.resid[layer], data.vectors.probes[layer].kind
    # LDA's temperature only rescales the log-probabilities (no ranking changes): top-k needs no calibration
    return lambda train: fit_readout_probe(acts[train], pos[:, train], groups[train], kind, calibrate=False).log_probs


def _confused_with(predicted: torch.Tensor, labels: torch.Tensor, c: int, names: list[str]) -> dict[str, Any] | None:
    """The concept that concept c's held-out texts were most often read as, other than c: {concept, n}
    (ties: the first in concept order), or None when every one was read as c."""
    pred = predicted[labels == c]
    wrong = pred[(pred != c) & (pred >= 0)]
    if not len(wrong):
        return None
    counts = torch.bincount(wrong, minlength=len(names))
    b = int(torch.argmax(counts))
    return {"concept": names[b], "n": int(counts[b])}


def top_k_heads(n_heads: int, top: int) -> int:
    """How many heads count as "top" for head_concentration: `top` (10), but at most a quarter
    of the heads, since the share of the norm in the top 10 of 9 heads is trivially 1."""
    return max(1, min(top, n_heads // 4))


def _geometry(data: RunData, layer: int) -> dict[str, Any]:
    names = data.vectors.concepts
    variables = {}
    for var in ("valence", "arousal", "dominance"):
        vals = [float(data.manifest.get(n, {}).get(var, float("nan"))) for n in names]
        if any(not math.isnan(v) for v in vals):
            variables[var] = torch.tensor(vals)
    if len(names) < 3:
        return {"layer": layer, "skipped": "fewer than 3 concepts"}
    g = M.concept_geometry(data.vectors.vectors[layer], variables, n_components=2)
    return {
        "layer": layer,
        "explained_variance_ratio": [_f(x) for x in g.explained_variance_ratio],
        "scores": {n: [_f(x) for x in g.scores[i]] for i, n in enumerate(names)},
        "correlations": [
            {
                "pc": c.pc,
                "variable": c.variable,
                "n": c.n,
                "pearson_r": _f(c.pearson_r),
                "pearson_p": _f(c.pearson_p, 6),
                "spearman_r": _f(c.spearman_r),
                "spearman_p": _f(c.spearman_p, 6),
            }
            for c in g.correlations
        ],
        "note": "PC signs are arbitrary (sklearn's svd_flip convention); |r| is what matters.",
    }


def write_report(run: str | Path, cfg: QualityConfig = QualityConfig()) -> dict[str, Any]:
    """Build the report of a run folder and write quality.json, quality.md and the PNGs into it."""
    from ..io import atomic_write_bytes
    from .render import figures, markdown

    data = load_run(run)
    report = build_report(data, cfg)
    figs = figures(report, data.vectors, data.run)
    report["figures"] = [p.name for p in figs]
    atomic_write_bytes(data.run / "quality.md", markdown(report).encode())
    atomic_write_bytes(data.run / "quality.json", json.dumps(report, indent=1).encode())
    return report
