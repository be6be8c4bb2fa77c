"""extract on a tiny model (CLI), the readout format, steering exactness, per-token hooks, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_runs import extract

from steerkit.capture import capture, parse_pooling
from steerkit.cli import main
from steerkit.corpus import load as load_corpus
from steerkit.errors import ReadoutError
from steerkit.models import load
from steerkit.steering import steer
from steerkit.vectors import ConceptVectors

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"


@pytest.fixture(scope="module")
def tiny_dir(tiny_dir_factory):
    return tiny_dir_factory("llama")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    return extract(tiny_dir, tmp_path_factory.mktemp("runs") / "r1", "--no-cache")


def test_extract_writes_a_valid_run(run_dir, tiny_dir):
    cv = ConceptVectors.load(run_dir)
    meta = json.loads((run_dir / "readout.json").read_text())
    assert cv.concepts == ["calm", "angry", "happy", "sad"] and cv.layers == [1, 3]
    for key in (
        "format_version",
        "concepts",
        "layers",
        "hidden_size",
        "dtype",
        "model",
        "method",
        "pooling",
        "corpus",
        "created_by",
    ):
        assert key in meta
    assert meta["corpus"]["n_texts"] == 18 and meta["pooling"] == "mean_after:1"
    # oracle: vectors equal a hand computation from independently captured activations
    corpus = load_corpus(FIXTURE)
    lm = load(str(tiny_dir))
    res = capture(lm, [t.text for t in corpus.texts], [1, 3], pooling=parse_pooling("mean_after:1"))
    for layer in (1, 3):
        a = res.resid[layer].numpy()
        for k, name in enumerate(cv.concepts):
            pos = np.array([name in t.concepts for t in corpus.texts])
            v = a[pos].mean(0) - a[~pos].mean(0)
            got = cv.vectors[layer][k].numpy()
            assert np.dot(got, v) / np.linalg.norm(v) >= 0.99999
            assert abs(cv.norms[layer][k].item() - np.linalg.norm(v)) < 1e-3
    acts = json.loads((run_dir / "texts.json").read_text())
    assert len(acts) == 18 and (run_dir / "activations.safetensors").is_file() and (run_dir / "run.json").is_file()


@pytest.mark.parametrize("method", ["paired", "centered"])
def test_extract_other_methods(tmp_path, tiny_dir, method):
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "--stories",
            str(FIXTURE),
            "--model",
            str(tiny_dir),
            "--layers",
            "2",
            "--method",
            method,
            "--out",
            str(tmp_path / method),
            "--allow-untrained",
            "--no-cache",
        ],
    )
    assert res.exit_code == 0, res.output
    assert ConceptVectors.load(tmp_path / method).meta["method"] == method


def test_alpha_zero_is_identity_and_delta_is_exact(run_dir, tiny_dir):
    cv = ConceptVectors.load(run_dir)
    lm = load(str(tiny_dir))
    ids = lm.tokenizer("The quick brown fox jumps.", return_tensors="pt").input_ids
    with torch.no_grad():
        base = lm.model(ids).logits
        with steer(lm, cv, {"calm": 0.0}, layers=1):
            zero = lm.model(ids).logits
    assert torch.equal(base, zero)
    block = lm.adapter.blocks(lm.model)[1]
    for scale in ("absolute", "equal", "relative"):
        outs = {}
        h = block.register_forward_hook(
            lambda m, i, o, outs=outs: outs.__setitem__("last", lm.adapter.get_hidden(o).clone())
        )
        try:
            with torch.no_grad():
                lm.model(ids)
                plain = outs["last"]
        finally:
            h.remove()
        seen = {}
        with steer(lm, cv, {"calm": 2.0, "angry": -1.0}, layers=1, scale=scale):
            # a hook registered after steer's sees the steered output
            h = block.register_forward_hook(
                lambda m, i, o, seen=seen: seen.__setitem__("o", lm.adapter.get_hidden(o).clone())
            )
            try:
                with torch.no_grad():
                    lm.model(ids)
            finally:
                h.remove()
        v = 2.0 * cv.vector("calm", 1, raw=scale == "absolute") - cv.vector("angry", 1, raw=scale == "absolute")
        if scale == "equal":  # every concept at the set's median raw norm (an independent computation)
            v = v * float(np.median(cv.norms[1].double().numpy()[: len(cv.concepts)]))
        want = plain + (plain.norm(dim=-1, keepdim=True) * v if scale == "relative" else v)
        torch.testing.assert_close(seen["o"], want, atol=1e-5, rtol=1e-5)
    assert not block._forward_hooks  # removed


def test_hooks_removed_on_exception(run_dir, tiny_dir):
    cv = ConceptVectors.load(run_dir)
    lm = load(str(tiny_dir))
    with pytest.raises(RuntimeError), steer(lm, cv, {"calm": 1.0}, layers=3):
        raise RuntimeError("boom")
    assert not lm.adapter.blocks(lm.model)[3]._forward_hooks


@pytest.mark.parametrize("family", ["rwkv", "mamba", "qwen3_5", "llama", "gemma3"])
def test_hook_fires_once_per_generated_token(family, tiny_lm_factory):
    lm = tiny_lm_factory(family)
    h = lm.model.config.hidden_size
    cv = ConceptVectors(["x"], [1], {1: torch.nn.functional.normalize(torch.randn(1, h), dim=1)}, {1: torch.ones(1)})
    ids = lm.tokenizer("Once upon a time", return_tensors="pt").input_ids
    with steer(lm, cv, {"x": 3.0}, layers=1) as state, torch.no_grad():
        out = lm.model.generate(
            ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
        )
    new = out.shape[1] - ids.shape[1]
    assert new == 6
    assert state["calls"] == new  # one prompt pass + one per generated token after the first


def test_readout_validation(run_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    meta = json.loads((bad / "readout.json").read_text())
    meta["concepts"] = meta["concepts"][:-1]
    (bad / "readout.json").write_text(json.dumps(meta))
    with pytest.raises(ReadoutError, match="do not belong together"):
        ConceptVectors.load(bad)
    meta["format_version"] = 99
    (bad / "readout.json").write_text(json.dumps(meta))
    with pytest.raises(ReadoutError, match="format_version"):
        ConceptVectors.load(bad)
    cv = ConceptVectors.load(run_dir)
    with pytest.raises(ReadoutError, match="did you mean calm"):
        cv.index("clam")


def test_read_cli(run_dir, tiny_dir):
    res = CliRunner().invoke(
        main,
        [
            "read",
            "--vectors",
            str(run_dir),
            "--text",
            "The lake was still.",
            "--json",
            "--model",
            str(tiny_dir),
            "--layer",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["layer"] == 3 and len(data["pooled"]) == 4 and data["tokens"]


def test_steer_cli_compare(run_dir, tiny_dir):
    res = CliRunner().invoke(
        main,
        [
            "steer",
            "--vectors",
            str(run_dir),
            "--concept",
            "calm=4",
            "--concept",
            "angry=-2",
            "--layer",
            "1",
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "5",
            "--compare",
            "--model",
            str(tiny_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "--- unsteered" in res.output and "--- steered calm=4, angry=-2" in res.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["steer", "--vectors", "/nonexistent", "--concept", "calm=1", "--prompt", "x"], "does not exist"),
        (["steer", "--vectors", "{run}", "--concept", "clam=1", "--prompt", "x"], "did you mean calm"),
        (["steer", "--vectors", "{run}", "--concept", "calm=1", "--layer", "2", "--prompt", "x"], "layer 2 is not in"),
        (["read", "--vectors", "{run}", "--text", "x", "--layer", "0"], "layer 0 is not in"),
        (["extract", "--stories", str(FIXTURE), "--out", "{existing}"], "is not a steerkit extract run"),
        (["extract", "--stories", "/nonexistent/corpus"], "does not exist"),
    ],
)
def test_bad_input_exit_2(args, needle, run_dir, tmp_path):
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("precious")
    args = [a.format(run=run_dir, existing=existing) for a in args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_failed_extract_leaves_no_folder_and_a_rerun_drops_the_old_report(run_dir, tiny_dir, tmp_path):
    bad = tmp_path / "new"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(tiny_dir), "--allow-untrained", "--no-cache"]
    res = CliRunner().invoke(main, [*args, "--layers", "99", "--out", str(bad)])
    assert res.exit_code == 2 and not bad.exists(), res.output
    import shutil

    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    assert CliRunner().invoke(main, ["quality-report", str(again), "--folds", "2"]).exit_code == 0
    assert (again / "quality.json").is_file() and (again / "cosine_heatmap.png").is_file()
    res = CliRunner().invoke(main, [*args, "--layers", "0,3", "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert not (again / "quality.json").exists() and not (again / "cosine_heatmap.png").exists()
    assert json.loads((again / "readout.json").read_text())["layers"] == [0, 3]
