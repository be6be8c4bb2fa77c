"""`steerkit intervene` end to end on a tiny model with a briefly trained core: default run and output
folder, one-line exit-2 errors for bad input, and the same files from the same inputs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from experiments.helpers import WORDS, word_prompts
from steerkit.cli import main
from steerkit.experiments import InterveneConfig, intervene
from steerkit.phase import CouplingConfig
from steerkit.training import TrainConfig, train
from steerkit.vectors.readout import ConceptVectors


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir_factory):
    """A tiny llama saved to disk, a 3-step train-phase run and a small prompt file."""
    root = tmp_path_factory.mktemp("iv")
    model_dir = tiny_dir_factory("llama")
    g = torch.Generator().manual_seed(0)
    stories = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(12)]
    (root / "texts.txt").write_text("\n---\n".join(stories))
    cfg = TrainConfig(model=str(model_dir), texts=(str(root / "texts.txt"),), seq_len=16, batch_size=2, steps=3,
                      val_every=3, val_fraction=0.2, layer="0.5", coupling=CouplingConfig("additive", alpha=0.5))  # fmt: skip
    train(cfg, root / "runs" / "phase1", handle_signals=False)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p.text, "continuation": p.continuation}) + "\n" for p in word_prompts(6))
    )
    return root


def _one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_no_trained_core_exits_2_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERKIT_RUNS", str(tmp_path / "runs"))
    _one_line_error(CliRunner().invoke(main, ["intervene", "--force-R", "0.3"]), "steerkit train-phase")
    (tmp_path / "empty").mkdir()
    _one_line_error(
        CliRunner().invoke(main, ["intervene", "--run", str(tmp_path / "empty"), "--force-R", "0.3"]),
        "no trained phase core",
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--force-R", "1.5"], "[0, 1]"),
        (["--force-R", "-0.2"], "[0, 1]"),
        (["--grid", "0:2:0.5"], "[0, 1]"),
        (["--grid", "0-1"], "START:STOP:STEP"),
        ([], "--force-R"),
        (["--force-R", "0.3", "--prompts", "EMPTY"], "no prompts"),
        (["--force-R", "0.3", "--prompts", "missing.jsonl"], "does not exist"),
        (["--force-R", "0.3", "--readout", "nowhere"], "does not exist"),
        (["--force-R", "0.3", "--seeds", "0"], "seeds"),
    ],
)
def test_bad_input_exits_2_one_line(trained, tmp_path, monkeypatch, args, needle):
    monkeypatch.setenv("STEERKIT_RUNS", str(trained / "runs"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# no prompts here\n\n")
    args = [
        str(empty) if a == "EMPTY" else str(tmp_path / a) if a.endswith(".jsonl") or a == "nowhere" else a for a in args
    ]
    _one_line_error(CliRunner().invoke(main, ["intervene", *args]), needle)


def test_cli_end_to_end_and_deterministic(trained, monkeypatch):
    runs = trained / "runs"
    monkeypatch.setenv("STEERKIT_RUNS", str(runs))
    args = ["intervene", "--force-R", "0.2", "--force-R", "0.9", "--prompts", str(trained / "prompts.jsonl"),
            "--seeds", "2", "--max-new-tokens", "5", "--permutations", "1000", "--bootstrap", "200"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    outs = [d for d in runs.iterdir() if d.name.endswith("-intervene")]
    assert len(outs) == 1 and f"report: {outs[0]}/intervention.md" in res.output
    out = outs[0]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dose_response.png", "intervention.json", "intervention.md", "run.json", "washout.png"]
    rep = json.loads((out / "intervention.json").read_text())
    assert rep["source"]["run"] == str(runs / "phase1") and rep["layer"] == 2 and rep["sampler"] == "batched"
    assert rep["levels_applied"] == [0.2, 0.9] and len(rep["prompts"]) == 6
    neg = rep["experiments"]["negative"]
    assert all(t["p"] == 1.0 for t in neg["tests"] if t["measure"] in ("kl", "entropy", "nll", "topk"))
    md = (out / "intervention.md").read_text()
    assert "Negative control" in md and "Positive control" in md and "## Verdicts" in md
    # the same inputs through the library give the same numbers; a readout adds probe measures
    g = torch.Generator().manual_seed(0)
    vecs = {la: torch.nn.functional.normalize(torch.randn(2, 32, generator=g), dim=-1) for la in (1, 3)}
    ConceptVectors(["calm", "afraid"], [1, 3], vecs, {la: torch.ones(2) for la in (1, 3)}).save(trained / "readout")
    cfg = InterveneConfig(levels=(0.2, 0.9), seeds=2, max_new_tokens=5, permutations=1000, bootstrap=200)
    out2, rep2 = intervene(cfg, runs / "phase1", trained / "prompts.jsonl", trained / "readout", out=trained / "again")
    again = json.loads((out2 / "intervention.json").read_text())
    assert again["probe"] == {"layer": 3, "concepts": ["calm", "afraid"]}
    for name, e in rep["experiments"].items():
        per = again["experiments"][name]["per_prompt"]
        assert {m: v for m, v in per.items() if not m.startswith("probe:")} == e["per_prompt"]
        assert "probe:calm" in per and "probe:afraid" in per
    assert all(v == [0.0, 0.0] for v in again["experiments"]["negative"]["per_prompt"]["probe:calm"])
    assert not list(trained.glob(".tmp-*"))
