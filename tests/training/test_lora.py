"""LoRA through peft: only the adapters (and the core) train, the in-process model is left as it
was, resume is exact, and a finished run's adapters are merged into the base weights so the
merged model computes what the peft-wrapped one does (and W' = W + alpha/r B A by hand)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from steerkit.cli import main
from steerkit.training import load_phase_run, lora, resume, train

from .test_train import _cfg, _lm, _rows, _texts


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba", "qwen3_5"])
def test_lora_trains_only_adapters_and_leaves_the_model_as_it_was(family, tmp_path, tiny_tok):
    lm = _lm(tiny_tok, family)
    names = [n for n, _ in lm.model.named_modules()]
    before = {k: v.detach().clone() for k, v in lm.model.named_parameters()}
    grads = {k: v.requires_grad for k, v in lm.model.named_parameters()}
    cfg = _cfg(_texts(tmp_path), steps=4, lora_rank=4, lora_lr=0.01, lora_blocks=(1, 2))
    r = train(cfg, tmp_path / "r", lm=lm)
    assert r.status == "finished"
    assert [n for n, _ in lm.model.named_modules()] == names  # wrappers removed
    assert all(torch.equal(v, before[k]) for k, v in lm.model.named_parameters())  # base untouched
    assert {k: v.requires_grad for k, v in lm.model.named_parameters()} == grads
    state = load_file(tmp_path / "r" / "phase_core.safetensors")
    lora_keys = [k for k in state if k.startswith("lora.")]
    prefix = lm.adapter.blocks_path
    assert lora_keys and all(k.startswith((f"lora.{prefix}.1.", f"lora.{prefix}.2.")) for k in lora_keys)
    assert any(".lora_B." in k and state[k].abs().max() > 0 for k in lora_keys)  # B left its zero init
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]
    assert resolved["trainable"]["lora"] > 0 and resolved["lora_targets"]


def test_merged_run_equals_peft_wrapped_model_and_the_hand_formula(tmp_path, tiny_tok):
    cfg = _cfg(_texts(tmp_path), steps=4, lora_rank=4, lora_alpha=8.0, lora_lr=0.05, lora_blocks=(2,))
    train(cfg, tmp_path / "r", lm=_lm(tiny_tok))
    state = load_file(tmp_path / "r" / "phase_core.safetensors")
    targets = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["lora_targets"]
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 11]])
    # oracle 1: peft's own wrapped (unmerged) model with the run's adapters
    wrapped = _lm(tiny_tok).model
    lora.inject(wrapped, targets, 4, 8.0)
    with torch.no_grad():
        for n, p in lora.lora_state(wrapped).items():
            p.copy_(state[f"lora.{n}"])
        want = wrapped(ids).logits
    base = _lm(tiny_tok)
    with torch.no_grad():
        plain = base.model(ids).logits
    w0 = base.model.get_submodule("model.layers.2.self_attn.o_proj").weight.detach().clone()
    lm, *_ = load_phase_run(tmp_path / "r", lm=base)
    with torch.no_grad():
        got = lm.model(ids).logits
    assert [n for n, _ in lm.model.named_modules()] == [n for n, _ in _lm(tiny_tok).model.named_modules()]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-4  # the adapters changed the model
    # oracle 2: W' = W + alpha / r * B @ A, by hand
    a = state["lora.model.layers.2.self_attn.o_proj.lora_A.default.weight"]
    b = state["lora.model.layers.2.self_attn.o_proj.lora_B.default.weight"]
    w1 = lm.model.get_submodule("model.layers.2.self_attn.o_proj").weight
    torch.testing.assert_close(w1, w0 + 8.0 / 4 * b @ a, atol=1e-6, rtol=1e-6)


def test_lora_resume_equals_uninterrupted(tmp_path, tiny_tok):
    cfg = _cfg(_texts(tmp_path), lora_rank=2, lora_lr=0.01, lora_blocks=(1,))
    train(cfg, tmp_path / "a", lm=_lm(tiny_tok))
    b = train(cfg, tmp_path / "b", lm=_lm(tiny_tok), on_step=lambda s, m: "stop" if s == 3 else None)
    assert b.status == "interrupted"
    assert resume(tmp_path / "b", lm=_lm(tiny_tok)).status == "finished"
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    wa, wb = load_file(tmp_path / "a" / "phase_core.safetensors"), load_file(tmp_path / "b" / "phase_core.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lora-rank", "2", "--lora-blocks", "9"], "--lora-blocks [9]: the model has blocks 0..3"),
        (["--lora-rank", "2", "--unfreeze", "1", "--lora-blocks", "0:2"], "both unfrozen and LoRA-adapted"),
        (["--lora-blocks", "1"], "--lora-blocks needs --lora-rank > 0"),
    ],
)
def test_lora_bad_input_exit_2(args, needle, tmp_path, tiny_dir_factory):
    d = tiny_dir_factory("llama")
    text = _texts(tmp_path)
    res = CliRunner().invoke(
        main,
        [
            "train-phase",
            "--model",
            str(d),
            "--text",
            str(text),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "runs"),
            *args,
        ],
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert not list((tmp_path / "runs").glob("*"))  # no run folder at all
