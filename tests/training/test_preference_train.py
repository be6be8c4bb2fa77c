"""DPO / ORPO training on tiny random models: step 1 of DPO is ln 2 with zero rewards, the reference
is stored once with a fingerprint (recomputed with a warning on a mismatch), exact resume after
SIGTERM (adamw and APOLLO-Mini on LoRA), --from a parent run, the per-side metrics, and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import tiny_models
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from steerkit.cli import main
from steerkit.models import from_model
from steerkit.training import TrainConfig, load_phase_run, resume, train

WORDS = "the cat sat on a warm mat while rain fell over the quiet town and she made tea for her old friend".split()


def _pairs(tmp_path, n=12, name="pairs.jsonl"):
    g = torch.Generator().manual_seed(1)

    def words(k):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist())

    rows = [{"prompt": words(3), "chosen": " " + words(3) + ".", "rejected": " " + words(4) + "!", "scenario": f"s{i % 6}"}
            for i in range(n)]  # fmt: skip
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _lm(tiny_tok):
    return from_model(tiny_models.build("llama"), tiny_tok, spec="tiny-llama")


def _cfg(pairs, **kw):
    base = {"model": "tiny", "objective": "dpo", "pairs": str(pairs), "seq_len": 24, "batch_size": 2, "steps": 3,
            "val_every": 2, "checkpoint_every": 2, "lr": 0.02, "layer": 1, "val_fraction": 0.34}  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("step_seconds")
    return rows


def test_dpo_step1_is_ln2_zero_rewards_and_reference_is_stored(tmp_path, tiny_tok):
    res = train(_cfg(_pairs(tmp_path), steps=2), tmp_path / "run", lm=_lm(tiny_tok))
    assert res.status == "finished"
    first = _rows(tmp_path / "run")[0]
    assert abs(first["pref_loss"] - math.log(2)) < 1e-4
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[k]) < 1e-5, k
    for side in ("chosen", "rejected"):  # R, U, R*U and tone separately on the two completions
        assert {f"{side}/R", f"{side}/U", f"{side}/RU", f"{side}/tone"} <= first.keys()
    assert first["loss"] == pytest.approx(first["pref_loss"] + 0.1 * first["u_loss"], abs=1e-5)
    ref = load_file(tmp_path / "run" / "reference.safetensors")
    assert ref["chosen"].shape == (12,) and any(k.startswith("start.phase.") for k in ref)
    meta = json.loads((tmp_path / "run" / "reference.json").read_text())
    assert len(meta["fingerprint"]) == 64 and meta["n_pairs"] == 12
    last = _rows(tmp_path / "run")[-1]
    assert {"val/rewards/accuracies", "val/rewards/accuracies_ci", "val/rewards/margins", "val/chosen/R"} <= last.keys()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["resolved"]["n_pairs"] == [8, 4]  # whole scenarios held out (2 of 6)
    res = CliRunner().invoke(main, ["plot-metrics", str(tmp_path / "run")])  # reward curves, R on chosen vs rejected
    assert res.exit_code == 0, res.output
    pngs = {p.name for p in (tmp_path / "run" / "plots").glob("*.png")}
    assert {"rewards.png", "preference_r.png", "loss.png", "r.png"} <= pngs


@pytest.mark.parametrize("objective, optimizer", [("orpo", "adamw"), ("dpo", "apollo-mini"), ("orpo", "apollo")])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, tiny_tok, objective, optimizer):
    extra = {"lora_rank": 2, "lora_blocks": "2:-1", "lora_lr": 0.01} if optimizer != "adamw" else {}
    if optimizer == "apollo":  # full APOLLO (channel-wise scaling), at a rank the tiny adapters admit
        extra["apollo_rank"] = 2
    cfg = _cfg(_pairs(tmp_path), objective=objective, optimizer=optimizer, **extra)
    a = train(cfg, tmp_path / "a", lm=_lm(tiny_tok))
    assert a.status == "finished"
    b = train(cfg, tmp_path / "b", lm=_lm(tiny_tok), on_step=_term_at(2))
    assert b.status == "interrupted" and b.step == 2 and b.signal == signal.SIGTERM
    assert resume(tmp_path / "b", lm=_lm(tiny_tok)).status == "finished"
    _same_runs(tmp_path / "a", tmp_path / "b")
    if optimizer != "adamw":  # APOLLO trained the LoRA adapters of block 2 only
        wa = load_file(tmp_path / "a" / "phase_core.safetensors")
        loras = {k for k in wa if k.startswith("lora.")}
        assert loras and all(".layers.2." in k for k in loras)
        assert any(float(wa[k].abs().max()) > 0 for k in loras if "lora_B" in k)


def _term_at(stop):
    def term(step, m):
        if step == stop:
            os.kill(os.getpid(), signal.SIGTERM)

    return term


def _same_runs(a, b):
    assert _rows(a) == _rows(b)  # every loss, reward, R, U, grad norm, validation value
    wa, wb = load_file(a / "phase_core.safetensors"), load_file(b / "phase_core.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dpo_sigterm_resume_with_reference_mismatch_recomputes_with_warning(tmp_path, tiny_tok, caplog):
    cfg = _cfg(_pairs(tmp_path))
    train(cfg, tmp_path / "a", lm=_lm(tiny_tok))
    b = train(cfg, tmp_path / "b", lm=_lm(tiny_tok), on_step=_term_at(2))
    assert b.status == "interrupted"
    meta = tmp_path / "b" / "reference.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "0" * 64}))
    assert resume(tmp_path / "b", lm=_lm(tiny_tok)).status == "finished"
    assert "does not match" in caplog.text
    _same_runs(tmp_path / "a", tmp_path / "b")  # recomputed from the stored start: the same values
    fp_a = json.loads((tmp_path / "a" / "reference.json").read_text())["fingerprint"]
    assert json.loads(meta.read_text())["fingerprint"] == fp_a


def test_from_parent_starts_from_its_core_and_records_it(tmp_path, tiny_tok):
    texts = tmp_path / "t.txt"
    texts.write_text("\n---\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) for i in range(8)))
    ce = TrainConfig(
        model="tiny", texts=(str(texts),), seq_len=16, batch_size=2, steps=2, val_every=2, layer=2, lr=0.05
    )
    train(ce, tmp_path / "parent", lm=_lm(tiny_tok))
    parent = load_file(tmp_path / "parent" / "phase_core.safetensors")
    child = train(
        _cfg(_pairs(tmp_path), parent=str(tmp_path / "parent"), steps=1), tmp_path / "child", lm=_lm(tiny_tok)
    )
    assert child.status == "finished"
    cfg = json.loads((tmp_path / "child" / "config.json").read_text())
    assert cfg["config"]["layer"] == 2 and cfg["resolved"]["parent"]["run"] == str((tmp_path / "parent").resolve())
    start = load_file(tmp_path / "child" / "reference.safetensors")
    assert all(torch.equal(start[f"start.{k}"], v) for k, v in parent.items())
    _, core, _, _ = load_phase_run(tmp_path / "child", lm=_lm(tiny_tok))
    assert not torch.equal(core.omega.detach(), parent["phase.core.omega"])  # and it trained on


def test_lora_blocks_range_with_negative_end_trains_exactly_those_blocks(tmp_path, tiny_dir_factory):
    args = ["train-phase", "--model", str(tiny_dir_factory("llama")), "--objective", "orpo",
            "--pairs", str(_pairs(tmp_path)), "--seq-len", "24", "--batch-size", "2", "--steps", "2", "--val-every", "2",
            "--lora-rank", "2", "--lora-blocks", "1:-1", "--out", str(tmp_path / "runs"), "--name", "r"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    state = load_file(tmp_path / "runs" / "r" / "phase_core.safetensors")
    blocks = {int(k.split(".layers.")[1].split(".")[0]) for k in state if k.startswith("lora.")}
    assert blocks == {1, 2}  # 1:-1 on 4 blocks: 1 and 2, not the last, not all
    cfg = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())["config"]
    assert cfg["lora_blocks"] == [1, 2]


def test_preference_seq_len_defaults_to_trl_max_length_ce_to_64(tmp_path, tiny_dir_factory):
    model = str(tiny_dir_factory("llama"))
    texts = tmp_path / "t.txt"
    texts.write_text(
        "\n---\n".join(f"story {i}: " + "the cat sat on the mat and then it ran. " * 20 for i in range(10))
    )
    common = [
        "--model",
        model,
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--val-every",
        "1",
        "--out",
        str(tmp_path / "runs"),
    ]
    for name, extra in (("p", ["--objective", "dpo", "--pairs", str(_pairs(tmp_path))]), ("c", ["--text", str(texts)])):
        res = CliRunner().invoke(main, ["train-phase", *common, "--name", name, *extra])
        assert res.exit_code == 0, res.output
    cfg = {n: json.loads((tmp_path / "runs" / n / "config.json").read_text())["config"] for n in "pc"}
    assert cfg["p"]["seq_len"] == 1024 and cfg["c"]["seq_len"] == 64


def _bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


GOOD = {"prompt": "the cat", "chosen": " sat.", "rejected": " ran."}


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "missing field(s) rejected"),
        ("empty", "empty chosen"),
        ("same", "identical"),
        ("long_prompt", "2 of 3 pairs"),
        ("no_pairs", "--objective dpo needs --pairs"),
        ("not_run", "not a train-phase run"),
        ("other_model", "another model"),
        ("beta0", "--beta must be a finite number > 0"),
        ("beta_nan", "--beta must be a finite number > 0"),
        ("latin1", "not UTF-8"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_dir_factory, case, needle):
    model = str(tiny_dir_factory("llama"))
    line = json.dumps(GOOD) + "\n"
    extra: list[str] = []
    pairs = _pairs(tmp_path)
    if case == "missing":
        pairs = _bad(tmp_path, "p.jsonl", (line + json.dumps({"prompt": "a", "chosen": "b"}) + "\n").encode())
    elif case == "empty":
        pairs = _bad(tmp_path, "p.jsonl", (line + json.dumps({**GOOD, "chosen": "  "}) + "\n").encode())
    elif case == "same":
        pairs = _bad(tmp_path, "p.jsonl", json.dumps({**GOOD, "rejected": GOOD["chosen"]}).encode())
    elif case == "long_prompt":
        long = {**GOOD, "prompt": " ".join(WORDS * 3)}
        pairs = _bad(tmp_path, "p.jsonl", (json.dumps(long) + "\n" + line + json.dumps(long) + "\n").encode())
    elif case == "not_run":
        (tmp_path / "junk").mkdir()
        extra = ["--from", str(tmp_path / "junk")]
    elif case == "other_model":
        other = tmp_path / "other"
        train(_cfg(_pairs(tmp_path, name="o.jsonl"), steps=1), other, lm=_lm_of(tiny_dir_factory, "qwen2"))
        extra = ["--from", str(other)]
    elif case == "beta0":
        extra = ["--beta", "0"]
    elif case == "beta_nan":
        extra = ["--beta", "nan"]
    elif case == "latin1":
        pairs = _bad(
            tmp_path, "p.jsonl", (line + '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n').encode("latin-1")
        )
    objective = ["--objective", "dpo"] + ([] if case == "no_pairs" else ["--pairs", str(pairs)])
    args = ["train-phase", "--model", model, *objective, "--seq-len", "16", "--out", str(tmp_path / "runs"), *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _lm_of(tiny_dir_factory, family):
    from steerkit.models import load

    return load(str(tiny_dir_factory(family)))
