"""From raw per-prompt numbers to tests, corrected p-values, trends and verdict sentences.

Each experiment (real, negative, positive) is one Holm family over all (measure, R level) tests;
the trend tests (>= 3 levels) form a second family per experiment. "R has a detectable causal
effect on X" is said only when a Holm-corrected p of the real experiment is below alpha.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import stats
from .. import measures as M
from .apparatus import ExperimentData
from .config import InterveneConfig
from .washout import summarize_washout

LACKED_POWER = "the experiment lacked power; a null result means nothing"


def _rng(cfg: InterveneConfig, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, 7, *keys]))


def analyze_experiment(data: ExperimentData, cfg: InterveneConfig, layer: int) -> dict[str, Any]:
    """Tests (per measure and level) with Holm, bootstrap CIs, effect sizes, trends, washout summary."""
    tests: list[dict[str, Any]] = []
    for mi, (m, d) in enumerate(data.diffs.items()):
        alt, unit, what = M.measure_info(m)
        for k, r in enumerate(cfg.levels):
            x = d[:, k]
            es = stats.effect_size(x)
            lo, hi = stats.bootstrap_ci(x, cfg.bootstrap, 0.95, _rng(cfg, 1, mi, k))
            p = stats.sign_flip_test(x, alt, cfg.permutations, _rng(cfg, 2, mi, k))  # type: ignore[arg-type]
            tests.append(
                {"measure": m, "level": r, "alternative": alt, "unit": unit, **es, "ci": [lo, hi], "p": p,
                 "free_mean": float(np.mean(data.arms[m][:, 0])), "forced_mean": float(np.mean(data.arms[m][:, k + 1]))}
            )  # fmt: skip
    adj = stats.holm([t["p"] for t in tests])
    for t, pa in zip(tests, adj, strict=True):
        t["p_holm"] = float(pa)
        t["significant"] = bool(pa < cfg.alpha)
    trends: list[dict[str, Any]] = []
    if len(cfg.levels) >= 3:
        lv = np.asarray(cfg.levels)[None, :]  # (1, L)
        for mi, (m, d) in enumerate(data.diffs.items()):
            dose = np.abs(lv - data.r_free[:, None]) if m in M.DIVERGENCES else np.broadcast_to(lv, d.shape)
            tr = stats.trend_test(dose, d, cfg.permutations, _rng(cfg, 3, mi))
            trends.append({"measure": m, "dose": "|R - R_free|" if m in M.DIVERGENCES else "R", **tr})
        for t, pa in zip(trends, stats.holm([t["p"] for t in trends]), strict=True):
            t["p_holm"] = float(pa)
            t["significant"] = bool(pa < cfg.alpha)
    washout = [
        {"level": r, "profile": prof, "summary": summarize_washout(prof, layer)}
        for r, prof in zip(cfg.levels, data.washout, strict=True)
    ]
    return {
        "tests": tests,
        "trends": trends,
        "washout": washout,
        "r_free_mean": float(np.mean(data.r_free)),
        "r_free": data.r_free.tolist(),
        "per_prompt": {m: d.tolist() for m, d in data.diffs.items()},
        "examples": data.examples,
    }


def _best(tests: list[dict[str, Any]], m: str) -> dict[str, Any]:
    rows = [t for t in tests if t["measure"] == m]
    return min(rows, key=lambda t: (t["p_holm"], -abs(t["mean"])))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def power_note(n: int, n_tests: int, cfg: InterveneConfig) -> dict[str, Any]:
    """Smallest attainable p-values for n prompts against the first Holm threshold alpha / m."""
    one = stats.min_attainable_p(n, "greater", cfg.permutations)
    two = stats.min_attainable_p(n, "two-sided", cfg.permutations)
    need = cfg.alpha / max(1, n_tests)
    # which limit binds: the prompts (exact enumeration, 2^-n) or the Monte Carlo permutations (1 / (P + 1))
    exact_one, exact_two = (0.5**n, 2 * 0.5**n)  # with every sign flip enumerated
    lim_one = "permutations" if one >= need > exact_one else "prompts"
    lim_two = "permutations" if two >= need > exact_two else "prompts"
    return {"n_prompts": n, "n_tests": n_tests, "min_p_one_sided": one, "min_p_two_sided": two,
            "holm_first_threshold": need, "one_sided_possible": one < need, "two_sided_possible": two < need,
            "one_sided_limited_by": lim_one, "two_sided_limited_by": lim_two}  # fmt: skip


def _remedy(pw: dict[str, Any], cfg: InterveneConfig, side: str) -> str:
    if pw[f"{side}_limited_by"] == "permutations":
        need = math.ceil(1 / pw["holm_first_threshold"])
        return f"raise --permutations (now {cfg.permutations}; p cannot go below 1 / (permutations + 1)) above {need}"
    return "use more prompts"


def verdicts(exps: dict[str, dict[str, Any]], cfg: InterveneConfig, n_prompts: int) -> dict[str, Any]:
    """One sentence per measure for the real experiment, plus the control and power summary lines."""
    real, neg, pos = exps.get("real"), exps.get("negative"), exps.get("positive")
    assert real is not None
    measures = list(dict.fromkeys(t["measure"] for t in real["tests"]))
    out: dict[str, str] = {}
    for m in measures:
        b = _best(real["tests"], m)
        what = M.measure_info(m)[2]
        where = f"at R = {b['level']:g}" if len(cfg.levels) > 1 else f"when R is forced to {b['level']:g}"
        trend = next((t for t in real["trends"] if t["measure"] == m and t["significant"]), None)
        if b["significant"] or trend:
            s = (
                f"R has a detectable causal effect on {m} ({what}): {where} it changed by {_fmt(b['mean'])} "
                f"{b['unit']} (95% CI [{_fmt(b['ci'][0])}, {_fmt(b['ci'][1])}], d_z = {_fmt(b['d_z'])}, "
                f"Holm p = {_fmt(b['p_holm'])})."
            )
            pb = (
                next((t for t in pos["tests"] if t["measure"] == m and t["level"] == b["level"]), None) if pos else None
            )
            if pb is not None and pb["mean"] != 0 and b["significant"]:
                s = s[:-1] + f"; that is {_fmt(b['mean'] / pb['mean'])} x the positive control's effect there."
            if trend and not b["significant"]:
                s = (
                    f"R has a detectable causal effect on {m} ({what}): a consistent trend with "
                    f"{trend['dose']} (mean Spearman rho = {_fmt(trend['rho'])}, Holm p = {_fmt(trend['p_holm'])})."
                )
        else:
            s = f"No detectable causal effect of R on {m} ({what}; smallest Holm p = {_fmt(b['p_holm'])} {where})"
            pb = _best(pos["tests"], m) if pos else None
            if pb is not None and pb["significant"]:
                s += (
                    f"; the positive control (planted additive coupling, alpha = {cfg.positive_alpha:g}) was detected "
                    f"on {m} (Holm p = {_fmt(pb['p_holm'])} at R = {pb['level']:g}), so an effect of that size "
                    "would have been seen."
                )
            else:
                s += f", and the positive control was not detected on {m} either: {LACKED_POWER}."
        out[m] = s
    summary: list[str] = []
    if neg is not None:
        bad = [t for t in neg["tests"] if t["significant"]]
        if bad:
            names = ", ".join(sorted({t["measure"] for t in bad}))
            summary.append(
                f"WARNING: the negative control (coupling detached) shows an effect on {names}: the apparatus "
                "changes outputs by itself, so no result of this experiment can be trusted."
            )
        else:
            pmin = min(t["p_holm"] for t in neg["tests"])
            summary.append(
                f"Negative control (coupling detached, R computed but not applied): no effect on any measure "
                f"(smallest Holm p = {_fmt(pmin)}), as it must be."
            )
    if pos is not None:
        hit = sorted({t["measure"] for t in pos["tests"] if t["significant"]})
        if hit:
            summary.append(
                f"Positive control (planted additive coupling, alpha = {cfg.positive_alpha:g}): detected on "
                f"{', '.join(hit)}."
            )
        else:
            summary.append(
                f"Positive control (planted additive coupling, alpha = {cfg.positive_alpha:g}) showed no effect on "
                f"any measure: {LACKED_POWER}."
            )
    pw = power_note(n_prompts, len(real["tests"]), cfg)
    if not pw["one_sided_possible"]:
        summary.append(
            f"With {n_prompts} prompts and {cfg.permutations} permutations no test can reach significance "
            f"(smallest p {_fmt(pw['min_p_one_sided'])} >= "
            f"alpha / {pw['n_tests']} tests): {LACKED_POWER}; {_remedy(pw, cfg, 'one_sided')}."
        )
    elif not pw["two_sided_possible"]:
        summary.append(
            f"With {n_prompts} prompts the smallest two-sided p-value is {_fmt(pw['min_p_two_sided'])}, above "
            f"alpha / {pw['n_tests']} tests = {_fmt(pw['holm_first_threshold'])}: a two-sided measure can only reach "
            f"significance after other tests are rejected (Holm); {_remedy(pw, cfg, 'two_sided')} or fewer levels "
            "for full power."
        )
    sig = [m for m in measures if out[m].startswith("R has")]
    head = (
        f"R has a detectable causal effect on {', '.join(sig)}."
        if sig
        else "No detectable causal effect of R on any measure."
    )
    return {"measures": out, "summary": summary, "headline": head, "power": pw}
