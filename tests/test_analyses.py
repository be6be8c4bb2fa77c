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
    if name == "steering":  # every operating point lies on one of the steered blocks
        assert sum(results["by_layer"].values()) == results["summary"]["n_steerable"]
        assert set(results["by_layer"]) == {str(layer) for layer in results["layers"]}
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
    other = argparse.Namespace(out=None, quick=False, model="gemma3-270m")  # another model: beside, not over
    assert common.out_dir("steering", other) == common.RESULTS / "steering" / "by_model" / "gemma3-270m"


def test_pooling_and_layers_carries_rows_only_from_a_matching_run(tmp_path):
    """--carry copies a method's rows from the folder's earlier results.json (and says so), and
    refuses when there is none."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STEERKIT_CACHE": str(tmp_path / "cache")}
    script = [sys.executable, str(ROOT / "analyses" / "pooling_and_layers.py"), "--quick", "--out", str(tmp_path / "r")]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*script, *args], capture_output=True, text=True, env=env, timeout=600)

    refused = run("--methods", "caa", "--carry", "pca")
    assert refused.returncode != 0 and "does not exist" in refused.stderr
    assert run("--methods", "caa,pca").returncode == 0
    first = json.loads((tmp_path / "r" / "results.json").read_text())
    assert run("--methods", "caa", "--carry", "pca").returncode == 0
    second = json.loads((tmp_path / "r" / "results.json").read_text())
    assert second["methods"]["pca"] == first["methods"]["pca"] and set(second["carried"]) == {"pca"}
    assert "Carried, not recomputed" in (tmp_path / "r" / "report.md").read_text()
    assert second["folds"] == "stratified, scenario-grouped"
    (tmp_path / "r" / "results.json").write_text(json.dumps({**second, "folds": "stratified"}))  # an older protocol
    mixed = run("--methods", "caa", "--carry", "pca")
    assert mixed.returncode != 0 and "fold count or kind" in mixed.stderr


def _analysis(name: str, monkeypatch):  # type: ignore[no-untyped-def]
    """Import analyses/<name>.py as a module (it imports analyses/common.py as `common`)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "analyses"))
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ROOT / "analyses" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reading_apart_counts_hits_like_a_brute_force_ranking(monkeypatch):
    """top-k hits equal sorting each row by hand, ties counted against the true concept."""
    import torch

    ra = _analysis("reading_apart", monkeypatch)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (200, 7), generator=g).float()  # many ties
    labels = torch.randint(0, 7, (200,), generator=g)
    for k in (1, 3):
        got = ra.topk_hits(scores, labels, k)
        for i in range(200):
            rank = 1 + sum(1 for j in range(7) if j != labels[i] and scores[i, j] >= scores[i, labels[i]])
            assert bool(got[i]) == (rank <= k)


def test_reading_apart_story_folder(tmp_path, monkeypatch):
    """Stories per <concept>.txt split on ---; a concept the corpus lacks is listed, not read; an
    empty or missing folder is a one-line exit."""
    ra = _analysis("reading_apart", monkeypatch)
    (tmp_path / "calm.txt").write_text("One.\n---\nTwo.\n---\n\n")
    (tmp_path / "zany.txt").write_text("Three.")
    texts, labels, unknown = ra.load_stories(tmp_path, ["sad", "calm"])
    assert texts == ["One.", "Two."] and labels == [1, 1] and unknown == ["zany"]
    with pytest.raises(SystemExit, match="no stories"):
        ra.load_stories(tmp_path, ["sad"])
    with pytest.raises(SystemExit, match="not a folder"):
        ra.load_stories(tmp_path / "nope", ["sad"])
    shipped = ROOT / "heldout" / "stories"  # the committed test set: 2 stories for every corpus concept
    import json

    from steerkit.corpus.text import avoid_hits, near_duplicates

    concepts = json.loads((ROOT / "corpora" / "manifest.json").read_text())["concepts"]
    names = [c["name"] for c in concepts]
    texts, labels, unknown = ra.load_stories(shipped, names)
    assert unknown == [] and sorted(set(labels)) == list(range(len(names))) and len(texts) == 2 * len(names)
    for text, c in zip(texts, labels, strict=True):  # no story names its own concept (the corpus's rule)
        assert avoid_hits(text, concepts[c].get("avoid", [])) == [], (names[c], text[:60])
    from steerkit.corpus import load as load_corpus

    corpus = [t.text for t in load_corpus(ROOT / "corpora").texts]  # apart: no story near any corpus text
    crossing = [(i, j) for i, j, _ in near_duplicates(corpus + texts) if i < len(corpus) <= j]
    assert crossing == []


def test_reading_apart_story_openings(monkeypatch):
    """A story's first k sentences end at . ! ? (with a closing quote or bracket); fewer sentences than
    k give the whole text."""
    ra = _analysis("reading_apart", monkeypatch)
    t = 'He said "Stop!" She ran. Then (quietly) it ended at 3.5 km.'
    assert ra.first_sentences(t, 1) == 'He said "Stop!"'
    assert ra.first_sentences(t, 2) == 'He said "Stop!" She ran.'
    assert ra.first_sentences(t, 3) == t and ra.first_sentences("no end", 1) == "no end"


def test_reading_apart_token_readings(monkeypatch):
    """Single tokens and the running reading against hand computation; and the running reading over a
    whole text is the pooled reading capture gives (mean_after:1 of a real tiny model)."""
    import torch

    ra = _analysis("reading_apart", monkeypatch)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(12, 5, generator=g)
    w = torch.randn(4, 5, generator=g)
    read = lambda x: x @ w.T  # noqa: E731
    got = ra.token_readings(h, read, label=2, skip=1, at=(1, 4, 11, 40))
    s = h[1:] @ w.T
    assert got["token_top1"] == pytest.approx(float((s.argmax(1) == 2).double().mean()))
    for t in (1, 4, 11):
        m = read(h[1 : 1 + t].mean(0, keepdim=True))[0]
        rank = 1 + int((m > m[2]).sum())
        assert got[f"run{t}_top1"] == float(rank == 1) and got[f"run{t}_top3"] == float(rank <= 3)
    assert "run40_top1" not in got  # longer than the text: not counted

    import common

    from steerkit.capture import capture, parse_pooling
    from steerkit.steering import token_states

    lm = common.tiny_lm()
    text = "The rain stopped, and she walked home slowly along the river."
    _, hs = token_states(lm, text, 2)
    pooled = capture(lm, [text], [2], pooling=parse_pooling("mean_after:1")).resid[2][0]
    torch.testing.assert_close(hs[1:].mean(0), pooled, rtol=1e-4, atol=1e-5)
