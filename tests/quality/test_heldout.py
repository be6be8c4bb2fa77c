"""Oracles for the held-out readout: an independent numpy fold loop, planted separable clusters
(~100% top-1), pure noise (~chance), stratified seeded folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerkit.quality.heldout import held_out_readout, stratified_folds


def _clusters(c: int, per: int, h: int, spread: float, n_unlabelled: int = 0):
    centres = spread * torch.randn(c, h)
    lab = torch.cat([torch.arange(c).repeat_interleave(per), torch.full((n_unlabelled,), -1)])
    a = centres[lab.clamp_min(0)] * (lab >= 0).unsqueeze(1) + torch.randn(lab.numel(), h)
    return a, lab


def _numpy_readout(a: np.ndarray, lab: np.ndarray, fold: np.ndarray, c: int):
    pred, top3 = np.full(len(lab), -1), np.zeros(len(lab), dtype=bool)
    for f in range(fold.max() + 1):
        test, train = fold == f, fold != f
        mu = a[train].mean(0)
        v = np.full((c, a.shape[1]), np.nan)
        for k in range(c):
            pos, neg = train & (lab == k), train & (lab != k)
            if pos.any():
                diff = a[pos].mean(0) - a[neg].mean(0)
                v[k] = diff / np.linalg.norm(diff)
        for n in np.flatnonzero(test):
            s = np.nan_to_num(v @ (a[n] - mu), nan=-np.inf)
            order = np.argsort(-s, kind="stable")
            pred[n], top3[n] = order[0], lab[n] in order[:3]
    return pred, top3


def test_readout_matches_numpy_loop():
    a, lab = _clusters(c=6, per=9, h=16, spread=0.6, n_unlabelled=7)
    lab[3] = 5  # uneven classes
    r = held_out_readout(a, lab, k_folds=4, seed=3)
    pred, top3 = _numpy_readout(a.double().numpy(), lab.numpy(), r.fold.numpy(), 6)
    assert r.predicted.tolist() == pred.tolist()
    labelled = lab.numpy() >= 0
    for k in range(6):
        sel = lab.numpy() == k
        np.testing.assert_allclose(r.top1[k], (pred[sel] == k).mean(), rtol=1e-6)
        np.testing.assert_allclose(r.top3[k], top3[sel].mean(), rtol=1e-6)
    np.testing.assert_allclose(r.top1_overall, (pred == lab.numpy())[labelled].mean())
    np.testing.assert_allclose(r.top3_overall, top3[labelled].mean())
    assert 0.2 < r.top1_overall < 1.0  # overlapping clusters: a test that could go either way
    assert r.n_texts.tolist() == np.bincount(lab.numpy()[labelled], minlength=6).tolist()


def test_readout_separated_clusters_are_read_perfectly():
    a, lab = _clusters(c=8, per=10, h=64, spread=3.0, n_unlabelled=20)
    r = held_out_readout(a, lab)
    assert r.top1_overall == 1.0 and r.top3_overall == 1.0 and (r.top1 == 1).all()
    assert (r.predicted[lab < 0] == -1).all() and (r.fold[lab < 0] == -1).all()


def test_readout_on_noise_is_near_chance():
    a, lab = _clusters(c=10, per=60, h=32, spread=0.0)
    r = held_out_readout(a, lab, seed=1)
    assert 0.04 < r.top1_overall < 0.17  # chance 0.10, binomial sd 0.012
    assert 0.22 < r.top3_overall < 0.38  # chance 0.30


def test_concept_with_fewer_texts_than_folds_is_never_predicted_in_its_fold():
    a, lab = _clusters(c=4, per=8, h=16, spread=3.0)
    lab[0] = 3  # concept 0 keeps 7 texts
    lab[1:8] = torch.tensor([0, 3, 3, 3, 3, 3, 3])  # ... now 1 text
    r = held_out_readout(a, lab, k_folds=5)
    assert r.n_texts[0] == 1 and r.top1[0] == 0
    own = r.fold[1]
    assert (r.predicted[r.fold == own] != 0).all()


def test_stratified_folds_are_balanced_and_seeded():
    lab = torch.tensor([0] * 11 + [1] * 3 + [2] * 7 + [-1] * 4)
    f = stratified_folds(lab, 5, seed=0)
    assert (f[lab == -1] == -1).all()
    for k in range(3):
        counts = torch.bincount(f[lab == k], minlength=5)
        assert counts.max() - counts.min() <= 1
    sizes = torch.bincount(f[lab >= 0], minlength=5)
    assert sizes.max() - sizes.min() <= 1
    assert torch.equal(f, stratified_folds(lab, 5, seed=0))
    assert not torch.equal(f, stratified_folds(lab, 5, seed=1))


def test_readout_rejects_bad_arguments():
    a, lab = _clusters(c=3, per=4, h=8, spread=1.0)
    with pytest.raises(ValueError, match="k_folds"):
        held_out_readout(a, lab, k_folds=1)
    with pytest.raises(ValueError, match="labels must be"):
        held_out_readout(a, lab, n_concepts=2)


def test_vector_fn_caa_reproduces_default():
    from steerkit.vectors import methods

    g = torch.Generator().manual_seed(5)
    c, per, h = 6, 7, 20
    centers = torch.randn(c, h, generator=g) * 2
    labels = torch.arange(c).repeat_interleave(per)
    acts = centers[labels] + torch.randn(c * per, h, generator=g)
    labels = torch.cat([labels, torch.full((5,), -1)])
    acts = torch.cat([acts, torch.randn(5, h, generator=g)])
    pos = torch.stack([labels == k for k in range(c)])
    default = held_out_readout(acts, labels, k_folds=4, seed=1)
    custom = held_out_readout(
        acts,
        labels,
        k_folds=4,
        seed=1,
        vector_fn=lambda train: methods.caa(methods.MethodInputs(acts, pos & train, ~pos & train))[0],
    )
    assert torch.equal(default.predicted, custom.predicted)
    assert default.top1_overall == custom.top1_overall
    # a useless method (random vectors) reads at about chance: the function is really used
    rand = held_out_readout(
        acts,
        labels,
        k_folds=4,
        seed=1,
        vector_fn=lambda train: torch.randn(c, h, generator=torch.Generator().manual_seed(0)),
    )
    assert rand.top1_overall < default.top1_overall - 0.3


def test_grouped_folds_keep_groups_whole_and_equal_ungrouped_for_singletons():
    lab = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 2, 1])
    plain = stratified_folds(lab, 3, seed=4)
    assert torch.equal(stratified_folds(lab, 3, seed=4, groups=torch.arange(len(lab))), plain)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # 0, 1: paired scenarios
    fold = stratified_folds(lab, 3, seed=4, groups=groups)
    assert fold[9] == -1 and (fold[lab >= 0] >= 0).all()  # unlabelled: always training
    for g in groups.unique():
        f = fold[(groups == g) & (lab >= 0)]
        assert (f == f[0]).all()  # never split between training and test
    per_fold = [len(groups[(fold == f)].unique()) for f in range(3)]
    assert sorted(per_fold) == [4, 4, 5]  # 13 labelled groups dealt round robin
    with pytest.raises(ValueError, match="groups must be"):
        stratified_folds(lab, 3, groups=torch.zeros(3))
    with pytest.raises(ValueError, match="at most the number of labelled story groups"):
        stratified_folds(lab, 3, groups=(torch.arange(len(lab)) >= 9).long())  # two groups, three folds


def test_readout_with_groups_uses_their_folds():
    a, lab = _clusters(c=5, per=8, h=16, spread=0.8, n_unlabelled=4)
    groups = torch.arange(len(lab)) // 2  # pairs of texts
    r = held_out_readout(a, lab, k_folds=4, seed=2, groups=groups)
    assert torch.equal(r.fold, stratified_folds(lab, 4, seed=2, groups=groups))
    pred, _ = _numpy_readout(a.double().numpy(), lab.numpy(), r.fold.numpy(), 5)
    assert r.predicted.tolist() == pred.tolist()
