"""--device / --dtype: the same meaning and one-line errors on every command that loads a model;
capture pools in fp32 whatever the weights' dtype (bf16 on CPU within 1e-2 of fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_models
import torch
from click.testing import CliRunner

from steerkit.capture import capture, parse_pooling
from steerkit.cli import main
from steerkit.corpus import load as load_corpus
from steerkit.errors import ModelLoadError
from steerkit.models import load
from steerkit.models.loading import Placement, check_dtype

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tok) -> Path:
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_models.build("llama").save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


def test_placement_validates_and_cpu_runs_every_dtype():
    assert Placement().load_kwargs() == {"device": "cpu", "dtype": None}
    with pytest.raises(ValueError, match="dtype must be one of"):
        Placement(dtype="int8")
    for dt in (None, "float32", "bfloat16", "float16"):
        check_dtype("cpu", dt)


@pytest.mark.parametrize("family", ["llama", "rwkv"])
def test_bf16_capture_pools_in_fp32_close_to_fp32(family, tmp_path, tiny_tok):
    d = tmp_path / family
    tiny_models.build(family).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    corpus = load_corpus(FIXTURE)
    texts = [t.text for t in corpus.texts]
    f32, b16 = load(str(d)), load(str(d), dtype="bfloat16")
    assert b16.info["dtype"] == "bfloat16"
    assert b16.info["fingerprint"] != f32.info["fingerprint"]  # bf16 activations never share the fp32 cache
    pooling = parse_pooling("mean_after:1")
    a = capture(f32, texts, [1, 3], sites=("resid", "heads"), pooling=pooling)
    b = capture(b16, texts, [1, 3], sites=("resid", "heads"), pooling=pooling)
    for site in ("resid", "heads"):
        for layer, x in a.site(site).items():
            y = b.site(site)[layer]
            assert y.dtype == torch.float32 and y.shape == x.shape
            x2, y2 = x.reshape(len(texts), -1), y.reshape(len(texts), -1)
            rel = (x2 - y2).norm(dim=1) / x2.norm(dim=1)
            assert float(rel.max()) < 1e-2, (site, layer, float(rel.max()))
    for layer in (1, 3):  # diff-of-means vectors agree in direction
        for name in corpus.names:
            pos = torch.tensor([name in t.concepts for t in corpus.texts])
            va = a.resid[layer][pos].mean(0) - a.resid[layer][~pos].mean(0)
            vb = b.resid[layer][pos].mean(0) - b.resid[layer][~pos].mean(0)
            assert float(torch.nn.functional.cosine_similarity(va, vb, dim=0)) >= 0.999


def test_a_dtype_the_device_cannot_run_is_one_line(tiny_dir, monkeypatch):
    import steerkit.models.loading as loading

    def no_half(device: str, dtype: str) -> None:
        raise RuntimeError(f'"addmm_impl_cpu_" not implemented for {dtype!r}\nmore lines')

    monkeypatch.setattr(loading, "_dtype_probe", no_half)
    with pytest.raises(ModelLoadError, match="cannot run --dtype float16"):
        load(str(tiny_dir), dtype="float16")
    res = CliRunner().invoke(main, ["verify", "-m", str(tiny_dir), "--dtype", "float16", "--allow-untrained"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "device 'cpu' cannot run --dtype float16" in lines[0], res.output


def test_extract_steer_read_take_device_and_dtype(tiny_dir, tmp_path):
    """extract --dtype bfloat16 gives the fp32 run's vectors (cosine >= 0.999); steer and read load
    with the same options; --vectors-dtype is the saved vectors' dtype."""
    from steerkit.vectors import ConceptVectors

    runs = {}
    for dt in ("float32", "bfloat16"):
        out = tmp_path / dt
        args = ["extract", "--stories", str(FIXTURE), "-m", str(tiny_dir), "--layers", "1,3", "--dtype", dt]
        res = CliRunner().invoke(main, [*args, "--device", "cpu", "--out", str(out), "--allow-untrained", "--no-cache"])
        assert res.exit_code == 0, res.output
        runs[dt] = ConceptVectors.load(out)
    for layer in (1, 3):
        cos = (runs["float32"].vectors[layer] * runs["bfloat16"].vectors[layer]).sum(1)
        assert float(cos.min()) >= 0.999
    run = str(tmp_path / "bfloat16")
    placed = ["--dtype", "bfloat16", "--device", "cpu"]
    steer = ["steer", "--vectors", run, "--concept", "calm=2", "--prompt", "The lake", "--max-new-tokens", "3"]
    read = ["read", "--vectors", run, "--text", "The lake."]
    for args in (steer, read):
        res = CliRunner().invoke(main, [*args, *placed])
        assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_dir) -> dict[str, str]:
    """A tiny extract run without activations (so quality-report --model recaptures), a finished
    2-step train-phase run, texts and a control vector."""
    import numpy as np
    from gguf import GGUFWriter

    root = tmp_path_factory.mktemp("inputs")
    (root / "texts.txt").write_text("The fox ran home.\nRain again.\n")
    run = root / "run"
    args = ["extract", "--stories", str(FIXTURE), "-m", str(tiny_dir), "--layers", "1,3", "--out", str(run)]
    assert CliRunner().invoke(main, [*args, "--allow-untrained", "--no-cache"]).exit_code == 0
    (run / "activations.safetensors").unlink()
    train = ["train-phase", "-m", str(tiny_dir), "--text", str(root / "texts.txt"), "--steps", "2", "--seq-len", "8"]
    res = CliRunner().invoke(main, [*train, "--out", str(root / "phase"), "--name", "p"])
    assert res.exit_code == 0, res.output
    w = GGUFWriter(str(root / "cv.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.1", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tiny": str(tiny_dir), "run": str(run), "phase": str(root / "phase" / "p"), "root": str(root)}


COMMANDS = {
    "verify": ["verify", "-m", "{tiny}", "--allow-untrained"],
    "capture": ["capture", "-m", "{tiny}", "--texts", "{root}/texts.txt", "--out", "{tmp}/caps", "--cache-dir", "none"],
    "extract": ["extract", "--stories", str(FIXTURE), "-m", "{tiny}", "--out", "{tmp}/run", "--no-cache"],
    "steer": ["steer", "--vectors", "{run}", "--concept", "calm=1", "--prompt", "Hi"],
    "read": ["read", "--vectors", "{run}", "--text", "The lake."],
    "quality-report": ["quality-report", "{run}", "-m", "{tiny}"],
    "import": ["import", "--gguf", "{root}/cv.gguf", "-m", "{tiny}", "--out", "{tmp}/imp"],
    "train-phase": ["train-phase", "-m", "{tiny}", "--text", "{root}/texts.txt", "--steps", "1", "--out", "{tmp}/ph"],
    "intervene": ["intervene", "--run", "{phase}", "--force-R", "0.3", "--out", "{tmp}/iv"],
    "steer-eval": ["steer-eval", "--vectors", "{run}", "--out", "{tmp}/se"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("option", "needle"),
    [(["--device", "cuda:5"], "device 'cuda:5' is not usable"), (["--dtype", "float16"], "cannot run --dtype float16")],
)
def test_every_command_that_loads_a_model_checks_device_and_dtype(
    command, option, needle, inputs, tmp_path, monkeypatch
):
    if option[0] == "--device" and torch.cuda.device_count() > 5:
        pytest.skip("cuda:5 exists here")
    import steerkit.models.loading as loading

    def no_half(device: str, dtype: str) -> None:
        raise RuntimeError(f"{dtype} is not implemented here")

    monkeypatch.setattr(loading, "_dtype_probe", no_half)
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    args = [a.format(tmp=tmp_path, **inputs) for a in COMMANDS[command]] + option
    before = sorted(tmp_path.rglob("*")), sorted(Path(inputs["root"]).rglob("*"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert (sorted(tmp_path.rglob("*")), sorted(Path(inputs["root"]).rglob("*"))) == before  # nothing written
