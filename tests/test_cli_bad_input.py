"""Bad input to the CLI: one line `error: ...`, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_models
import torch
import transformers as T
from click.testing import CliRunner

from steerkit.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_small"


def _save(model: torch.nn.Module, d: Path, tok) -> Path:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _llama(hidden: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=tiny_models.VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tok) -> dict[str, Path]:
    """tiny: hidden 32, 4 blocks (the run's model); wide: hidden 48; shallow: hidden 32, 2 blocks."""
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny": _save(tiny_models.build("llama"), root / "tiny-llama", tiny_tok),
        "wide": _save(_llama(48, 4), root / "wide-llama", tiny_tok),
        "shallow": _save(_llama(32, 2), root / "shallow-llama", tiny_tok),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, models) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r1"
    args = ["extract", "--stories", str(FIXTURE), "--model", str(models["tiny"]), "--layers", "1,3"]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--allow-untrained", "--no-cache"])
    assert res.exit_code == 0, res.output
    return out


def _fill(tmp_path: Path) -> dict[str, Path]:
    """Inputs a test case may name: an existing file, a non-UTF-8 file, a folder, texts, a fake
    train-phase run and a corpus with a malformed manifest."""
    (tmp_path / "afile.txt").write_text("precious")
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "note.txt").write_text("a text")
    (tmp_path / "texts.txt").write_text("The fox ran home.\nRain again.\n")
    (tmp_path / "phase").mkdir()
    (tmp_path / "phase" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    shutil.copytree(FIXTURE, tmp_path / "badcorpus")
    (tmp_path / "badcorpus" / "manifest.json").write_text("{not json")
    names = ("afile.txt", "latin1.txt", "adir", "texts.txt", "phase", "badcorpus")
    return {n.split(".")[0]: tmp_path / n for n in names}


RUN = ["--vectors", "{run}"]
STEER = ["steer", *RUN, "--concept", "calm=1"]
CAPTURE = ["capture", "-m", "{tiny}", "--texts", "{texts}", "--cache-dir", "none", "--allow-untrained"]
TRAIN = ["train-phase", "-m", "{tiny}", "--text", "{texts}", "--steps", "2", "--seq-len", "8"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is usable here")


def _case(name: str, args: list[str], needle: str, *marks: pytest.MarkDecorator) -> object:
    return pytest.param(args, needle, id=name, marks=marks)


CASES = [
    # 1. vectors from one model, -m another of a different width or depth
    _case("read-wider-model", ["read", *RUN, "--text", "The lake.", "-m", "{wide}"], "hidden size 32"),
    _case("read-shallower-model", ["read", *RUN, "--text", "The lake.", "-m", "{shallow}"], "layer 3"),
    _case("steer-wider-model", [*STEER, "--prompt", "Hi", "-m", "{wide}"], "hidden size 32"),
    _case("steer-shallower-model", [*STEER, "--layer", "3", "--prompt", "Hi", "-m", "{shallow}"], "layer 3"),
    # 2. a device torch cannot use
    _case(
        "device-foo", ["verify", "-m", "{tiny}", "--device", "foo", "--allow-untrained"], "device 'foo' is not usable"
    ),
    _case(
        "device-cuda-on-cpu-torch",
        ["verify", "-m", "{tiny}", "--device", "cuda"],
        "device 'cuda' is not usable",
        NO_CUDA,
    ),
    # 3. --out is an existing file
    _case("capture-out-file", [*CAPTURE, "--out", "{afile}"], "--out {afile} is a file"),
    _case("plot-metrics-out-file", ["plot-metrics", "{phase}", "--out", "{afile}"], "--out {afile} is a file"),
    _case("train-phase-out-file", [*TRAIN, "--out", "{afile}"], "--out {afile} is a file"),
    # 4. --top < 1
    _case("read-top-negative", ["read", *RUN, "--text", "The lake.", "--top", "-1"], "--top"),
    _case("read-top-zero", ["read", *RUN, "--text", "The lake.", "--top", "0"], "--top"),
    # 5. --file not UTF-8 / a folder
    _case("read-file-not-utf8", ["read", *RUN, "--file", "{latin1}"], "not UTF-8"),
    _case("read-file-folder", ["read", *RUN, "--file", "{adir}"], "is a folder"),
    # 6. steer: no tokens to generate, empty prompt
    _case("steer-max-new-tokens-zero", [*STEER, "--prompt", "Hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    _case("steer-max-new-tokens-negative", [*STEER, "--prompt", "Hi", "--max-new-tokens", "-3"], "--max-new-tokens"),
    _case("steer-empty-prompt", [*STEER, "--prompt", ""], "prompt is empty"),
    # 7. capture --max-tokens < 1
    _case("capture-max-tokens-zero", [*CAPTURE, "--out", "{tmp}/caps", "--max-tokens", "0"], "--max-tokens"),
    _case("capture-max-tokens-negative", [*CAPTURE, "--out", "{tmp}/caps", "--max-tokens", "-1"], "--max-tokens"),
    # 9. block lists that are not integers
    _case("train-phase-lora-blocks", [*TRAIN, "--out", "{tmp}/runs", "--lora-blocks", "foo"], "--lora-blocks 'foo'"),
    _case("train-phase-unfreeze", [*TRAIN, "--out", "{tmp}/runs", "--unfreeze", "foo"], "--unfreeze 'foo'"),
    # 10. a manifest file instead of the corpus folder
    _case("corpus-check-manifest-file", ["corpus", "check", str(FIXTURE / "manifest.json")], "is a file"),
    _case("corpus-stats-manifest-file", ["corpus", "stats", str(FIXTURE / "manifest.json")], "is a file"),
]


@pytest.mark.parametrize("args, needle", CASES)
def test_bad_input_one_line_exit_2(args, needle, models, run_dir, tmp_path):
    paths = {**_fill(tmp_path), **models, "run": run_dir, "tmp": tmp_path}
    args = [a.format(**paths) for a in args]
    needle = needle.format(**paths)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "afile.txt").read_text() == "precious"


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_corpus_stats_reports_errors_like_check(extra, tmp_path):
    bad = _fill(tmp_path)["badcorpus"]
    res = CliRunner().invoke(main, ["corpus", "stats", str(bad), *extra])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("error: ") for ln in lines), res.output
    assert "malformed JSON" in lines[0]
    check = CliRunner().invoke(main, ["corpus", "check", str(bad)])
    assert [ln for ln in check.output.splitlines() if ln.startswith("error:")] == lines
