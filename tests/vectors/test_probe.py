"""The readout probe (issue 28): its two kinds equal scikit-learn's shrinkage LDA and logistic
regression, beat diff-of-means where
the noise is anisotropic, round-trips through the readout format (old files read as before), is refitted
inside each fold of the held-out readout, and is what `steerkit read` / `sk.read` use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from steerkit.cli import main
from steerkit.errors import ReadoutError
from steerkit.vectors import ConceptVectors
from steerkit.vectors.methods import MethodInputs, caa
from steerkit.vectors.probe import Probe, fit_lda, fit_probe, fit_readout_probe, grouped_splits, story_groups

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"


def _planted(n_per: int = 60, seed: int = 0, h: int = 24, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """k classes; features on very different scales (standardisation matters)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per)
    means = torch.randn(k, h, generator=g)
    scales = torch.logspace(-2, 2, h)
    a = (means[y] + 1.5 * torch.randn(len(y), h, generator=g)) * scales
    return a, y


def _pos(y: torch.Tensor, k: int) -> torch.Tensor:
    pos = torch.zeros(k, len(y), dtype=torch.bool)
    pos[y, torch.arange(len(y))] = True
    return pos


def _sklearn(a: np.ndarray, y: np.ndarray, c: float, w: np.ndarray | None = None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(a)
    clf = LogisticRegression(C=c, tol=1e-10, max_iter=20000).fit(sc.transform(a), y, sample_weight=w)
    return sc, clf


def test_probe_equals_sklearn_logistic_regression():
    a, y = _planted()
    probe = fit_probe(a, _pos(y, 4), cs=(0.05,))
    sc, clf = _sklearn(a.double().numpy(), y.numpy(), 0.05)
    assert probe.c_reg == 0.05 and probe.cv == {}
    np.testing.assert_allclose(probe.mean.numpy(), sc.mean_, rtol=1e-5, atol=1e-5 * np.abs(sc.mean_).max())
    np.testing.assert_allclose(probe.scale.numpy(), sc.scale_, rtol=1e-5)
    scale = np.abs(clf.coef_).max()
    np.testing.assert_allclose(probe.weight.numpy(), clf.coef_, atol=5e-3 * scale)
    np.testing.assert_allclose(probe.bias.numpy(), clf.intercept_, atol=5e-3 * scale)
    test, _ = _planted(seed=1)
    ref = clf.predict_log_proba(sc.transform(test.double().numpy()))
    got = probe.log_probs(test).numpy()
    np.testing.assert_allclose(got, ref, atol=5e-3)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_lda_equals_sklearn_shrinkage_lda():
    """fit_lda = StandardScaler + LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"): the same
    coefficients, intercepts and posterior log-probabilities, here with fewer texts per class than
    features (where the shrinkage matters) and a text of two concepts (a row of each)."""
    from sklearn.covariance import ledoit_wolf_shrinkage
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.preprocessing import StandardScaler

    from steerkit.vectors.probe import ledoit_wolf_shrinkage as lw

    a, y = _planted(n_per=12, h=30, k=5)
    pos = _pos(y, 5)
    pos[2, 0] = True  # text 0 is also concept 2
    probe = fit_lda(a, pos, calibrate=False)
    sc = StandardScaler().fit(a.double().numpy())  # the standardisation: every text once
    rows = np.concatenate([[0], np.arange(len(y))])
    yy = np.concatenate([[2], y.numpy()])
    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(sc.transform(a.double().numpy()[rows]), yy)
    np.testing.assert_allclose(probe.weight.numpy(), clf.coef_, atol=1e-4 * np.abs(clf.coef_).max())
    np.testing.assert_allclose(probe.bias.numpy(), clf.intercept_, atol=1e-4 * np.abs(clf.intercept_).max())
    test, _ = _planted(n_per=12, h=30, k=5, seed=1)
    ref = clf.predict_log_proba(sc.transform(test.double().numpy()))
    np.testing.assert_allclose(probe.log_probs(test).numpy(), ref, atol=1e-3)
    assert probe.kind == "shrinkage_lda" and 0 < probe.info["shrinkage_mean"] < 1
    x = torch.randn(9, 40, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.1, 5, 40)
    assert lw(x) == pytest.approx(ledoit_wolf_shrinkage(x.double().numpy()), rel=1e-9)


def test_lda_temperature_maximises_grouped_held_out_likelihood():
    """The calibrated probe is the uncalibrated one divided by T, T the maximiser of the held-out
    log-likelihood over the grouped folds (oracle: sklearn's LDA on each fold, a fine grid of T);
    calibration changes no ranking and makes the held-out log-likelihood no worse than at T = 1."""
    from scipy.special import log_softmax
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    a, y = _planted(n_per=12, h=30, k=5, seed=2)
    pos = _pos(y, 5)
    groups = torch.arange(len(y)) // 3
    raw = fit_lda(a, pos, groups, calibrate=False)
    cal = fit_lda(a, pos, groups)
    temp = cal.info["temperature"]
    assert torch.allclose(cal.weight * temp, raw.weight, rtol=1e-4, atol=1e-6)
    assert torch.equal(cal.logits(a).argsort(1), raw.logits(a).argsort(1))
    mean, scale = a.double().mean(0), a.double().std(0, correction=0)
    z = ((a.double() - mean) / scale).numpy()
    held = np.zeros((len(y), 5))
    for test in grouped_splits(groups, 3):
        t = test.numpy()
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(z[~t], y.numpy()[~t])
        held[t] = clf.decision_function(z[t])
    grid = np.exp(np.linspace(np.log(0.05), np.log(400), 4001))
    ll = np.array([log_softmax(held / tt, axis=1)[np.arange(len(y)), y.numpy()].sum() for tt in grid])
    assert temp == pytest.approx(grid[int(np.argmax(ll))], rel=5e-3)
    assert ll.max() >= ll[int(np.argmin(np.abs(grid - 1.0)))]
    assert "temperature" not in fit_lda(a, pos, torch.zeros(len(y), dtype=torch.long)).info  # one group: no CV


def test_lda_concept_without_texts_is_never_read():
    a, y = _planted(n_per=10)
    pos = _pos(y, 4)
    pos = torch.cat([pos, torch.zeros(1, pos.shape[1], dtype=torch.bool)])  # a fifth concept, no texts
    p = fit_lda(a, pos)
    assert p.bias[4] == -math.inf and not p.weight[4].any()
    assert (p.log_probs(a).argmax(1) != 4).all() and torch.isfinite(p.log_probs(a)[:, :4]).all()
    with pytest.raises(ValueError, match="probe must be one of lda, logistic"):
        fit_readout_probe(a, pos, kind="svm")


def test_multi_label_text_is_rows_of_weight_one_over_k():
    """A text with two concepts = two rows of weight 1/2 (sklearn with sample weights)."""
    a, y = _planted(n_per=20)
    pos = _pos(y, 4)
    pos[1, 0] = True  # text 0 is also concept 1
    probe = fit_probe(a, pos, cs=(0.1,))
    rows = np.concatenate([[0], np.arange(len(y))])
    yy = np.concatenate([[1], y.numpy()])
    w = np.ones(len(rows))
    w[:2] = 0.5
    sc, clf = _sklearn(a.double().numpy(), y.numpy(), 0.1)  # the scaler: all texts once
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=0.1, tol=1e-10, max_iter=20000)
    clf.fit(sc.transform(a.double().numpy()[rows]), yy, sample_weight=w)
    np.testing.assert_allclose(probe.weight.numpy(), clf.coef_, atol=5e-3 * np.abs(clf.coef_).max())


def test_c_is_chosen_by_grouped_cv_as_sklearn_scores_it():
    """The CV scores equal sklearn's held-out mean log-likelihood over the same grouped folds, and the
    chosen C is their argmax."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    a, y = _planted(n_per=30, seed=3)
    groups = torch.arange(len(y)) // 2  # pairs of texts share a group
    cs = (0.001, 0.01, 0.1)
    probe = fit_probe(a, _pos(y, 4), groups, cs=cs, n_splits=3)
    z = StandardScaler().fit_transform(a.double().numpy())
    want = {}
    for c in cs:
        ll = 0.0
        for test in grouped_splits(groups, 3):
            t = test.numpy()
            clf = LogisticRegression(C=c, tol=1e-10, max_iter=20000).fit(z[~t], y.numpy()[~t])
            ll += clf.predict_log_proba(z[t])[np.arange(t.sum()), y.numpy()[t]].sum()
        want[f"{c:g}"] = ll / len(y)
    assert set(probe.cv) == set(want)
    for k, v in want.items():
        assert probe.cv[k] == pytest.approx(v, abs=2e-3)
    assert probe.c_reg == float(max(want, key=lambda k: want[k]))


def test_grouped_splits_keep_groups_whole_and_story_groups():
    groups = torch.tensor([5, 5, 1, 2, 2, 2, 7, 1, 9])
    folds = grouped_splits(groups, 3)
    assert torch.stack(folds).sum(0).tolist() == [1] * 9  # a partition
    for f in folds:
        for g in groups.unique():
            inside = f[groups == g]
            assert inside.all() or not inside.any()
    g = story_groups(["a", "b", "a", "c", "d"], torch.tensor([-1, 0, -1, 0, 1]))
    assert g[0] == g[2] and g[1] == g[3] and len({int(g[0]), int(g[1]), int(g[4])}) == 3


def _anisotropic(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes differ by 3 along loud dims (noise std 10) and by 0.3 along quiet ones (std 0.05):
    the mean difference points at the loud dims, the signal is in the quiet ones."""
    g = torch.Generator().manual_seed(seed)
    k, h = 4, 40
    y = torch.arange(k).repeat_interleave(n_per)
    means = torch.zeros(k, h)
    means[torch.arange(k), torch.arange(k)] = 3.0
    means[torch.arange(k), k + torch.arange(k)] = 0.3
    std = torch.ones(h)
    std[:k], std[k : 2 * k] = 10.0, 0.05
    return means[y] + std * torch.randn(len(y), h, generator=g), y


def test_probe_reads_where_diff_of_means_does_not():
    a, y = _anisotropic(100, seed=0)
    pos = _pos(y, 4)
    unit, norms = caa(MethodInputs(a, pos, ~pos))
    cv = ConceptVectors(["a", "b", "c", "d"], [0], {0: unit}, {0: norms}, centers={0: a.mean(0)})
    plain = ConceptVectors(["a", "b", "c", "d"], [0], {0: unit}, {0: norms}, centers={0: a.mean(0)})
    test, yt = _anisotropic(100, seed=1)
    acc_vec = float((cv.scores(test, 0).argmax(1) == yt).double().mean())
    for fit in (fit_probe, fit_lda):
        cv.probes[0] = fit(a, pos)
        acc_probe = float((cv.read_scores(test, 0).argmax(1) == yt).double().mean())
        assert acc_probe >= 0.95 and acc_vec <= 0.6, (fit.__name__, acc_probe, acc_vec)
    assert torch.equal(plain.read_scores(test, 0), plain.scores(test, 0))  # no probe: the projections
    lp = cv.read_scores(test, 0)
    assert torch.allclose(lp.logsumexp(1), torch.zeros(len(yt)), atol=1e-5)  # log-probabilities


def _cv_with_probe(kind: str = "logistic") -> ConceptVectors:
    a, y = _planted(n_per=20)
    pos = _pos(y, 4)
    unit, norms = caa(MethodInputs(a, pos, ~pos))
    cv = ConceptVectors(["a", "b", "c", "d"], [2], {2: unit}, {2: norms}, meta={"method": "caa"},
                        centers={2: a.mean(0)}, probes={2: fit_readout_probe(a, pos, kind=kind)})  # fmt: skip
    return cv


@pytest.mark.parametrize("kind", ["logistic", "lda"])
def test_save_load_round_trip(tmp_path, kind):
    cv = _cv_with_probe(kind)
    cv.save(tmp_path)
    meta = json.loads((tmp_path / "readout.json").read_text())
    assert meta["format_version"] == 2 and meta["probe"]["output"] == "log_probabilities"
    assert (
        meta["probe"]["kind"] == cv.probes[2].kind == {"lda": "shrinkage_lda", "logistic": "multinomial_logistic"}[kind]
    )
    if kind == "logistic":
        assert meta["probe"]["layers"]["2"]["c"] == cv.probes[2].c_reg
    else:
        assert meta["probe"]["layers"]["2"] == cv.probes[2].info
    back = ConceptVectors.load(tmp_path)
    p, q = cv.probes[2], back.probes[2]
    for part in ("weight", "bias", "mean", "scale"):
        assert torch.equal(getattr(p, part), getattr(q, part))
    assert (q.c_reg == p.c_reg or math.isnan(p.c_reg) and math.isnan(q.c_reg)) and q.cv == p.cv
    assert q.kind == p.kind and q.info == p.info
    h = torch.randn(3, 5, cv.hidden_size)
    assert torch.equal(back.read_scores(h, 2), cv.read_scores(h, 2))
    # select keeps the probe, its log-probabilities renormalised over the chosen concepts
    sub = back.select(["c", "a"])
    full = cv.probes[2].logits(h)[..., [2, 0]]
    assert torch.allclose(sub.read_scores(h, 2), torch.log_softmax(full, -1), atol=1e-5)
    # arithmetic makes new concepts: no probe, the projections
    mixed = back.mix({"a": 1.0, "b": 1.0})
    assert not mixed.probes and torch.equal(mixed.read_scores(h, 2), mixed.scores(h, 2))


def test_broken_probe_tensors_are_one_line_errors(tmp_path):
    from safetensors.torch import load_file

    cv = _cv_with_probe()
    cv.save(tmp_path)
    tensors = load_file(tmp_path / "readout.safetensors")
    bad = dict(tensors)
    del bad["layer_2.probe.scale"]
    save_file(bad, tmp_path / "readout.safetensors")
    with pytest.raises(ReadoutError, match="probe.scale is missing"):
        ConceptVectors.load(tmp_path)
    bad = dict(tensors)
    bad["layer_2.probe.weight"] = torch.zeros(3, cv.hidden_size)
    save_file(bad, tmp_path / "readout.safetensors")
    with pytest.raises(ReadoutError, match=r"probe.weight is shape \(3, 24\)"):
        ConceptVectors.load(tmp_path)
    bad = dict(tensors)
    bad["layer_2.probe.bias"] = torch.full((4,), float("nan"))
    save_file(bad, tmp_path / "readout.safetensors")
    with pytest.raises(ReadoutError, match="NaN"):
        ConceptVectors.load(tmp_path)
    save_file(tensors, tmp_path / "readout.safetensors")
    meta = json.loads((tmp_path / "readout.json").read_text())
    meta["probe"]["kind"] = "random_forest"
    (tmp_path / "readout.json").write_text(json.dumps(meta))
    with pytest.raises(ReadoutError, match="unknown probe kind 'random_forest'"):
        ConceptVectors.load(tmp_path)


def test_old_file_without_probe_reads_bit_identically(tmp_path):
    """A version-1 folder (as steerkit wrote before issue 28, byte for byte) loads, has no probe,
    and read_scores is exactly the centred projection."""
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    center = torch.randn(16, generator=g)
    save_file({"layer_1.vectors": v, "layer_1.norms": torch.ones(3), "layer_1.center": center},
              str(tmp_path / "readout.safetensors"), metadata={"format_version": "1"})  # fmt: skip
    meta = {"format_version": 1, "concepts": ["x", "y", "z"], "layers": [1], "hidden_size": 16, "dtype": "float32",
            "model": {"spec": "m"}, "method": "caa", "pooling": "mean_after:1"}  # fmt: skip
    (tmp_path / "readout.json").write_text(json.dumps(meta))
    cv = ConceptVectors.load(tmp_path)
    assert cv.probes == {}
    h = torch.randn(7, 16, generator=g)
    want = (h - center) @ v.t()
    assert torch.equal(cv.read_scores(h, 1), want) and torch.equal(cv.scores(h, 1), want)


# ---- the held-out readout refits the probe inside each fold ---------------------------------------
@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_dir_factory):
    tiny = tiny_dir_factory("llama")
    out = tmp_path_factory.mktemp("runs") / "probe"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(tiny), "--layers", "1,3", "--out", str(out),
            "--allow-untrained", "--no-cache"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args[:-4], "--out", str(out.with_name("logistic")), "--allow-untrained",
                                    "--no-cache", "--probe", "logistic"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, tiny


@pytest.mark.parametrize("kind", ["lda", "logistic"])
def test_extract_stores_the_probe_fitted_on_the_run(probe_run, kind):
    """The default run holds shrinkage-LDA probes, a `--probe logistic` run logistic ones: each equal
    to the fit of its kind from the run's saved activations."""
    from steerkit.quality.report import _scenarios, load_run

    run = probe_run[0] if kind == "lda" else probe_run[0].with_name("logistic")
    cv = ConceptVectors.load(run)
    assert sorted(cv.probes) == [1, 3]
    data = load_run(run)
    pos = torch.tensor([[c in t["concepts"] for t in data.texts] for c in cv.concepts])
    groups = story_groups([t["sha256"] for t in data.texts], _scenarios(data))
    for layer in (1, 3):  # oracle: the same fit from the saved activations
        want = (
            fit_probe(data.resid[layer], pos, groups) if kind == "logistic" else fit_lda(data.resid[layer], pos, groups)
        )
        assert torch.allclose(cv.probes[layer].weight, want.weight, atol=1e-6)
        assert cv.probes[layer].kind == want.kind and cv.probes[layer].info == want.info
        assert cv.probes[layer].c_reg == want.c_reg or kind == "lda"
    stats = json.loads((run / "run.json").read_text())["stats"]
    assert stats["probe_seconds"] >= 0


def test_heldout_readout_refits_the_probe_per_fold(probe_run, monkeypatch):
    """Perturbing one held-out text leaves the probe of its fold unchanged (it was not trained on
    it) and changes the probes of the folds that trained on it."""
    import steerkit.vectors.probe as probe_mod
    from steerkit.quality.report import QualityConfig, build_report, load_run

    run, _ = probe_run
    real_fit = probe_mod.fit_lda  # the default run's probe kind

    def reports(perturb: bool) -> tuple[dict, list[tuple[bool, Probe]]]:
        data = load_run(run)
        i = next(j for j, t in enumerate(data.texts) if len(t["concepts"]) == 1)  # a labelled text
        if perturb:
            data.resid[1][i] += 50.0 * torch.randn(data.resid[1].shape[1])
        target = data.resid[1][i].clone()
        calls: list[tuple[bool, Probe]] = []

        def spy(a, pos, *args, **kw):
            p = real_fit(a, pos, *args, **kw)
            calls.append((bool((a == target).all(1).any()) if a.shape[1] == target.shape[0] else False, p))
            return p

        monkeypatch.setattr(probe_mod, "fit_lda", spy)
        rep = build_report(data, QualityConfig(k_folds=3))
        monkeypatch.setattr(probe_mod, "fit_lda", real_fit)
        return rep, calls

    rep, before = reports(False)
    _, after = reports(True)
    assert len(before) == len(after) == 6  # 2 layers x 3 folds
    n_held = 0
    for (had, p), (had_after, q) in zip(before[:3], after[:3], strict=True):  # the layer-1 folds
        assert had == had_after
        if had:  # trained on the text: the perturbation changes the probe
            assert not torch.equal(p.weight, q.weight)
        else:  # the text was held out: not one bit of the probe changes
            n_held += 1
            assert torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias) and torch.equal(p.mean, q.mean)
    assert n_held == 1
    h = rep["layers"]["1"]["heldout"]
    assert h["reader"] == "probe" and "vectors_top1" in h and 0 <= h["top1"] <= 1


def test_read_cli_uses_the_probe(probe_run, tmp_path):
    """`steerkit read` reports the probe's log-probabilities of the pooled text (oracle: the stored
    probe applied to an independent capture); a --no-probe run reads the projections."""
    from steerkit.capture import capture, parse_pooling
    from steerkit.models import load

    run, tiny = probe_run
    text = "The lake was still and the evening was warm."
    res = CliRunner().invoke(main, ["read", "--vectors", str(run), "--text", text, "--json", "--layer", "3",
                                    "--model", str(tiny), "--top", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["reader"] == "probe"
    cv = ConceptVectors.load(run)
    lm = load(str(tiny))
    h = capture(lm, [text], [3], pooling=parse_pooling("mean_after:1")).resid[3]
    want = cv.probes[3].log_probs(h)[0]
    for name, score in data["pooled"]:
        assert score == pytest.approx(float(want[cv.concepts.index(name)]), abs=2e-3)
    for tok in data["tokens"]:
        assert all(s <= 1e-3 for _, s in tok["top"])  # log-probabilities
    for words, noted in ((text, len(data["tokens"]) < 30), (" ".join([text] * 8), False)):  # a short text gets a note
        human = CliRunner().invoke(main, ["read", "--vectors", str(run), "--text", words, "--model", str(tiny)])
        assert human.exit_code == 0 and ("note:" in human.output) == noted and "pooled:" in human.output
    assert len(data["tokens"]) < 30  # the short case above did expect the note
    out = tmp_path / "noprobe"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(tiny), "--layers", "3", "--out", str(out),
            "--allow-untrained", "--no-cache", "--no-probe"]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    assert ConceptVectors.load(out).probes == {}
    res = CliRunner().invoke(main, ["read", "--vectors", str(out), "--text", text, "--json", "--model", str(tiny)])
    assert json.loads(res.output)["reader"] == "vectors"


def test_notebook_read_uses_the_probe(tiny_lm_factory, monkeypatch):
    import steerkit as sk
    from steerkit.corpus import load as load_corpus

    lm = tiny_lm_factory("llama")
    corpus = load_corpus(FIXTURE)
    texts = [t.text for t in corpus.texts if len(t.concepts) == 1]
    labels = [next(iter(t.concepts)) for t in corpus.texts if len(t.concepts) == 1]
    vecs = sk.extract_vectors(lm, texts, labels, layers=[2])
    assert 2 in vecs.probes
    r = sk.read(lm, vecs, "The evening was warm.", layer=2)
    assert sum(np.exp(v) for v in r.pooled.values()) == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(r.scores.logsumexp(1), torch.zeros(len(r.tokens)), atol=1e-4)
    assert vecs.probes[2].kind == "shrinkage_lda"
    # the probe option: True is the default kind, False none; a bad kind fails before any capture
    assert sk.extract_vectors(lm, texts, labels, layers=[2], probe=True).probes[2].kind == "shrinkage_lda"
    assert not sk.extract_vectors(lm, texts, labels, layers=[2], probe=False).probes
    assert sk.extract_vectors(lm, texts, labels, layers=[2], probe="logistic").probes[2].kind == "multinomial_logistic"
    import steerkit.vectors.extract as ex

    def no_capture(*a, **k):
        raise AssertionError("captured before checking the probe kind")

    monkeypatch.setattr(ex, "capture", no_capture)
    with pytest.raises(ValueError, match="probe must be one of lda, logistic"):
        sk.extract_vectors(lm, texts, labels, layers=[2], probe="svm")


@pytest.mark.parametrize("kind", ["lda", "logistic"])
def test_reading_so_far_is_the_log_softmax_of_the_mean_row(kind):
    """The probe is affine in h before its softmax, so the reading of the mean of T token states equals
    log_softmax of the mean of their T per-token rows (what the server streams): a client gets the
    reading of the text so far from the rows alone. Also with a concept the probe never saw (-inf)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(60, 12, generator=g)
    pos = torch.zeros(4, 60, dtype=torch.bool)
    pos[torch.arange(60) % 3, torch.arange(60)] = True  # concept 3 has no texts: bias -inf
    a[pos[1]] += 1.5
    probe = fit_readout_probe(a, pos, kind=kind)
    h = torch.randn(17, 12, generator=g) * 2
    rows = probe.log_probs(h)  # (T, C)
    so_far = torch.log_softmax(rows.mean(0), dim=-1)
    direct = probe.log_probs(h.mean(0))
    assert torch.isneginf(direct[3]) and torch.isneginf(so_far[3])
    torch.testing.assert_close(so_far[:3], direct[:3], rtol=1e-4, atol=1e-5)
