"""llama.cpp control vectors: export (read back with gguf's reader), import, round trip, steering
with an imported file equals steering with the run (and equals adding direction.N to block N's
output, as llama.cpp does), bad input."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_models
import torch
from click.testing import CliRunner

from steerkit.cli import main
from steerkit.models import load
from steerkit.steering import steer
from steerkit.vectors import ConceptVectors
from steerkit.vectors.gguf import read_control_vector, write_control_vector

HIDDEN, BLOCKS = 32, 4


def _save_tiny(root: Path, family: str, tok) -> Path:
    d = root / f"tiny-{family}"
    tiny_models.build(family).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tok) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models"), "llama", tiny_tok)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir) -> Path:
    """A readout for the tiny llama on blocks 0, 1 and 3 (block 0: llama.cpp cannot steer it)."""
    g = torch.Generator().manual_seed(1)
    layers = [0, 1, 3]
    vecs = {la: torch.nn.functional.normalize(torch.randn(2, HIDDEN, generator=g), dim=1) for la in layers}
    norms = {la: torch.rand(2, generator=g) * 3 + 0.5 for la in layers}
    meta = {
        "model": {"spec": str(tiny_dir), "family": "llama", "model_type": "llama", "n_blocks": BLOCKS},
        "method": "caa",
        "pooling": "mean_after:1",
    }
    d = tmp_path_factory.mktemp("runs") / "run"
    ConceptVectors(["calm", "angry"], layers, vecs, norms, meta).save(d)
    return d


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def _export(run_dir: Path, out: Path, *extra: str):
    res = _invoke(["export", "--vectors", str(run_dir), "--format", "gguf", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res


def test_export_writes_llama_cpp_control_vector(run_dir, tmp_path):
    out = tmp_path / "calm.gguf"
    res = _export(run_dir, out, "--concept", "calm=2", "--concept", "angry=-1")
    assert "block 0 skipped" in res.output
    r = gguf.GGUFReader(str(out))
    arch, hint, count = (
        r.get_field(k) for k in ("general.architecture", "controlvector.model_hint", "controlvector.layer_count")
    )
    assert arch.contents() == "controlvector" and hint.contents() == "llama"
    assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == 2
    assert json.loads(r.get_field("steerkit.weights").contents()) == {"calm": 2.0, "angry": -1.0}
    cv = ConceptVectors.load(run_dir)
    assert sorted(t.name for t in r.tensors) == ["direction.1", "direction.3"]
    for t in r.tensors:
        n = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HIDDEN] and t.n_elements == HIDDEN
        want = 2 * cv.vector("calm", n, raw=True) - cv.vector("angry", n, raw=True)
        np.testing.assert_allclose(np.asarray(t.data), want.numpy(), rtol=1e-6, atol=1e-7)


def test_round_trip_and_steering_equal_the_run(run_dir, tiny_dir, tmp_path):
    one = tmp_path / "calm1.gguf"
    _export(run_dir, one, "--concept", "calm", "--layers", "1,3")
    res = _invoke(["import", "--gguf", str(one), "-m", str(tiny_dir), "--out", str(tmp_path / "imp1")])
    assert res.exit_code == 0, res.output
    cv, back = ConceptVectors.load(run_dir), ConceptVectors.load(tmp_path / "imp1")
    assert back.concepts == ["calm1"] and back.layers == [1, 3] and back.meta["model"]["n_blocks"] == BLOCKS
    for n in (1, 3):  # export -> import returns the original vectors
        torch.testing.assert_close(back.vector("calm1", n), cv.vector("calm", n), rtol=0, atol=1e-6)
        torch.testing.assert_close(back.norms[n], cv.norms[n][:1], rtol=1e-6, atol=0)

    mix = tmp_path / "mix.gguf"
    _export(run_dir, mix, "--concept", "calm=2", "--concept", "angry=-1.5")
    res = _invoke(["import", "--gguf", str(mix), "-m", str(tiny_dir), "--concept", "m", "--out", str(tmp_path / "imp")])
    assert res.exit_code == 0, res.output
    imported = ConceptVectors.load(tmp_path / "imp")
    lm = load(str(tiny_dir))
    ids = lm.tokenizer("The lake was still and the birds were quiet.", return_tensors="pt").input_ids

    def logits(cv_: ConceptVectors, weights: dict[str, float]) -> torch.Tensor:
        with ExitStack() as stack, torch.no_grad():
            for n in (1, 3):
                stack.enter_context(steer(lm.model, cv_, weights, n))
            return lm.model(ids).logits

    with torch.no_grad():
        base = lm.model(ids).logits
    run_steered = logits(cv, {"calm": 2.0, "angry": -1.5})
    imp_steered = logits(imported, {"m": 1.0})
    assert (run_steered - base).abs().max() > 1e-2  # the steering does something
    torch.testing.assert_close(imp_steered, run_steered, rtol=1e-5, atol=1e-5)

    # llama.cpp's rule: direction.N added to block N's output at every position, at scale 1
    cvec = read_control_vector(mix)
    blocks = lm.adapter.blocks(lm.model)
    handles = [
        blocks[n].register_forward_hook(lambda m, a, o, d=d: lm.adapter.replace_hidden(o, lm.adapter.get_hidden(o) + d))
        for n, d in cvec.directions.items()
    ]
    try:
        with torch.no_grad():
            llama_cpp = lm.model(ids).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(imp_steered, llama_cpp, rtol=1e-5, atol=1e-5)

    res = _invoke(["read", "--vectors", str(tmp_path / "imp"), "--layer", "3", "--text", "Calm water.", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pooled"][0][0] == "m"


def _repeng_style(path: Path, directions: dict[int, np.ndarray], arch: str = "controlvector") -> Path:
    """Written the way repeng's ControlVector.export_gguf writes (no steerkit keys)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string(f"{arch}.model_hint", "llama")
    w.add_uint32(f"{arch}.layer_count", len(directions))
    for n, d in directions.items():
        w.add_tensor(f"direction.{n}", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_a_repeng_file(tiny_dir, tmp_path):
    d = {n: np.random.default_rng(n).standard_normal(HIDDEN).astype(np.float32) for n in (1, 2, 3)}
    f = _repeng_style(tmp_path / "happy.gguf", d)
    res = _invoke(["import", "--gguf", str(f), "-m", str(tiny_dir), "--out", str(tmp_path / "imp")])
    assert res.exit_code == 0, res.output
    cv = ConceptVectors.load(tmp_path / "imp")
    assert cv.concepts == ["happy"] and cv.layers == [1, 2, 3]
    for n in d:
        np.testing.assert_allclose(cv.vector("happy", n, raw=True).numpy(), d[n], rtol=1e-6, atol=1e-6)
    assert cv.meta["source"]["model_hint"] == "llama" and cv.meta["method"] == "gguf-import"


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    f: dict[str, Path] = {}
    (tmp_path / "text.gguf").write_text("not a gguf file at all")
    f["text"] = tmp_path / "text.gguf"
    f["model"] = _repeng_style(tmp_path / "model.gguf", {1: np.zeros(HIDDEN, np.float32)}, arch="llama")
    f["wide"] = _repeng_style(tmp_path / "wide.gguf", {1: np.ones(48, np.float32)})
    f["deep"] = _repeng_style(tmp_path / "deep.gguf", {7: np.ones(HIDDEN, np.float32)})
    f["zero"] = _repeng_style(tmp_path / "zero.gguf", {0: np.ones(HIDDEN, np.float32)})
    f["f16"] = _repeng_style(tmp_path / "f16.gguf", {1: np.ones(HIDDEN, np.float16)})
    return f


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "--vectors", "{run}", "--concept", "clam", "--out", "{tmp}/x.gguf"], "unknown concept 'clam'"),
        (
            ["export", "--vectors", "{run}", "--concept", "calm", "--layers", "2", "--out", "{tmp}/x.gguf"],
            "not in the run",
        ),
        (
            ["export", "--vectors", "{run}", "--concept", "calm", "--layers", "9", "--out", "{tmp}/x.gguf"],
            "out of range",
        ),
        (["export", "--vectors", "{run}", "--concept", "calm", "--layers", "0", "--out", "{tmp}/x.gguf"], "block 0"),
        (["export", "--vectors", "{run}", "--concept", "calm", "--out", "{tmp}/x.bin"], "ending in .gguf"),
        (["export", "--vectors", "{tmp}/none", "--concept", "calm", "--out", "{tmp}/x.gguf"], "does not exist"),
        (["import", "--gguf", "{text}", "-m", "{model}"], "is not a GGUF file"),
        (["import", "--gguf", "{model_gguf}", "-m", "{model}"], "is not a control vector"),
        (["import", "--gguf", "{wide}", "-m", "{model}"], "n_embd 48 but model"),
        (["import", "--gguf", "{deep}", "-m", "{model}"], "steers block 7"),
        (["import", "--gguf", "{zero}", "-m", "{model}"], "direction.0"),
        (["import", "--gguf", "{f16}", "-m", "{model}"], "not F32"),
        (["import", "--gguf", "{tmp}/missing.gguf", "-m", "{model}"], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(args, needle, run_dir, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    files = _bad_files(tmp_path)
    subs = {
        "{run}": str(run_dir),
        "{tmp}": str(tmp_path),
        "{model}": str(tiny_dir),
        "{model_gguf}": str(files["model"]),
    }
    subs |= {f"{{{k}}}": str(v) for k, v in files.items() if k != "model"}
    before = sorted(tmp_path.rglob("*"))
    res = CliRunner().invoke(main, [subs.get(a, a) if a in subs else _sub(a, subs) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert sorted(tmp_path.rglob("*")) == before


def _sub(arg: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        arg = arg.replace(k, v)
    return arg


def test_writer_refuses_block_0_and_mixed_widths(tmp_path):
    from steerkit.errors import ReadoutError

    with pytest.raises(ReadoutError, match="block 0"):
        write_control_vector(tmp_path / "a.gguf", {0: torch.ones(4)}, "llama")
    with pytest.raises(ReadoutError, match="widths"):
        write_control_vector(tmp_path / "a.gguf", {1: torch.ones(4), 2: torch.ones(5)}, "llama")
    assert not list(tmp_path.iterdir())


def test_model_hint_from_the_models_config(tiny_tok, tmp_path):
    """A run without model_type in its metadata: the hint is read from the model's config.json."""
    d = _save_tiny(tmp_path, "qwen2", tiny_tok)
    cv = ConceptVectors(
        ["x"], [2], {2: torch.nn.functional.normalize(torch.ones(1, HIDDEN), dim=1)}, {2: torch.ones(1)},
        {"model": {"spec": str(d), "family": "llama", "n_blocks": BLOCKS}},
    )  # fmt: skip
    cv.save(tmp_path / "run")
    _export(tmp_path / "run", tmp_path / "x.gguf", "--concept", "x")
    assert read_control_vector(tmp_path / "x.gguf").model_hint == "qwen2"
