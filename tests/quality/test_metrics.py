"""Oracles for the vector-level quality metrics: numpy SVD, sklearn Ridge + r2_score and PCA,
scipy correlations, brute-force loops, and planted structure (rank-1 concepts, mixtures,
single-neuron directions, mislabelled stories)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from steerkit.quality import metrics as qm


def _membership(counts: list[int]) -> torch.Tensor:
    """(C, N) bool, concept c owning a contiguous block of counts[c] texts."""
    lab = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return lab.unsqueeze(0) == torch.arange(len(counts)).unsqueeze(1)


def _garbage_padding(p: qm.Padded) -> torch.Tensor:
    """Padding rows filled with large random values: a metric that reads them changes."""
    return torch.where(p.mask.unsqueeze(-1), p.x, 1e3 * torch.randn_like(p.x))


def test_group_means_and_diff_of_means_match_loop():
    a = torch.randn(30, 3, 4)
    pos = torch.rand(5, 30) < 0.3
    pos[:, 0] = False
    pos[0] = False
    pos[0, 1] = True
    neg = ~pos & (torch.rand(5, 30) < 0.7)
    an = a.numpy()
    gm = qm.group_means(a, pos)
    dm_c = qm.diff_of_means(a, pos)
    dm_n = qm.diff_of_means(a, pos, neg)
    assert dm_c.shape == (5, 3, 4)
    for c in range(5):
        p, q, n = pos[c].numpy(), neg[c].numpy(), ~pos[c].numpy()
        np.testing.assert_allclose(gm[c], an[p].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dm_c[c], an[p].mean(0) - an[n].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dm_n[c], an[p].mean(0) - an[q].mean(0), rtol=1e-4, atol=1e-5)
    assert torch.isnan(qm.group_means(a, torch.zeros(2, 30, dtype=torch.bool))).all()
    with pytest.raises(ValueError, match="both a positive and a negative"):
        qm.diff_of_means(a, pos, pos)
    with pytest.raises(ValueError, match="concepts, 30"):
        qm.diff_of_means(a, pos[:, :10])


def test_pad_groups_gathers_each_concept_in_text_order():
    a = torch.randn(25, 6)
    m = torch.rand(4, 25) < 0.4
    m[2] = False
    p = qm.pad_groups(a, m)
    assert p.x.shape == (4, int(m.sum(1).max()), 6)
    for c in range(4):
        idx = m[c].nonzero().squeeze(1)
        k = idx.numel()
        assert p.mask[c, :k].all() and not p.mask[c, k:].any()
        assert torch.equal(p.index[c, :k], idx) and (p.index[c, k:] == -1).all()
        assert torch.equal(p.x[c, :k], a[idx]) and (p.x[c, k:] == 0).all()


@pytest.mark.parametrize("hidden", [32, 5])  # P < H (P x P Gram) and P > H (H x H Gram)
def test_rank_stats_match_numpy_svd_and_ignore_padding(hidden):
    counts = [2, 9, 4, 7, 3]
    a = torch.randn(sum(counts), hidden) * torch.linspace(0.2, 3, hidden)
    p = qm.pad_groups(a, _membership(counts))
    r = qm.rank_stats(_garbage_padding(p), p.mask)
    for c, n in enumerate(counts):
        xc = a[p.index[c, :n]].double().numpy()
        s = np.linalg.svd(xc - xc.mean(0), compute_uv=False)
        np.testing.assert_allclose(r.first_pc_variance_ratio[c], s[0] ** 2 / (s**2).sum(), rtol=1e-4)
        q = s / s.sum()
        q = q[q > 0]
        np.testing.assert_allclose(r.effective_rank[c], np.exp(-(q * np.log(q)).sum()), rtol=1e-4)
        np.testing.assert_allclose(r.singular_values[c, : len(s)], s, rtol=1e-4, atol=1e-4 * s[0])
        assert (r.singular_values[c, n - 1 :] == 0).all()  # centred n points: rank <= n - 1
        alone = qm.rank_stats(a[p.index[c, :n]].unsqueeze(0), torch.ones(1, n, dtype=torch.bool))
        np.testing.assert_allclose(alone.effective_rank[0], r.effective_rank[c], rtol=1e-5)
        np.testing.assert_allclose(alone.first_pc_variance_ratio[0], r.first_pc_variance_ratio[c], rtol=1e-5)


def test_rank_planted_rank1_vs_isotropic_and_degenerate():
    h, n = 64, 12
    u = torch.randn(h)
    rank1 = torch.randn(n, 1) * u + 0.01 * torch.randn(n, h)
    iso = torch.randn(n, h)
    one = torch.zeros(n, h)
    one[0] = torch.randn(h)
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[2, 1:] = False
    r = qm.rank_stats(torch.stack([rank1, iso, one]), mask)
    assert r.first_pc_variance_ratio[0] > 0.95 and r.effective_rank[0] < 1.5
    assert r.first_pc_variance_ratio[1] < 0.3 and r.effective_rank[1] > 8
    assert torch.isnan(r.first_pc_variance_ratio[2]) and torch.isnan(r.effective_rank[2])


def test_rank_null_matches_numpy_on_the_same_draws_and_separates_a_planted_axis():
    n, h, size = 40, 24, 7
    acts = torch.randn(n, h)
    got = qm.rank_null(acts, size, n_draws=25, seed=3)
    g = torch.Generator().manual_seed(3)
    for d in range(25):
        x = acts[torch.randperm(n, generator=g)[:size]].double().numpy()
        s = np.linalg.svd(x - x.mean(0), compute_uv=False)
        assert abs(got[d].item() - s[0] ** 2 / (s**2).sum()) < 1e-5
    # positives that vary along one axis stand above the null of the corpus they sit in
    u = torch.randn(h)
    planted = torch.randn(size, 1) * 3 * u + 0.3 * torch.randn(size, h)
    ratio = qm.rank_stats(planted[None], torch.ones(1, size, dtype=torch.bool)).first_pc_variance_ratio[0]
    assert ratio > torch.quantile(got.double(), 0.95)
    with pytest.raises(ValueError, match="size must lie in"):
        qm.rank_null(acts, 1)


def _planted_stories(c: int = 5, per: int = 6, h: int = 48):
    centres = 2.0 * torch.randn(c, h)
    lab = torch.arange(c).repeat_interleave(per)
    a = centres[lab] + 0.7 * torch.randn(lab.numel(), h)
    member = lab.unsqueeze(0) == torch.arange(c).unsqueeze(1)
    return a, lab, member, centres


def test_story_agreement_matches_loop_and_finds_mislabelled_story():
    a, lab, member, centres = _planted_stories()
    intruder = 4 * 6 + 2  # a story of concept 4 ...
    member[0, intruder], member[4, intruder] = True, False  # ... filed under concept 0
    member[3, 3 * 6 :] = False
    member[3, 3 * 6] = True  # concept 3 has a single positive
    neg = ~member
    d = qm.unit_rows(qm.diff_of_means(a, member))
    m = qm.group_means(a, neg)
    p = qm.pad_groups(a, member)
    sa = qm.story_agreement(_garbage_padding(p), p.mask, d * 7.0, m)  # directions need not be unit
    an, dn, mn = a.numpy(), d.numpy(), m.numpy()
    for c in range(5):
        idx = p.index[c][p.mask[c]].numpy()
        diff = an[idx] - mn[c]
        cos = diff @ dn[c] / np.linalg.norm(diff, axis=1)
        np.testing.assert_allclose(sa.cos[c, : len(idx)], cos, rtol=1e-4, atol=1e-5)
        assert torch.isnan(sa.cos[c, len(idx) :]).all()
        np.testing.assert_allclose(sa.mean[c], cos.mean(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sa.min[c], cos.min(), rtol=1e-4, atol=1e-5)
        order = np.argsort(cos)[:2]
        assert sa.lowest[c, : len(order)].tolist() == order.tolist()
    assert p.index[0, sa.lowest[0, 0]] == intruder
    assert sa.lowest_cos[0, 0] < sa.lowest_cos[0, 1] - 0.3
    assert sa.lowest[3].tolist() == [0, -1] and torch.isnan(sa.lowest_cos[3, 1])


def test_neuron_alignment_matches_brute_force_and_finds_planted_neuron():
    h, i = 32, 50
    w = torch.randn(h, i) * torch.rand(i) * 3
    d = torch.randn(6, h)
    d[2] = -w[:, 17] / w[:, 17].norm() + 0.01 * torch.randn(h)
    na = qm.neuron_alignment(d, w)
    wn, dn = w.numpy(), d.numpy()
    for c in range(6):
        best, best_j = -1.0, -1
        for j in range(i):
            cos = dn[c] @ wn[:, j] / np.linalg.norm(dn[c]) / np.linalg.norm(wn[:, j])
            if abs(cos) > best:
                best, best_j, signed = abs(cos), j, cos
        assert na.neuron[c] == best_j
        np.testing.assert_allclose(na.abs_cos[c], best, rtol=1e-5)
        np.testing.assert_allclose(na.cos[c], signed, rtol=1e-5)
    assert na.neuron[2] == 17 and na.abs_cos[2] > 0.99 and na.cos[2] < 0
    with pytest.raises(ValueError, match="hidden=32"):
        qm.neuron_alignment(d, w.T)


def test_nearest_concepts_match_brute_force_and_exclude_self():
    d = torch.randn(9, 20)
    d[4] = d[1] + 0.1 * torch.randn(20)
    nb = qm.nearest_concepts(d, k=5)
    dn = d.numpy() / np.linalg.norm(d.numpy(), axis=1, keepdims=True)
    for c in range(9):
        others = [(dn[c] @ dn[j], j) for j in range(9) if j != c]
        best = sorted(others, reverse=True)[:5]
        assert nb.index[c].tolist() == [j for _, j in best]
        np.testing.assert_allclose(nb.cos[c], [v for v, _ in best], rtol=1e-5, atol=1e-6)
    assert nb.index[1, 0] == 4 and nb.index[4, 0] == 1
    assert qm.nearest_concepts(d[:3], k=5).index.shape == (3, 2)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize(("c", "h", "lam"), [(8, 40, 0.01), (12, 8, 0.5)])  # C > H too
def test_redundancy_matches_sklearn_ridge(fit_intercept, c, h, lam):
    d = torch.randn(c, h) + 0.3
    red = qm.redundancy(d, lam=lam, fit_intercept=fit_intercept)
    dn = d.double().numpy()
    dn /= np.linalg.norm(dn, axis=1, keepdims=True)
    for k in range(c):
        others = [j for j in range(c) if j != k]
        x, y = dn[others].T, dn[k]
        model = Ridge(alpha=lam, fit_intercept=fit_intercept).fit(x, y)
        np.testing.assert_allclose(red.coef[k, others], model.coef_, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(red.r2[k], r2_score(y, model.predict(x)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(red.intercept[k], model.intercept_, atol=1e-5)
    assert (red.coef.diagonal() == 0).all()


def test_redundancy_planted_mixture_and_top_coefficients():
    d = torch.randn(10, 256)
    d[5] = 0.5 * d[1] + 0.5 * d[7]
    red = qm.redundancy(d)
    assert red.r2[5] > 0.99 and red.coef[5, 1] > 0.3 and red.coef[5, 7] > 0.3
    assert red.r2[3] < 0.2
    idx, val = qm.top_coefficients(red.coef, k=5)
    assert set(idx[5, :2].tolist()) == {1, 7} and (val[5, :2] > 0).all()
    assert torch.equal(val, red.coef.gather(1, idx)) and not (idx == torch.arange(10).unsqueeze(1)).any()
    assert (val.abs()[:, :-1] >= val.abs()[:, 1:]).all()
    with pytest.raises(ValueError, match="lam must be > 0"):
        qm.redundancy(d, lam=0.0)


def test_geometry_matches_sklearn_pca_scipy_and_planted_axes():
    c, h = 24, 50
    valence, arousal = torch.rand(c) * 2 - 1, torch.rand(c)
    basis = torch.linalg.qr(torch.randn(h, 3)).Q.T  # 3 orthonormal directions
    d = 10 * basis[2] + 2.0 * valence.unsqueeze(1) * basis[0] + 1.0 * arousal.unsqueeze(1) * basis[1]
    d = d + 0.02 * torch.randn(c, h)
    v_nan = valence.clone()
    v_nan[0] = float("nan")
    geo = qm.concept_geometry(d, {"valence": v_nan, "arousal": arousal})
    dn = d.double().numpy()
    dn /= np.linalg.norm(dn, axis=1, keepdims=True)
    pca = PCA(n_components=2).fit(dn)
    ref = pca.transform(dn)
    sign = np.sign((ref * geo.scores.numpy()).sum(0))
    np.testing.assert_allclose(geo.scores.numpy(), ref * sign, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(geo.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-4)
    comp = geo.components.numpy()
    assert (comp[np.arange(2), np.abs(comp).argmax(1)] > 0).all()  # the documented sign convention
    by = {(r.pc, r.variable): r for r in geo.correlations}
    assert len(by) == 4 and by[(1, "valence")].n == c - 1 and by[(1, "arousal")].n == c
    for (pc, name), r in by.items():
        x = geo.scores[:, pc - 1].double().numpy()
        y = (v_nan if name == "valence" else arousal).double().numpy()
        ok = np.isfinite(y)
        pr, sr = stats.pearsonr(x[ok], y[ok]), stats.spearmanr(x[ok], y[ok])
        np.testing.assert_allclose([r.pearson_r, r.pearson_p, r.spearman_r, r.spearman_p], [*pr, *sr], rtol=1e-6)
    assert abs(by[(1, "valence")].pearson_r) > 0.95 and abs(by[(2, "arousal")].pearson_r) > 0.9
    assert abs(by[(1, "arousal")].pearson_r) < 0.5


def test_inputs_from_numpy_float64_and_any_device():
    a, lab, member, _ = _planted_stories()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ref = qm.redundancy(qm.diff_of_means(a, member))
    for dev in devices:
        ad = a.double().to(dev)
        out = qm.redundancy(qm.diff_of_means(ad, member.to(dev)))
        torch.testing.assert_close(out.r2, ref.r2)
        assert out.r2.device.type == "cpu" and out.r2.dtype == torch.float32
    out = qm.neuron_alignment(a.double().numpy()[:3], a.double().numpy()[:10].T)
    assert out.neuron.tolist() == [0, 1, 2]
