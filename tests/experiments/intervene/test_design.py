"""Settings, R levels, prompt files and seeds."""

from __future__ import annotations

import json

import pytest

from steerkit.errors import ExperimentError
from steerkit.experiments import InterveneConfig, load_prompts, merge_levels, parse_grid
from steerkit.experiments.intervene.config import R_MAX_APPLIED, applied_level
from steerkit.experiments.prompts import arm_seed, default_prompts_path


def test_levels_and_grid():
    g = parse_grid("0:1:0.1")
    assert len(g) == 11 and g[0] == 0.0 and g[-1] == 1.0 and g[3] == 0.3
    assert parse_grid("0.2:0.8:0.3") == (0.2, 0.5, 0.8)
    assert merge_levels([0.3, 0.5], "0:1:0.25") == (0.0, 0.25, 0.3, 0.5, 0.75, 1.0)
    assert merge_levels([0.3], None) == (0.3,)
    assert applied_level(1.0) == R_MAX_APPLIED < 1.0 and applied_level(0.3) == 0.3
    for bad in ("1:0:0.1", "0:1:0", "0:1", "a:b:c", "0:2:0.5"):
        with pytest.raises(ExperimentError):
            parse_grid(bad)
    for bad in ([1.5], [-0.1], [float("nan")], []):
        with pytest.raises(ExperimentError, match="R"):
            merge_levels(bad, None)


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        InterveneConfig(levels=(0.3,), method="push")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds"):
        InterveneConfig(levels=(0.3,), seeds=0)
    with pytest.raises(ValueError, match="alpha"):
        InterveneConfig(levels=(0.3,), alpha=1.5)
    with pytest.raises(ExperimentError):
        InterveneConfig(levels=(2.0,))


def test_prompt_files(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text(
        json.dumps({"prompt": "Hello", "continuation": " world"}) + "\n\n" + json.dumps({"prompt": "Hi"}) + "\n"
    )
    ps = load_prompts(j)
    assert [(p.text, p.continuation) for p in ps] == [("Hello", " world"), ("Hi", None)]
    t = tmp_path / "p.txt"
    t.write_text("# comment\nThe cat sat ||| on the mat.\n\nA lone prompt\n")
    assert [(p.text, p.continuation) for p in load_prompts(t)] == [
        ("The cat sat", " on the mat."),
        ("A lone prompt", None),
    ]
    empty = tmp_path / "e.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ExperimentError, match="no prompts"):
        load_prompts(empty)
    with pytest.raises(ExperimentError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ExperimentError, match="b.jsonl:2"):
        load_prompts(bad)


def test_default_prompt_set():
    assert default_prompts_path().is_file()
    ps = load_prompts()
    assert 16 <= len(ps) <= 24
    assert len({p.text for p in ps}) == len(ps)
    assert all(p.continuation and p.continuation.startswith(" ") and len(p.continuation.split()) >= 8 for p in ps)


def test_arm_seeds():
    assert arm_seed(0, 1, 2, 3) == arm_seed(0, 1, 2, 3)
    seeds = {arm_seed(s, i, a, j) for s in range(3) for i in range(4) for a in range(3) for j in range(5)}
    assert len(seeds) == 3 * 4 * 3 * 5 and all(0 <= x < 2**63 for x in seeds)
