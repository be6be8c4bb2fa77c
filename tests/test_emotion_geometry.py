"""The pure geometry behind analyses/emotion_geometry.py (analyses/_geometry.py), checked against independent
computations: sklearn's PCA, numpy's corrcoef, a planted valence axis the pipeline must recover, and a
shuffled control it must not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "analyses"))
import _geometry as geo  # noqa: E402


def _labels(n_concepts: int, per: int, n_baseline: int = 0) -> geo.Labels:
    """per texts for each concept, then n_baseline unlabelled texts."""
    n = n_concepts * per + n_baseline
    pos = torch.zeros(n_concepts, n, dtype=torch.bool)
    for c in range(n_concepts):
        pos[c, c * per : (c + 1) * per] = True
    return geo.Labels([f"c{c}" for c in range(n_concepts)], pos, ~pos, torch.full((n,), -1, dtype=torch.long))


def _planted(n_concepts: int = 30, per: int = 12, hidden: int = 64, seed: int = 0) -> tuple:
    """Texts whose features carry each concept's valence along one axis, plus a concept-specific offset in
    random directions (about as long, so unit-normalising keeps the valence coordinate close to linear)
    and text noise: PC1 of the concept vectors must be that axis."""
    rng = np.random.default_rng(seed)
    valence = rng.uniform(-1, 1, n_concepts)
    axis = rng.normal(size=hidden)
    axis /= np.linalg.norm(axis)
    offsets = rng.normal(scale=2.0 / np.sqrt(hidden), size=(n_concepts, hidden))
    rows = [3.0 * valence[c] * axis + offsets[c] + rng.normal(scale=0.5 / np.sqrt(hidden), size=hidden)
            for c in range(n_concepts) for _ in range(per)]  # fmt: skip
    return np.array(rows) + 5.0, _labels(n_concepts, per), valence  # a common offset the method must remove


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    v = np.random.default_rng(1).normal(size=(20, 50))
    scores, evr, comps = geo.pca(v, k=4)
    ref = PCA(n_components=4, svd_solver="full").fit(v)
    np.testing.assert_allclose(evr, ref.explained_variance_ratio_, rtol=1e-10)
    ref_scores = ref.transform(v)
    signs = np.sign((scores * ref_scores).sum(0))
    np.testing.assert_allclose(scores, ref_scores * signs, atol=1e-10)
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T), np.eye(4), atol=1e-10)
    np.testing.assert_allclose(comps @ comps.T, np.eye(4), atol=1e-10)  # orthonormal
    assert (scores[np.abs(scores).argmax(0), range(4)] > 0).all()  # the sign rule


def test_correlations_match_numpy():
    rng = np.random.default_rng(2)
    x, ys = rng.normal(size=15), rng.normal(size=(6, 15))
    np.testing.assert_allclose(geo.pearson_rows(x, ys), [np.corrcoef(x, y)[0, 1] for y in ys], atol=1e-12)
    assert np.isnan(geo.pearson_rows(x, np.ones((1, 15))))[0]
    y = x + 0.3 * rng.normal(size=15)
    c = geo.correlate(x, y, n_perm=500, n_boot=500)
    assert c["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
    assert c["ci95"][0] < c["pearson_r"] < c["ci95"][1]
    assert c["perm_p"] == pytest.approx(1 / 501, abs=1e-4)  # no shuffle reaches a strong r
    null = geo.correlate(x, rng.normal(size=15), n_perm=500, n_boot=500)
    assert null["perm_p"] > 0.05


def test_planted_valence_axis_is_recovered_and_a_shuffled_control_is_not():
    a, labels, valence = _planted()
    for method, neutral in (("caa", None), ("centered", np.random.default_rng(3).normal(size=(10, 64)))):
        entry, v, scores, comps = geo.concept_geometry(a, labels, {"valence": valence}, method=method, neutral=neutral,
                                                       n_perm=500, n_boot=200)  # fmt: skip
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0)  # unit vectors
        assert abs(entry["valence"]["PC1"]["pearson_r"]) > 0.95, (method, entry["valence"])
        assert entry["valence"]["PC1"]["perm_p"] < 0.01
        assert entry["valence"]["ridge"]["r_cv"] > 0.9
    shuffled = np.random.default_rng(4).permutation(valence)
    entry, *_ = geo.concept_geometry(a, labels, {"valence": shuffled}, n_perm=500, n_boot=200)
    assert abs(entry["valence"]["PC1"]["pearson_r"]) < 0.5
    assert entry["valence"]["PC1"]["perm_p"] > 0.01


def test_unit_vectors_stop_magnitude_from_owning_pc1():
    """Concepts whose raw vectors differ mostly in length: raw PC1 follows the length, unit PC1 does not."""
    rng = np.random.default_rng(5)
    n_c, per, h = 24, 8, 32
    labels = _labels(n_c, per)
    dirs = rng.normal(size=(n_c, h))
    length = rng.uniform(0.5, 6.0, n_c)
    a = np.array([length[c] * dirs[c] / np.linalg.norm(dirs[c]) + 0.01 * rng.normal(size=h)
                  for c in range(n_c) for _ in range(per)])  # fmt: skip
    raw = geo.concept_vectors(a, labels, "caa", "raw")
    unit = geo.concept_vectors(a, labels, "caa", "unit")
    np.testing.assert_allclose(unit * np.linalg.norm(raw, axis=1, keepdims=True), raw, atol=1e-5)
    r_raw = geo.pearson_rows(np.linalg.norm(raw, axis=1), np.abs(geo.pca(raw)[0][:, :1].T))[0]
    r_unit = geo.pearson_rows(np.linalg.norm(raw, axis=1), np.abs(geo.pca(unit)[0][:, :1].T))[0]
    assert abs(r_raw) > abs(r_unit)
    with pytest.raises(ValueError, match="norm"):
        geo.concept_vectors(a, labels, "caa", "scaled")  # type: ignore[arg-type]


def test_restrict_drops_the_other_concepts_and_their_texts():
    labels = _labels(3, 2, n_baseline=1)  # texts 0-1 c0, 2-3 c1, 4-5 c2, 6 baseline
    sub, idx = labels.restrict({"c0", "c2"})
    assert sub.names == ["c0", "c2"] and idx.tolist() == [0, 1, 4, 5, 6]
    assert sub.pos.tolist() == [[True, True, False, False, False], [False, False, True, True, False]]
    assert torch.equal(sub.neg, ~sub.pos) and len(sub.scenario) == 5


def test_lexical_features_go_through_the_same_path():
    """TF-IDF of texts whose wording follows a planted valence: the same concept_geometry recovers it."""
    rng = np.random.default_rng(6)
    valence = np.linspace(-1, 1, 12)
    texts = []
    for v in valence:
        for _ in range(6):
            n_pos = int(round(10 * (v + 1)))
            words = (
                ["bright"] * n_pos + ["grim"] * (20 - n_pos) + list(rng.choice(["the", "a", "walk", "door", "tea"], 10))
            )
            texts.append(" ".join(rng.permutation(words)))
    labels = _labels(12, 6)
    for kind in ("tfidf", "lsa-5"):
        x, xn = geo.lexical_features(texts, ["the door", "a walk to the door"], kind)
        assert x.shape[0] == len(texts) and xn.shape == (2, x.shape[1])
        entry, *_ = geo.concept_geometry(x, labels, {"valence": valence}, n_perm=200, n_boot=100)
        assert abs(entry["valence"]["PC1"]["pearson_r"]) > 0.95, kind
    with pytest.raises(ValueError, match="lexical kind"):
        geo.lexical_features(texts, [], "bow")


def test_story_properties_and_eta_squared():
    p = geo.story_properties('I opened my door. "We are late," she said to me.')
    assert p["n_words"] == 11
    assert p["first_person"] == pytest.approx(3 / 8)  # narration: i opened my door she said to me
    assert p["third_person"] == pytest.approx(1 / 8)
    assert p["dialogue"] == pytest.approx(
        len('"We are late,"') / len('I opened my door. "We are late," she said to me.')
    )
    score = np.array([1.0, 1.1, 0.9, 5.0, 5.2, 4.8])
    e = geo.eta_squared(score, ["a", "a", "a", "b", "b", "b"], n_perm=200)
    grand = score.mean()
    between = 3 * ((score[:3].mean() - grand) ** 2 + (score[3:].mean() - grand) ** 2)
    assert e["eta2"] == pytest.approx(between / ((score - grand) ** 2).sum(), abs=1e-4)
    assert e["perm_p"] < 0.2  # 2 of the 20 distinct splits are as extreme


def test_closed_form_ridge_matches_sklearn_nested_loo():
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import LeaveOneOut, cross_val_predict

    rng = np.random.default_rng(7)
    for f in (8, 60):  # fewer and more features than concepts
        v = rng.normal(size=(25, f))
        y = v @ rng.normal(size=f) / np.sqrt(f) + 0.5 * rng.normal(size=25)
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 3, 13)), v, y, cv=LeaveOneOut())
        got = geo.ridge_cv(v, y)
        assert got["r_cv"] == pytest.approx(np.corrcoef(pred, y)[0, 1], abs=1e-4)
        assert got["r2_cv"] == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum(), abs=1e-4)


def test_rsa_and_split_half():
    a, labels, valence = _planted()
    v = geo.concept_vectors(a, labels)
    assert geo.rsa(v, v) == pytest.approx(1.0)
    assert geo.rsa(v, 3.0 * v @ np.linalg.qr(np.random.default_rng(8).normal(size=(64, 64)))[0]) == pytest.approx(1.0)
    assert abs(geo.rsa(v, np.random.default_rng(9).normal(size=v.shape))) < 0.2
    sh = geo.split_half(a, labels, {"valence": valence})
    assert sh["pc1_halves_abs_r"] > 0.95 and min(sh["pc1_valence_abs_r"]) > 0.9 and sh["mean_cosine_halves"] > 0.8
    noise = np.random.default_rng(10).normal(size=a.shape)  # no concept structure: halves disagree
    sh = geo.split_half(noise, labels, {"valence": valence})
    assert sh["pc1_halves_abs_r"] < 0.6 and sh["mean_cosine_halves"] < 0.3
