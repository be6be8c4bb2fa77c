"""The numbers of steer-eval from per-row measures (pure numpy): per-cell statistics, the claim
test against the random-direction control, Holm over the grid, operating points, the summary.

A cell is (concept c, layer L, alpha a != 0). Its units are the prompts x seeds; every arm (the
concept, each random draw, the unsteered baseline) is generated on the same units with the same
sampling seeds, so the differences are paired.
- success_i: c is among the `top` highest concept scores of unit i's continuation (ties counted
  against c); rank_i = 1 + #{other concepts scoring >= c}.
- gain_i = score_c(steered) - score_c(baseline); off_target_i = the mean of that change over the
  other concepts.
- nll increase = mean_i (nll_i - nll_base_i) over units whose continuations are both non-empty.
- claim test, H0: the concept direction moves score_c no more than a random direction of the same
  norm does. p_units = sign-flip test (greater) of d_i = gain_i - mean_k rgain_ki over the units
  (the same prompts and seeds); p_dir = `stats.draws_test` of mean_i gain_i against the random
  draws' mean gains (R draws), which also counts the spread between random directions. The claim
  p-value is max(p_units, p_dir): valid under either null (an intersection-union test; Berger,
  Technometrics 24, 1982). Holm over every cell of the grid; a claim where p_holm < significance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import stats


@dataclass
class Arm:
    """Per-unit measures of one arm: scores (n, C) on every readout concept, nll, distinct2, rep3 (n,)."""

    scores: np.ndarray
    nll: np.ndarray
    distinct2: np.ndarray
    rep3: np.ndarray


def ranks(scores: np.ndarray, c: int | np.ndarray) -> np.ndarray:
    """Rank of concept c in each row of scores (n, C): 1 + #{j != c: s_j >= s_c} (ties count against c).
    c: one concept for every row, or (n,) a concept per row."""
    s = scores[:, c : c + 1] if np.ndim(c) == 0 else np.take_along_axis(scores, np.asarray(c)[:, None], 1)  # (n, 1)
    return (scores >= s).sum(1)  # column c itself counts once: the 1 +


def nll_increase(arm: Arm, base: Arm) -> float:
    d = arm.nll - base.nll  # (n,)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else math.nan


def n_permutations(requested: int, n_tests: int, significance: float) -> int:
    """Monte Carlo sign patterns such that the smallest attainable p-value, 1 / (1 + B), never keeps
    a cell from passing Holm over n_tests cells: B >= 10 * n_tests / significance."""
    return max(int(requested), math.ceil(10 * n_tests / significance))


def cell(c: int, arm: Arm, randoms: list[Arm], base: Arm, top: int, n_perm: int, seed: int) -> dict[str, Any]:
    """Statistics of one cell: concept index c steered in `arm`, R random draws at the same layer
    and alpha, the unsteered `base` (all on the same units)."""
    rank = ranks(arm.scores, c)  # (n,)
    gain = arm.scores[:, c] - base.scores[:, c]  # (n,)
    change = arm.scores - base.scores  # (n, C)
    others = np.delete(change, c, axis=1)  # (n, C - 1)
    rgain = np.stack([r.scores[:, c] - base.scores[:, c] for r in randoms])  # (R, n)
    rsuccess = np.stack([ranks(r.scores, c) <= top for r in randoms])  # (R, n)
    d = gain - rgain.mean(0)  # (n,)
    p_units = stats.sign_flip_test(d, "greater", n_perm, rng=seed)
    p_dir = stats.draws_test(float(gain.mean()), rgain.mean(1), "greater") if len(randoms) >= 2 else math.nan
    return {
        "success": float(np.mean(rank <= top)),
        "rank_mean": float(rank.mean()),
        "rank_median": float(np.median(rank)),
        "gain": float(gain.mean()),
        "off_target": float(others.mean()) if others.size else 0.0,
        "change": change.mean(0),  # (C,) mean score change of every concept (the off-target row)
        "nll_increase": nll_increase(arm, base),
        "distinct2": float(arm.distinct2.mean()),
        "rep3": float(arm.rep3.mean()),
        "random_success": float(rsuccess.mean()),
        "random_gain": float(rgain.mean()),
        "random_gain_sd": float(rgain.mean(1).std(ddof=1)) if len(randoms) >= 2 else math.nan,
        "p_units": p_units,
        "p_dir": p_dir,
        "p": max(p_units, p_dir) if not math.isnan(p_dir) else math.nan,
    }


def adjust(cells: list[dict[str, Any]], significance: float) -> None:
    """Holm over the grid, in place: p_holm and claim for every cell."""
    adj = stats.holm([c["p"] for c in cells])
    for c, p in zip(cells, adj, strict=True):
        c["p_holm"] = float(p)
        c["claim"] = bool(np.isfinite(p) and p < significance)


def operating_points(
    cells: list[dict[str, Any]], concepts: list[str], max_nll: float, min_success: float
) -> dict[str, dict[str, Any] | None]:
    """Per concept, the claimed cell with the highest success rate whose NLL increase is at most
    max_nll (ties: lower NLL increase, then smaller |alpha|); None when there is none or its success
    rate is below min_success."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in concepts:
        ok = [
            c
            for c in cells
            if c["concept"] == name and c["claim"] and np.isfinite(c["nll_increase"]) and c["nll_increase"] <= max_nll
        ]
        ok.sort(key=lambda c: (-c["success"], c["nll_increase"], abs(c["alpha"]), c["layer"]))
        out[name] = ok[0] if ok and ok[0]["success"] >= min_success else None
    return out


def held_out_points(
    cells: list[dict[str, Any]],
    units: dict[tuple[str, int, float], tuple[np.ndarray, np.ndarray]],
    folds: np.ndarray,
    concepts: list[str],
    max_nll: float,
    min_success: float,
) -> dict[str, dict[str, Any]]:
    """The operating points' success on prompts that did not choose them (cross-fitting against the
    winner's curse: the best of many cells, judged on the units that made it best, is biased upward).

    cells: the grid's cells (their claims, from all units, are kept); units[(concept, layer, alpha)] =
    (success (n,) bool, NLL increase (n,) with NaN where a continuation is empty) per unit; folds (n,)
    ints, the unit's fold (steer-eval: its prompt's parity, so seeds of one prompt share a fold).
    For each fold f, `operating_points` chooses each concept's cell from the units outside f, and
    the chosen cell is measured on f; a fold where no cell qualifies counts success 0 (nothing to
    steer with). Per concept: success and NLL increase averaged over the folds, and `held` = the
    averaged success >= min_success and NLL increase <= max_nll with a cell chosen in every fold."""
    out: dict[str, dict[str, Any]] = {}
    fold_ids = sorted(set(np.asarray(folds).tolist()))
    per: dict[str, list[tuple[float, float] | None]] = {n: [] for n in concepts}
    for f in fold_ids:
        test = np.asarray(folds) == f
        half = []
        for c in cells:
            ok, dnll = units[(c["concept"], c["layer"], c["alpha"])]
            d = dnll[~test][np.isfinite(dnll[~test])]
            half.append(
                c | {"success": float(ok[~test].mean()), "nll_increase": float(d.mean()) if len(d) else math.nan}
            )
        chosen = operating_points(half, concepts, max_nll, min_success)
        for n in concepts:
            op = chosen[n]
            if op is None:
                per[n].append(None)
                continue
            ok, dnll = units[(n, op["layer"], op["alpha"])]
            d = dnll[test][np.isfinite(dnll[test])]
            per[n].append((float(ok[test].mean()), float(d.mean()) if len(d) else math.nan))
    for n in concepts:
        got = [x for x in per[n] if x is not None]
        success = sum(x[0] for x in got) / len(fold_ids) if fold_ids else 0.0
        nll = float(np.nanmean([x[1] for x in got])) if got and any(np.isfinite(x[1]) for x in got) else math.nan
        held = len(got) == len(fold_ids) > 0 and success >= min_success and np.isfinite(nll) and nll <= max_nll
        out[n] = {"success": success, "nll_increase": nll, "folds_chosen": len(got), "held": bool(held)}
    return out


def best_cell(cells: list[dict[str, Any]], name: str, max_nll: float) -> dict[str, Any] | None:
    """The highest success rate under the NLL cap, claimed or not (for concepts without an operating point)."""
    ok = [c for c in cells if c["concept"] == name and np.isfinite(c["nll_increase"]) and c["nll_increase"] <= max_nll]
    ok.sort(key=lambda c: (-c["success"], c["nll_increase"], abs(c["alpha"])))
    return ok[0] if ok else None


def summarize(
    cells: list[dict[str, Any]],
    ops: dict[str, dict[str, Any] | None],
    random_cells: list[dict[str, Any]],
    max_nll: float,
    k: int = 5,
) -> dict[str, Any]:
    """The headline numbers: share of concepts with an operating point, their median NLL increase and
    success, the random control's success rate, and the k best- and worst-steered concepts."""
    names = list(ops)
    steerable = [n for n in names if ops[n] is not None]

    def score(n: str) -> tuple[int, float, float]:
        op = ops[n]
        if op is not None:
            return (1, op["success"], -op["nll_increase"])
        b = best_cell(cells, n, max_nll)
        return (0, b["success"] if b else 0.0, -(b["nll_increase"] if b else math.inf))

    order = sorted(names, key=score, reverse=True)
    at_ops = [c["random_success"] for c in ops.values() if c is not None]

    def entry(n: str) -> dict[str, Any]:
        op = ops[n] or best_cell(cells, n, max_nll)
        base = {"concept": n, "steerable": ops[n] is not None}
        if op is None:
            return base | {"layer": None, "alpha": None, "success": 0.0, "nll_increase": None}
        return base | {k2: op[k2] for k2 in ("layer", "alpha", "success", "nll_increase", "gain", "p_holm")}

    return {
        "n_concepts": len(names),
        "n_steerable": len(steerable),
        "share_steerable": len(steerable) / len(names) if names else 0.0,
        "median_nll_increase": float(np.median([ops[n]["nll_increase"] for n in steerable])) if steerable else None,  # type: ignore[index]
        "median_success": float(np.median([ops[n]["success"] for n in steerable])) if steerable else None,  # type: ignore[index]
        "random_success": float(np.mean([c["random_success"] for c in cells])) if cells else None,
        "random_success_at_operating_points": float(np.mean(at_ops)) if at_ops else None,
        "random_nll_increase": float(np.nanmean([r["nll_increase"] for r in random_cells])) if random_cells else None,
        "n_claims": int(sum(c["claim"] for c in cells)),
        "n_cells": len(cells),
        "best": [entry(n) for n in order[:k]],
        "worst": [entry(n) for n in order[::-1][:k]],
    }


def random_cell(randoms: list[Arm], base: Arm) -> dict[str, float]:
    """What the random directions at one (layer, alpha) do to fluency."""
    return {
        "nll_increase": float(np.nanmean([nll_increase(r, base) for r in randoms])),
        "distinct2": float(np.mean([r.distinct2.mean() for r in randoms])),
        "rep3": float(np.mean([r.rep3.mean() for r in randoms])),
    }
