"""Every analysis runs in --quick mode (tiny random model, small corpus), so none of them rots.
Results go to tmp_path, never over the committed analyses/results/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ANALYSES = sorted(p.stem for p in (ROOT / "analyses").glob("*.py") if p.stem != "common" and not p.stem.startswith("_"))


def test_there_are_analyses():
    assert {"pooling_and_layers", "emotion_geometry", "benchmarks_summary"} <= set(ANALYSES)


@pytest.mark.parametrize("name", ANALYSES)
def test_quick_mode(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STEERKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "analyses" / f"{name}.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seconds"] >= 0
    report = (tmp_path / "report.md").read_text()
    assert report.startswith(f"# {name}") and "Headline" in report or name == "benchmarks_summary"


def test_quick_without_out_never_writes_the_committed_results(tmp_path, monkeypatch):
    """`analyses/<name>.py --quick` without --out goes to a temporary folder; only a full run (or an
    explicit --out) writes analyses/results/<name>/."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("analyses_common", ROOT / "analyses" / "common.py")
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "analyses_common", common)  # dataclasses look their module up
    spec.loader.exec_module(common)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    quick = common.out_dir("steering", argparse.Namespace(out=None, quick=True))
    assert quick.is_relative_to(tmp_path) and not quick.is_relative_to(ROOT)
    given = common.out_dir("steering", argparse.Namespace(out=str(tmp_path / "x"), quick=True))
    assert given == tmp_path / "x"
    full = argparse.Namespace(out=None, quick=False)
    assert common.RESULTS / "steering" == ROOT / "analyses" / "results" / "steering"
    assert common.out_dir("steering", full) == common.RESULTS / "steering"
