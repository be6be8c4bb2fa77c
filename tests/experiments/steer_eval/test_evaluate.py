"""steer-eval on tiny models: per-row steering equals `steer`; alpha = 0 gives the unsteered text and
a zero gain exactly; a planted direction that makes the model write a marker token is detected
(and a random vector is not); the random-direction control is calibrated under the null."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.helpers import word_prompts
from steerkit import stats
from steerkit.experiments.prompts import arm_seed
from steerkit.experiments.steer_eval import SteerEvalConfig, evaluate
from steerkit.experiments.steer_eval.analysis import Arm, cell, held_out_points, operating_points, ranks
from steerkit.experiments.steer_eval.generate import continuation_nll, reread
from steerkit.generation import GenSpec, RowSteer, generate_chunk, trim
from steerkit.steering import steer
from steerkit.vectors import ConceptVectors


def _tiny(tiny_tok, head_scale: float, spec: str):
    import tiny_models

    from steerkit.models import from_model

    model = tiny_models.build("llama")
    with torch.no_grad():
        model.lm_head.weight *= head_scale  # peaked next-token distributions: steering changes tokens
    return from_model(model, tiny_tok, spec=spec)


@pytest.fixture(scope="module")
def peaked(tiny_tok):
    return _tiny(tiny_tok, 25.0, "tiny-llama-steer-eval")


def _prompt_ids(lm, n: int, seed: int = 3) -> list[list[int]]:
    return [list(lm.tokenizer(p.text)["input_ids"]) for p in word_prompts(n, seed=seed)]


@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_row_steer_equals_steer_and_leaves_zero_rows_alone(peaked, scale):
    lm = peaked
    ids = torch.tensor(_prompt_ids(lm, 1) * 3)  # (3, P): the same prompt three times
    g = torch.Generator().manual_seed(0)
    v = torch.randn(32, generator=g)
    cv = ConceptVectors(["x"], [2], {2: (v / v.norm())[None]}, {2: v.norm()[None]}, {}, {})
    with torch.no_grad():
        plain = lm.model(ids).logits
        with steer(lm.model, cv, {"x": 0.7}, 2, scale=scale, adapter=lm.adapter):
            want = lm.model(ids).logits
        from steerkit.steering import steering_direction

        d = steering_direction(cv, {"x": 0.7}, 2, scale)
        with RowSteer.add(lm, 2, torch.stack([d, torch.zeros(32), 2 * d]), scale).attached() as hook:
            got = lm.model(ids).logits
    assert hook.calls == 1
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    assert torch.equal(got[1], plain[1])  # a zero direction: bit for bit unsteered
    assert not torch.allclose(got[2], want[2])


def test_alpha_zero_gives_the_unsteered_text_and_zero_gain(peaked):
    """Rows with alpha = 0 inside a batch of steered rows generate exactly what the unsteered model
    generates, score the same NLL and read the same concept scores (gain 0 exactly)."""
    lm = peaked
    pids = _prompt_ids(lm, 6)
    owners = [i for i in range(6) for _ in range(2)]
    seeds = [arm_seed(0, i, 0, s) for i in range(6) for s in range(2)]
    spec = GenSpec(max_new=10)
    base = generate_chunk(lm, "batched", pids, owners, seeds, None, spec)
    g = torch.Generator().manual_seed(1)
    big = torch.randn(32, generator=g) * 5.0
    delta = torch.stack([big if r % 3 else torch.zeros(32) for r in range(12)])  # rows 0, 3, 6, 9: alpha 0
    with RowSteer.add(lm, 1, delta, "absolute").attached() as hook:
        mixed = generate_chunk(lm, "batched", pids, owners, seeds, hook, spec)
    zero = [0, 3, 6, 9]
    assert torch.equal(mixed[zero], base[zero])
    assert not torch.equal(mixed, base)  # the steered rows did change
    # greedy, one prompt at a time with plain generate(): the same tokens as the batched baseline
    greedy = generate_chunk(lm, "batched", pids, list(range(6)), [0] * 6, None, GenSpec(10, greedy=True))
    for i, p in enumerate(pids):
        x = torch.tensor([p])
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.tokenizer.eos_token_id)  # fmt: skip
        new = out[0, len(p) :].tolist()
        assert greedy[i, : len(new)].tolist() == new
    cv = ConceptVectors(["a", "b"], [1], {1: torch.nn.functional.normalize(torch.randn(2, 32, generator=g))},
                        {1: torch.ones(2)}, {"pooling": "mean_after:1"}, {1: torch.randn(32, generator=g)})  # fmt: skip
    conts_b, conts_m = trim(base, lm.tokenizer.eos_token_id), trim(mixed, lm.tokenizer.eos_token_id)
    prompts = [pids[o] for o in owners]
    nll_b, nll_m = continuation_nll(lm, prompts, conts_b), continuation_nll(lm, prompts, conts_m)
    texts = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in conts_b + conts_m]
    sc = reread(lm, cv, 1, texts)
    gain = sc[12:][zero] - sc[:12][zero]  # (4, 2)
    assert np.array_equal(gain, np.zeros_like(gain))
    np.testing.assert_array_equal(nll_m[zero], nll_b[zero])


def test_nll_matches_a_hand_computation(peaked):
    lm = peaked
    p, c = _prompt_ids(lm, 2)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([p + c[:5]])).logits[0].double(), -1)
    want = -np.mean([float(logp[len(p) - 1 + k, c[k]]) for k in range(5)])
    got = continuation_nll(lm, [p, c], [c[:5], []])
    assert got[0] == pytest.approx(want, abs=1e-5) and np.isnan(got[1])


def test_ranks_count_ties_against_the_concept():
    s = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert ranks(s, 0).tolist() == [3, 2, 3]


def _cell(concept: str, alpha: float, ok: list[int], dnll: list[float], claim: bool = True):
    o, d = np.array(ok, bool), np.array(dnll, float)
    return {"concept": concept, "layer": 5, "alpha": alpha, "claim": claim, "success": float(o.mean()),
            "nll_increase": float(np.nanmean(d))}, ((concept, 5, alpha), (o, d))  # fmt: skip


def test_held_out_points_choose_on_one_fold_and_measure_on_the_other():
    """Hand-computed cross-fitting. 'lucky' wins at alpha 4 (62.5%) through fold 0 (all successes
    there, one in fold 1); chosen on fold 0 it scores 25% on fold 1, and chosen on fold 1 the alpha-2
    cell (50% everywhere) scores 50% on fold 0: 37.5% held out, not held.
    'steady' succeeds 75% in both folds at alpha 2: 75% held out. 'costly' wins only over the NLL
    budget in fold 1, so fold 0 has no cell to measure: success 0.5 x (1 + 0) / 2 folds, not held."""
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    specs = [
        _cell("lucky", 4.0, [1, 1, 1, 1, 1, 0, 0, 0], [0.1] * 8),
        _cell("lucky", 2.0, [1, 0, 1, 0, 1, 0, 1, 0], [0.1] * 8),
        _cell("steady", 2.0, [1, 1, 1, 0, 1, 1, 0, 1], [0.2, 0.2, 0.2, np.nan, 0.4, 0.4, 0.4, 0.4]),
        _cell("steady", 8.0, [1, 1, 1, 1, 1, 1, 1, 1], [5.0] * 8),  # over the budget everywhere
        _cell("costly", 4.0, [1, 1, 1, 1, 1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0]),
        _cell("unclaimed", 4.0, [1] * 8, [0.0] * 8, claim=False),
    ]
    cells, units = [c for c, _ in specs], dict(u for _, u in specs)
    names = ["lucky", "steady", "costly", "unclaimed"]
    full = operating_points(cells, names, 1.0, 0.5)
    assert full["lucky"]["alpha"] == 4.0 and full["lucky"]["success"] == 0.625
    h = held_out_points(cells, units, folds, names, max_nll=1.0, min_success=0.5)
    assert h["lucky"] == {"success": 0.375, "nll_increase": pytest.approx(0.1), "folds_chosen": 2, "held": False}
    assert h["steady"]["success"] == 0.75 and h["steady"]["held"]
    assert h["steady"]["nll_increase"] == pytest.approx((0.2 + 0.4) / 2)  # fold 0's empty row left out
    assert h["costly"] == {"success": 0.5, "nll_increase": pytest.approx(3.0), "folds_chosen": 1, "held": False}
    assert h["unclaimed"]["folds_chosen"] == 0 and not h["unclaimed"]["held"]


# ---- the planted marker ----------------------------------------------------------------------------
MARKER = " the"


def _planted_vectors(lm, layer: int, read_layer: int) -> ConceptVectors:
    """'marker' steers towards writing MARKER (its unembedding row through the final norm's weights)
    and reads as text made of MARKER; 'dud' steers along a random direction; four more concepts are
    read-only (texts of other words). All steering vectors have the same norm."""
    from steerkit.capture import capture, parse_pooling

    tok = lm.tokenizer
    m = tok(MARKER, add_special_tokens=False)["input_ids"]
    assert len(m) == 1
    w = lm.model.lm_head.weight[m[0]].detach() * lm.model.model.norm.weight.detach()
    g = torch.Generator().manual_seed(5)
    dud = torch.randn(32, generator=g)
    words = [MARKER, " cat", " rain", " tea", " town", " baker"]
    texts = [w_ * 12 for w_ in words] + [p.text for p in word_prompts(8, seed=9)]
    pooling = parse_pooling("mean_after:1")
    h = capture(lm, texts, [read_layer], pooling=pooling).resid[read_layer]  # (n, hidden)
    center = h[len(words) :].mean(0)
    read = torch.nn.functional.normalize(h[: len(words)] - center, dim=1)  # (6, hidden)
    names = ["marker", "dud", "cat", "rain", "tea", "town"]
    steer_rows = torch.stack([w / w.norm(), dud / dud.norm()] + [torch.zeros(32)] * 4)
    norms = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    return ConceptVectors(names, [read_layer, layer], {read_layer: read, layer: steer_rows},
                          {read_layer: torch.ones(6), layer: norms}, {"pooling": "mean_after:1"},
                          {read_layer: center})  # fmt: skip


def test_planted_marker_direction_is_detected(peaked, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    lm = peaked
    cv = _planted_vectors(lm, layer=3, read_layer=1)
    run = tmp_path / "run"
    cv.save(run)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(p.text for p in word_prompts(8, seed=11)))
    cfg = SteerEvalConfig(concepts=("marker", "dud"), layers="3", alphas=(0, 20.0), seeds=2, max_new_tokens=8,
                          random_draws=6, max_nll_increase=100.0, readout_layer=1, top=2)  # fmt: skip
    out, rep = evaluate(cfg, run, prompts, lm=lm)
    cells = {c["concept"]: c for c in rep["cells"]}
    mk, dud = cells["marker"], cells["dud"]
    assert mk["success"] >= 0.9 and mk["claim"] and mk["p_holm"] < 0.01, mk
    assert mk["gain"] > 10 * abs(mk["random_gain"]) and mk["random_success"] < 0.5, mk
    assert mk["rank_median"] == 1 and not dud["claim"], (mk, dud)
    op = rep["operating_points"]["marker"]
    assert op is not None and op["layer"] == 3 and op["alpha"] == 20.0
    assert rep["operating_points"]["dud"] is None
    assert rep["held_out"]["marker"]["held"] and rep["held_out"]["marker"]["success"] >= 0.9
    assert rep["summary"]["n_held_out"] == 1 and "held-out success" in (out / "steer_eval.md").read_text()
    assert all(MARKER.strip() in t for t in [rep["examples"]["marker"]])
    for f in ("steer_eval.json", "steer_eval.md", *rep["figures"]):
        assert (out / f).is_file(), f


# ---- calibration of the random-direction control ------------------------------------------------
K, R, B = 160, 8, 300  # pool of random directions, control draws per simulated run, simulated runs per concept


@pytest.fixture(scope="module")
def null_pool(tiny_tok):
    """Gains of 3 read concepts under K random directions (all 'concepts' are random: the null), on
    12 prompts x 2 seeds, all in one batched generate() and one capture call."""
    lm = _tiny(tiny_tok, 5.0, "tiny-llama-null")
    pids = _prompt_ids(lm, 12)
    units = [(p, s) for p in range(12) for s in range(2)]
    g = torch.Generator().manual_seed(2)
    dirs = torch.nn.functional.normalize(torch.randn(K, 32, generator=g), dim=1) * 4.0
    delta = torch.cat([torch.zeros(len(units), 32)] + [d.expand(len(units), 32) for d in dirs])
    owners = [p for _ in range(K + 1) for p, _ in units]
    seeds = [arm_seed(0, p, 0, s) for _ in range(K + 1) for p, s in units]
    with torch.no_grad(), RowSteer.add(lm, 2, delta, "absolute").attached() as hook:
        toks = generate_chunk(lm, "batched", pids, owners, seeds, hook, GenSpec(12))
    texts = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in trim(toks, lm.tokenizer.eos_token_id)]
    cv = ConceptVectors([f"c{i}" for i in range(6)], [1], {1: torch.nn.functional.normalize(torch.randn(6, 32, generator=g))},
                        {1: torch.ones(6)}, {"pooling": "mean_after:1"}, {})  # fmt: skip
    sc = reread(lm, cv, 1, texts).reshape(K + 1, len(units), 6)
    return sc


def test_random_control_is_calibrated_under_the_null(null_pool):
    """Each simulated run steers a random direction as 'the concept' and compares it with R other random
    directions, for each of 6 read concepts: over runs x concepts the claim (Holm-free, level 0.05)
    is made in 2-8% of cases, and so is the direction-level test alone. Per concept the rate moves
    with the skew of the gains (reported in docs/steer-eval.md); the claim stays <= 8% for each. The
    per-unit sign-flip test alone ignores the spread between directions; it is reported, not asserted."""
    sc = null_pool
    n = sc.shape[1]
    base = Arm(sc[0], np.zeros(n), np.ones(n), np.zeros(n))
    rng = np.random.default_rng(0)
    p = {"p_dir": [], "p": [], "p_units": []}
    for c in range(6):
        for b in range(B):
            idx = rng.choice(K, R + 1, replace=False) + 1
            arms = [Arm(sc[k], np.zeros(n), np.ones(n), np.zeros(n)) for k in idx]
            st = cell(c, arms[0], arms[1:], base, top=3, n_perm=2000, seed=b)
            for key in p:
                p[key].append(st[key])
    rej = {k: (np.array(v) <= 0.05).reshape(6, B) for k, v in p.items()}
    assert 0.02 <= rej["p"].mean() <= 0.08, rej["p"].mean(1)
    assert 0.02 <= rej["p_dir"].mean() <= 0.08, rej["p_dir"].mean(1)
    assert rej["p"].mean(1).max() <= 0.08, rej["p"].mean(1)
    assert np.mean(p["p_dir"]) >= 0.4  # not piled up near 0


def test_draws_test_matches_the_t_prediction_interval():
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        x = rng.normal(size=9)
        hits.append(stats.draws_test(float(x[0]), x[1:]) <= 0.05)
    assert 0.04 <= np.mean(hits) <= 0.06
    assert stats.draws_test(10.0, [0.0, 1.0, -1.0]) < 0.05 and stats.draws_test(-10.0, [0.0, 1.0, -1.0]) > 0.95
    assert stats.draws_test(1.0, [0.0, 0.0]) == 0.0 and stats.draws_test(0.0, [0.0, 0.0]) == 1.0


def test_reread_is_the_probe_when_the_run_has_one(peaked):
    """The judge of steered text is what `read` uses: with a probe, log-softmax of the probe on the
    standardised mean_after:1 pooling of the text alone (an independent forward through the
    output_hidden_states rule); without one, the centred projection. An empty text reads as knowing
    nothing. The row-cache key changes with the judge."""
    from steerkit.experiments.steer_eval.grid import readout_key
    from steerkit.vectors.probe import Probe

    lm = peaked
    g = torch.Generator().manual_seed(5)
    vec = torch.nn.functional.normalize(torch.randn(3, 32, generator=g))
    center = torch.randn(32, generator=g)
    plain = ConceptVectors(["a", "b", "c"], [1], {1: vec}, {1: torch.ones(3)}, {"pooling": "mean_after:1"},
                           {1: center})  # fmt: skip
    probe = Probe(torch.randn(3, 32, generator=g), torch.randn(3, generator=g), torch.randn(32, generator=g),
                  torch.rand(32, generator=g) + 0.5, 0.01)  # fmt: skip
    judged = ConceptVectors(["a", "b", "c"], [1], {1: vec}, {1: torch.ones(3)}, {"pooling": "mean_after:1"},
                            {1: center}, probes={1: probe})  # fmt: skip
    texts = ["She opened the letter slowly.", "", "The rain kept falling on the roof all night long."]
    want_p, want_s = np.zeros((3, 3)), np.zeros((3, 3))
    for i, t in enumerate(texts):
        if not t:
            continue
        ids = lm.tokenizer(t, return_tensors="pt").input_ids
        with torch.no_grad():
            h = lm.model(ids, output_hidden_states=True).hidden_states[lm.adapter.hidden_states_index(1)][0]
        pooled = h[1:].double().mean(0)  # mean_after:1
        z = (pooled - probe.mean.double()) / probe.scale.double()
        want_p[i] = torch.log_softmax(z @ probe.weight.double().t() + probe.bias.double(), -1).numpy()
        want_s[i] = ((pooled - center.double()) @ vec.double().t()).numpy()
    want_p[1] = -np.log(3)
    np.testing.assert_allclose(reread(lm, judged, 1, texts), want_p, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reread(lm, plain, 1, texts), want_s, rtol=1e-4, atol=1e-4)
    assert readout_key(judged, 1) != readout_key(plain, 1)
