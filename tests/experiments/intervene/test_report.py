"""Verdicts from planted per-prompt numbers (what the report must and must not say), Holm across
measures and levels, and the written files (strict JSON, Markdown, PNGs, run.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steerkit.experiments import InterveneConfig
from steerkit.experiments.batch import Prepared
from steerkit.experiments.intervene.analysis import LACKED_POWER, analyze_experiment, verdicts
from steerkit.experiments.intervene.apparatus import ExperimentData
from steerkit.experiments.intervene.experiment import Results
from steerkit.experiments.intervene.report import build_report, markdown, write_report
from steerkit.experiments.prompts import Prompt

MEASURES = ("kl", "topk", "entropy", "nll", "distinct", "length", "gen_entropy")
N = 10


def _data(name, effects: dict[str, float] | None = None, levels=(0.3,), seed=0):
    """Per-prompt effects: N(mean, 1) for the named two-sided measures, |mean| + U(0, 1) for divergences."""
    rng = np.random.default_rng(seed)
    d = ExperimentData(name, np.full(N, 0.5))
    for m in MEASURES:
        mu = (effects or {}).get(m, 0.0)
        if m in ("kl", "topk"):
            x = np.abs(mu) * (1 + rng.uniform(0, 1, (N, len(levels)))) if mu else np.zeros((N, len(levels)))
        else:
            x = mu + rng.normal(0, 1, (N, len(levels))) if mu else rng.normal(0, 1, (N, len(levels)))
        d.diffs[m] = x
        d.arms[m] = np.concatenate([np.zeros((N, 1)), x], 1)
    d.washout = [{"block_2": {"raw": 0.1, "dir": 0.1}, "logits": {"raw": 0.05, "dir": 0.05}} for _ in levels]
    return d


def _verdicts(real, neg, pos, levels=(0.3,)):
    cfg = InterveneConfig(levels=levels)
    exps = {n: analyze_experiment(d, cfg, 2) for n, d in (("real", real), ("negative", neg), ("positive", pos))}
    return exps, verdicts(exps, cfg, N)


def test_null_with_power_and_null_without_power():
    exps, v = _verdicts(_data("real"), _data("negative", seed=1), _data("positive", {"kl": 1.0, "entropy": 3.0}))
    assert v["headline"] == "No detectable causal effect of R on any measure."
    assert "the positive control (planted additive coupling" in v["measures"]["kl"]
    assert "would have been seen" in v["measures"]["entropy"]
    assert LACKED_POWER in v["measures"]["length"]  # the positive control did not move length
    assert any("Negative control" in s and "as it must be" in s for s in v["summary"])
    assert not any(LACKED_POWER in s for s in v["summary"])
    # the positive control detects nothing at all: the report says so, once, in the summary
    _, v = _verdicts(_data("real"), _data("negative", seed=1), _data("positive", seed=2))
    assert any(s.endswith(f"{LACKED_POWER}.") and "Positive control" in s for s in v["summary"])
    assert all(LACKED_POWER in s for s in v["measures"].values())


def test_detected_effect_and_broken_negative_control():
    exps, v = _verdicts(
        _data("real", {"kl": 0.01, "nll": 2.5}), _data("negative", seed=1), _data("positive", {"kl": 1})
    )
    assert v["measures"]["kl"].startswith("R has a detectable causal effect on kl")
    assert v["measures"]["nll"].startswith("R has a detectable causal effect on nll")
    assert "kl, nll" in v["headline"]
    t = next(t for t in exps["real"]["tests"] if t["measure"] == "kl")
    assert t["p"] == 1 / 2**N and t["p_holm"] == pytest.approx(7 / 2**N) and t["significant"]
    _, v = _verdicts(_data("real"), _data("negative", {"kl": 0.5}), _data("positive", {"kl": 1}))
    assert v["summary"][0].startswith("WARNING: the negative control")


def test_holm_runs_across_measures_and_levels():
    levels = (0.1, 0.5, 0.9)
    real = _data("real", levels=levels)
    real.diffs["entropy"][:, 1] = np.array(
        [1.0] * 8 + [-0.1, -0.1]
    )  # two-sided p = 2 * 4 / 1024: the 4 signings of the two -0.1s
    exps, _ = _verdicts(real, _data("negative", levels=levels), _data("positive", {"kl": 1}, levels=levels), levels)
    t = next(t for t in exps["real"]["tests"] if t["measure"] == "entropy" and t["level"] == 0.5)
    assert len(exps["real"]["tests"]) == 7 * 3
    assert t["p"] == pytest.approx(8 / 1024) and t["p"] < 0.05 and not t["significant"]  # 21 tests
    assert t["p_holm"] == pytest.approx(21 * 8 / 1024)
    assert {tr["measure"] for tr in exps["real"]["trends"]} == set(MEASURES)


def test_written_files(tmp_path):
    cfg = InterveneConfig(levels=(0.2, 0.8))
    prompts = [Prepared(f"p{i}", " c", [1, 2], [3]) for i in range(N)]
    res = Results(prompts, cfg, 2)
    res.experiments = {
        n: _data(n, e, cfg.levels) for n, e in (("real", {"kl": 1}), ("negative", None), ("positive", {"kl": 1}))
    }
    res.experiments["real"].diffs["gen_entropy"][:, 0] = 2.0  # identical non-zero effects: d_z = inf
    rep = build_report(res, {"run": "runs/x", "model": "tiny", "coupling": "additive", "alpha": 0.1})
    out = tmp_path / "iv"
    paths = write_report(out, rep)
    strict = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert strict["kind"] == "intervene" and strict["settings"]["levels"] == [0.2, 0.8]
    assert len(strict["seeds"]["per_prompt"]["0"]["free"]) == cfg.seeds
    md = paths["md"].read_text()
    assert "R has a detectable causal effect on kl" in md and "negative Holm p" in md and "Norm washout" in md
    assert all(paths[k].read_bytes()[:4] == b"\x89PNG" for k in ("dose_response", "washout"))
    assert json.loads((out / "run.json").read_text())["kind"] == "intervene"
    assert markdown(rep) == md
    assert Prompt("a").continuation is None
