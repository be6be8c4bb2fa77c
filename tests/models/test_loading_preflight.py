"""Loading specs, preflight verdicts and one-line CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_models
import torch
from click.testing import CliRunner
from conftest import SHARED_RWKV

from steerkit.cli import main
from steerkit.errors import ModelLoadError, PreflightError
from steerkit.models import from_model, load, preflight


def _save_tiny(tmp_path, tiny_tok, family="llama"):
    d = tmp_path / family
    model = tiny_models.build(family)
    model.save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d, model


def test_tokenizer_round_trip_survives_save(tmp_path, tiny_tok):
    d, _ = _save_tiny(tmp_path, tiny_tok, "qwen2")
    lm = load(str(d))
    text = "The quick brown fox, héllo!"
    assert lm.tokenizer(text).input_ids == tiny_tok(text).input_ids
    assert lm.tokenizer.decode(lm.tokenizer(text).input_ids) == text


def test_local_dir_loads_exact_weights(tmp_path, tiny_tok):
    d, model = _save_tiny(tmp_path, tiny_tok)
    lm = load(str(d))
    assert lm.info["missing_keys"] == [] and lm.info["source"] == "dir"
    for (n, p), (_, q) in zip(model.state_dict().items(), lm.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_preflight_fails_degenerate_random_model(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(PreflightError) as e:
        preflight.check(lm)
    assert "are the pretrained weights loaded?" in str(e.value)
    assert preflight.check(lm, allow_untrained=True).ok


def test_preflight_names_missing_keys(tmp_path, tiny_tok):
    from safetensors.torch import load_file, save_file

    d, _ = _save_tiny(tmp_path, tiny_tok)
    sd = load_file(d / "model.safetensors")
    dropped = "model.layers.1.mlp.down_proj.weight"
    del sd[dropped]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    lm = load(str(d))
    with pytest.raises(PreflightError) as e:
        preflight.check(lm, allow_untrained=True)
    assert "missing keys" in str(e.value) and dropped in str(e.value)


def test_ngram_metrics():
    assert preflight.repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0
    assert preflight.repeated_ngram_share([7] * 10) == pytest.approx(7 / 8)
    assert preflight.distinct_share([1, 1, 2, 2]) == 0.5


@pytest.mark.real
def test_shared_rwkv_logits_and_preflight(shared_rwkv):
    expected = np.fromfile(SHARED_RWKV / "expected-logits-4v0-660K.bin", dtype=np.float32)
    ids = torch.tensor([[0x22, 0x69, 0x6E]])
    with torch.no_grad():
        logits = shared_rwkv.model(ids).logits[0, -1].numpy()
    assert np.abs(logits - expected).max() < 1e-4
    rep = preflight.check(shared_rwkv)
    assert rep.ok and rep.table["family"] == "rwkv"


@pytest.mark.real
def test_cli_verify_smollm_json():
    """The default model (no --model) passes the preflight, through the CLI."""
    res = CliRunner().invoke(main, ["verify", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["ok"] is True and not rep["failures"]
    assert rep["table"]["blocks"] == 30 and rep["table"]["hidden size"] == 576
    assert rep["table"]["reference loss ratio"] < 0.5 and rep["table"]["parameters"] == 134515008


@pytest.mark.parametrize(
    "spec_kind, needle",
    [
        ("missing", "does not exist"),
        ("noconfig", "no config.json"),
        ("corrupt", "corrupt"),
        ("alias", "unknown model"),
        ("hub", "HF_HUB_OFFLINE"),
    ],
)
def test_bad_specs_exit_2_one_line(tmp_path, tiny_tok, spec_kind, needle):
    if spec_kind == "missing":
        spec = str(tmp_path / "nope")
    elif spec_kind == "noconfig":
        (tmp_path / "empty").mkdir()
        spec = str(tmp_path / "empty")
    elif spec_kind == "corrupt":
        d, _ = _save_tiny(tmp_path, tiny_tok)
        (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
        spec = str(d)
    elif spec_kind == "alias":
        spec = "smollm3-9000"
    else:
        spec = "some-org/definitely-not-cached-model"
    res = CliRunner().invoke(main, ["verify", "--model", spec])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert needle in lines[0], lines[0]
    with pytest.raises(ModelLoadError):
        load(spec)


def test_from_model_records_fingerprint(tiny_tok):
    a = from_model(tiny_models.build("llama", seed=0), tiny_tok, spec="x")
    b = from_model(tiny_models.build("llama", seed=1), tiny_tok, spec="x")
    assert a.info["fingerprint"] != b.info["fingerprint"]
