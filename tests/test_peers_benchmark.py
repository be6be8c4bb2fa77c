"""benchmarks/peers.py's pairing and fold logic (the peer libraries themselves run in their own
environment, made by that script, so they are never imported here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_fold_pairs_each_training_story_with_another_concept():
    peers, worker = _load("peers"), _load("peers_worker")
    from steerkit.quality.heldout import stratified_folds

    labels = [c for c in range(7) for _ in range(3 + c % 3)]  # 7 concepts, 3-5 stories each
    texts = [f"story {i} of concept {c}" for i, c in enumerate(labels)]
    for k in (2, 3):
        folds = stratified_folds(torch.tensor(labels), k, seed=0).tolist()
        job = {"texts": texts, "labels": labels, "negative_of": peers.negatives(labels, folds, seed=0)}
        for f in [None, *range(k)]:
            keep = [True] * len(texts) if f is None else [fo != f for fo in folds]
            for c in range(7):
                pairs = worker.pairs_for(job, c, keep)
                own = [texts[i] for i, lab in enumerate(labels) if lab == c and keep[i]]
                assert [p for p, _ in pairs] == own  # every training story of c, in order
                for _, neg in pairs:
                    j = texts.index(neg)
                    assert labels[j] != c and keep[j]  # another concept's story, also in training


def test_negatives_are_seeded():
    peers = _load("peers")
    labels, folds = [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]
    assert peers.negatives(labels, folds, seed=0) == peers.negatives(labels, folds, seed=0)
