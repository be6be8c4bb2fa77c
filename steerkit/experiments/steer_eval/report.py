"""steer-eval's report: the grid's numbers -> steer_eval.json, steer_eval.md and the figures, each
file written atomically (steer_eval.json last: `steerkit steer` reads its operating points)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ...io import atomic_write_bytes
from . import analysis as S

FORMAT_VERSION = 1
FIGURES = ("steer_eval_curves.png", "steer_eval_operating.png", "steer_eval_offtarget.png")


def analyze(grid: Any, cfg: Any, cv: Any, concepts: list[str], layers: list[int]) -> dict[str, Any]:
    """Per-cell statistics, Holm, operating points and the summary from a computed grid."""
    from .grid import arm_data

    base_arm = next(a for a in grid.arms if a.kind == "base")
    base = arm_data(grid, base_arm)
    data = {id(a): arm_data(grid, a) for a in grid.arms}
    randoms: dict[tuple[int, float], list[S.Arm]] = {}
    for a in grid.arms:
        if a.kind == "random":
            randoms.setdefault((a.layer, a.alpha), []).append(data[id(a)])
    n_cells = sum(a.kind == "concept" for a in grid.arms)
    n_perm = S.n_permutations(cfg.permutations, n_cells, cfg.significance)
    cells, changes = [], {}
    for i, a in enumerate(x for x in grid.arms if x.kind == "concept"):
        c = cv.index(a.name)
        st = S.cell(c, data[id(a)], randoms[(a.layer, a.alpha)], base, cfg.top, n_perm, seed=cfg.seed * 100_003 + i)
        changes[(a.name, a.layer, a.alpha)] = st.pop("change")
        cells.append({"concept": a.name, "layer": a.layer, "alpha": a.alpha, **st})
    S.adjust(cells, cfg.significance)
    ops = S.operating_points(cells, concepts, cfg.max_nll_increase, cfg.min_success)
    rand_cells = [{"layer": la, "alpha": al, **S.random_cell(rs, base)} for (la, al), rs in randoms.items()]
    for rc in rand_cells:
        inside = [c["random_success"] for c in cells if c["layer"] == rc["layer"] and c["alpha"] == rc["alpha"]]
        rc["success"] = float(np.mean(inside)) if inside else math.nan
    summary = S.summarize(cells, ops, rand_cells, cfg.max_nll_increase)
    held = _held_out(grid, data, base, cells, cv, concepts, cfg)
    if held is not None:
        summary["n_held_out"] = sum(ops[n] is not None and held[n]["held"] for n in concepts)
    base_success = {n: float(np.mean(S.ranks(base.scores, cv.index(n)) <= cfg.top)) for n in concepts}
    off_rows = {}
    for n in concepts:
        pick = ops[n] or S.best_cell(cells, n, cfg.max_nll_increase)
        if pick is not None:
            off_rows[n] = [float(x) for x in changes[(n, pick["layer"], pick["alpha"])]]
    examples = {}
    first = {a.name + f"@{a.layer}/{a.alpha}": grid.results[a.rows[0]]["text"] for a in grid.arms}
    for n in concepts:
        op = ops[n]
        if op is not None:
            examples[n] = first[f"{n}@{op['layer']}/{op['alpha']}"]
    return {
        "format_version": FORMAT_VERSION,
        "kind": "steer_eval",
        "config": cfg.to_dict(),
        "concepts": concepts,
        "read_concepts": list(cv.concepts),
        "layers": layers,
        "alphas": cfg.nonzero_alphas,
        "n_units": len(grid.units),
        "permutations": n_perm,
        "sampler": grid.sampler,
        "baseline": {
            "nll": float(np.nanmean(base.nll)) if np.isfinite(base.nll).any() else None,
            "distinct2": float(base.distinct2.mean()),
            "rep3": float(base.rep3.mean()),
            "success": base_success,
            "example": grid.results[base_arm.rows[0]]["text"],
        },
        "cells": [_clean(c) for c in cells],
        "random": [_clean(r) for r in rand_cells],
        "operating_points": {n: None if op is None else _op(op, cfg.scale) for n, op in ops.items()},
        "held_out": held,
        "off_target": off_rows,
        "summary": _clean(summary),
        "examples": examples,
        "stats": grid.stats,
    }


def _held_out(grid: Any, data: dict[int, S.Arm], base: S.Arm, cells: list[dict[str, Any]], cv: Any,
              concepts: list[str], cfg: Any) -> dict[str, dict[str, Any]] | None:  # fmt: skip
    """`analysis.held_out_points` with the prompts split by parity (a prompt's seeds share a fold);
    None with a single prompt."""
    folds = np.array([p % 2 for p, _ in grid.units])
    if len(set(folds.tolist())) < 2:
        return None
    units = {}
    for a in grid.arms:
        if a.kind == "concept":
            arm = data[id(a)]
            units[(a.name, a.layer, a.alpha)] = (S.ranks(arm.scores, cv.index(a.name)) <= cfg.top, arm.nll - base.nll)
    return S.held_out_points(cells, units, folds, concepts, cfg.max_nll_increase, cfg.min_success)


def _op(cell: dict[str, Any], scale: str) -> dict[str, Any]:
    keys = ("layer", "alpha", "success", "nll_increase", "gain", "off_target", "random_success", "p_holm")
    return _clean({k: cell[k] for k in keys} | {"scale": scale})


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _f(x: Any, spec: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def render_markdown(rep: dict[str, Any]) -> str:
    cfg, s = rep["config"], rep["summary"]
    src = rep.get("source", {})
    lines = [
        "# steer-eval",
        "",
        f"Vectors: `{src.get('vectors', '?')}` (model {src.get('model', '?')}); readout layer "
        f"{src.get('readout_layer')} ({src.get('pooling')}, judged by the {src.get('reader', 'projection')}); layers {rep['layers']}, alphas {rep['alphas']} "
        f"({cfg['scale']}); {rep['n_units']} units ({src.get('n_prompts')} prompts x "
        f"{1 if cfg['greedy'] else cfg['seeds']} seeds, {'greedy' if cfg['greedy'] else 'sampled'}, "
        f"{cfg['max_new_tokens']} tokens); {cfg['random_draws']} random directions per layer; sampler "
        f"{rep['sampler']}; {rep['stats']['rows']} rows ({rep['stats']['cached']} cached) in "
        f"{rep['stats']['seconds']:.0f} s.",
        "",
        "## Summary",
        "",
        f"- steerable (an operating point: beats the random control after Holm, success >= "
        f"{cfg['min_success']:.0%}, NLL increase <= {cfg['max_nll_increase']} nat/token): "
        f"**{s['n_steerable']} of {s['n_concepts']} ({s['share_steerable']:.0%})**",
        f"- at the operating points: median success {_f(s['median_success'], '.0%')}, median NLL increase "
        f"{_f(s['median_nll_increase'])} nat/token",
        f"- random-direction control: the steered concept lands in the top {cfg['top']} in "
        f"{_f(s['random_success'], '.1%')} of its generations over the grid "
        f"({_f(s['random_success_at_operating_points'], '.1%')} at the operating points); its NLL increase "
        f"averages {_f(s['random_nll_increase'])} nat/token",
        *(
            [
                f"- held out (each operating point chosen on half the prompts, measured on the other half, "
                f"both ways; docs/steer-eval.md): **{s['n_held_out']} of {s['n_steerable']}** steerable concepts keep "
                f"success >= {cfg['min_success']:.0%} and the NLL budget"
            ]
            if s.get("n_held_out") is not None
            else []
        ),
        f"- claims: {s['n_claims']} of {s['n_cells']} cells (Holm over the grid, level {cfg['significance']})",
        f"- unsteered baseline: NLL {_f(rep['baseline']['nll'])} nat/token, distinct-2 "
        f"{_f(rep['baseline']['distinct2'])}, repeated 3-grams {_f(rep['baseline']['rep3'])}",
        "",
        "## Operating points",
        "",
        "| concept | layer | alpha | success | held-out success | base success | NLL increase | gain | off-target "
        "| random success | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    held = rep.get("held_out") or {}
    for n in rep["concepts"]:
        op, bs = rep["operating_points"][n], rep["baseline"]["success"][n]
        h = held.get(n)
        hs = "—" if h is None else f"{h['success']:.0%}" + ("" if h["held"] else " (not held)")
        if op is None:
            lines.append(f"| {n} | — | — | — | {hs} | {bs:.0%} | — | — | — | — | no operating point |")
        else:
            lines.append(
                f"| {n} | {op['layer']} | {op['alpha']:g} | {op['success']:.0%} | {hs} | {bs:.0%} | "
                f"{_f(op['nll_increase'])} | {_f(op['gain'])} | {_f(op['off_target'])} | "
                f"{_f(op['random_success'], '.0%')} | {_f(op['p_holm'], '.2g')} |"
            )
    lines += ["", "Best steered: " + ", ".join(_who(e) for e in s["best"]),
              "", "Worst steered: " + ", ".join(_who(e) for e in s["worst"]), ""]  # fmt: skip
    lines += ["## Random control per layer and alpha", "", "| layer | alpha | success | NLL increase | distinct-2 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in rep["random"]:
        lines.append(
            f"| {r['layer']} | {r['alpha']:g} | {_f(r['success'], '.1%')} | {_f(r['nll_increase'])} | "
            f"{_f(r['distinct2'])} |"
        )
    lines += ["", "## Examples (first prompt, first seed, at the operating point)", "",
              f"- unsteered: {json.dumps(rep['baseline']['example'])}"]  # fmt: skip
    lines += [f"- {n}: {json.dumps(t)}" for n, t in rep["examples"].items()]
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in rep.get("figures", [])), "",
              "How to read this report: docs/steer-eval.md.", ""]  # fmt: skip
    return "\n".join(lines)


def _who(e: dict[str, Any]) -> str:
    where = f"L{e['layer']} a={e['alpha']:g}" if e.get("layer") is not None else "no cell under the cap"
    return f"{e['concept']} ({_f(e['success'], '.0%')}, {where}{'' if e['steerable'] else ', not steerable'})"


def write_report(out: Path, rep: dict[str, Any], groups: dict[str, list[str]]) -> list[str]:
    """Figures, steer_eval.md, then steer_eval.json into `out` (each atomic); returns the file names."""
    from .figures import figures

    out.mkdir(parents=True, exist_ok=True)
    figs = figures(rep, groups)
    for name, data in figs.items():
        atomic_write_bytes(out / name, data)
    rep["figures"] = list(figs)
    atomic_write_bytes(out / "steer_eval.md", render_markdown(rep).encode())
    atomic_write_bytes(out / "steer_eval.json", json.dumps(_clean(rep), indent=1).encode())
    return [*figs, "steer_eval.md", "steer_eval.json"]


def operating_points_for(run: Path, names: list[str], layer_given: bool) -> dict[str, dict[str, Any]]:
    """For `steerkit steer --concept NAME` without a strength: {name: operating point} from
    run/steer_eval.json ({} when the run has none). One-line errors when a name has no operating point,
    the vectors changed since the steer-eval, or the points disagree on the scale (or on the layer
    when no --layer is given)."""
    from ...errors import ReadoutError
    from ...io import sha256_file

    p = run / "steer_eval.json"
    if not names or not p.is_file():
        return {}
    try:
        rep = json.loads(p.read_text())
        points = rep["operating_points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReadoutError(f"{p} is unreadable ({type(e).__name__}); rerun `steerkit steer-eval`") from e
    if rep.get("source", {}).get("readout_sha256") != sha256_file(run / "readout.safetensors"):
        raise ReadoutError(f"{p} was made with other vectors; rerun `steerkit steer-eval` or give NAME=ALPHA")
    ops = {}
    for n in names:
        if points.get(n) is None:
            raise ReadoutError(
                f"{n!r} has no operating point in {p} (no cell beat the random control under the NLL budget); "
                f"give a strength, e.g. --concept {n}=4"
            )
        ops[n] = points[n]
    if len({op["scale"] for op in ops.values()}) > 1 or (
        not layer_given and len({op["layer"] for op in ops.values()}) > 1
    ):
        raise ReadoutError(
            f"the operating points of {', '.join(names)} differ in layer or scale; give --layer and NAME=ALPHA"
        )
    return ops
