"""Scale-out under torchrun (issue 27): the split of the work, the same run folder at any world size,
a failing rank named in one line, kill -9 of a rank then a resume with the same readout bit for bit.

The launches are real `torchrun --standalone --nproc-per-node 2` subprocesses on gloo (CPU) over a tiny
random Llama; each takes about 10 s on a loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_runs import extract_args

from steerkit import dist
from steerkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "corpus_small"
LAUNCH_TIMEOUT = 240


# ---- the pure parts ----------------------------------------------------------------------------------
def test_shard_splits_every_item_once_and_balances():
    weights = [5, 1, 1, 9, 3, 3, 2, 8, 1, 4]
    for size in (1, 2, 3, 4):
        parts = [dist.shard(weights, dist.World(r, size)) for r in range(size)]
        assert sorted(i for p in parts for i in p) == list(range(len(weights)))
        loads = [sum(weights[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(weights)
        assert all(p == sorted(p) for p in parts)
    assert dist.shard([], dist.World(1, 2)) == []
    assert dist.shard([1, 1, 1], dist.World(0, 5)) == [0] and dist.shard([1, 1, 1], dist.World(4, 5)) == []


def test_a_world_of_one_is_a_plain_run(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.launched() and not dist.active() and dist.is_main()
    assert dist.world() == dist.World(0, 1, 0)
    assert dist.init() == dist.World(0, 1, 0)
    assert dist.gather({"a": 1}) == [{"a": 1}] and dist.all_gather(3) == [3]
    dist.barrier()
    assert dist.shard([3, 1, 2]) == [0, 1, 2]
    assert dist.local_device("cuda") == "cuda"
    progress = dist.scaled_progress(4, 3, 6)  # 4 cached, this rank owns 3 of the 6 to compute
    assert [progress(k) for k in range(4)] == [4, 6, 8, 10]


def test_bad_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("STEERKIT_DIST_TIMEOUT", "soon")
    with pytest.raises(dist.SteerkitError, match="STEERKIT_DIST_TIMEOUT"):
        dist.timeout_seconds()
    monkeypatch.setenv("STEERKIT_DIST_TIMEOUT", "30")
    assert dist.timeout_seconds() == 30.0


# ---- launches ----------------------------------------------------------------------------------------
def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STEERKIT_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(args: list[str], cache: Path, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node 2 -m steerkit ARGS` (or a child script), this worktree's steerkit."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    target = ["-m", "steerkit"] if script is None else [script]
    return subprocess.run(
        [*launcher, *target, *args], cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )


def _extract_args(model: Path, out: Path, *extra: str) -> list[str]:
    return extract_args(model, out, "--max-batch-tokens", "24", *extra)


@pytest.fixture(scope="module")
def tiny_dir(tiny_dir_factory):
    return tiny_dir_factory("llama")


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dir):
    """The single-process extract (no cache): the reference every launch must equal."""
    out = tmp_path_factory.mktemp("single") / "run"
    res = CliRunner().invoke(main, _extract_args(tiny_dir, out, "--no-cache"))
    assert res.exit_code == 0, res.output
    return out


RUN_FILES = ("readout.safetensors", "activations.safetensors", "mlp_down.safetensors", "texts.json")


def _same_run(a: Path, b: Path) -> None:
    for name in RUN_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = json.loads((a / "readout.json").read_text()), json.loads((b / "readout.json").read_text())
    assert ra == rb


def test_extract_under_torchrun_equals_one_process(tmp_path, tiny_dir, single):
    out = tmp_path / "run"
    proc = torchrun(_extract_args(tiny_dir, out), tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_run(single, out)  # vectors bit-identical (CPU fp32), activations too
    assert proc.stdout.count("extracted 4 concepts") == 1  # rank 1 stays quiet
    stats = json.loads((out / "run.json").read_text())["stats"]
    assert stats["n_computed"] == stats["n_unique"] and stats["n_batches"] > 2
    # both ranks wrote their shards into the shared activation cache: a rerun computes nothing
    again = torchrun(_extract_args(tiny_dir, tmp_path / "again"), tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "run.json").read_text())["stats"]["n_computed"] == 0
    _same_run(single, tmp_path / "again")


KILL_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from steerkit.capture import cache as C
    if os.environ["RANK"] == "1":  # rank 1 dies without any cleanup after writing two batches
        put, calls = C.ActivationCache.put_rows, []
        def put_rows(self, shas, tensors):
            put(self, shas, tensors)
            self.flush()
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        C.ActivationCache.put_rows = put_rows
    from steerkit.cli import main
    main(sys.argv[1:], prog_name="steerkit")
    """
)


def test_kill_9_of_one_rank_then_rerun_resumes_bit_for_bit(tmp_path, tiny_dir, single):
    child = tmp_path / "child.py"
    child.write_text(KILL_CHILD)
    cache, out = tmp_path / "cache", tmp_path / "run"
    killed = torchrun(_extract_args(tiny_dir, out), cache, script=str(child))
    assert killed.returncode != 0  # the whole launch fails, no hang
    assert "exitcode  : -9" in killed.stderr or "Signal 9" in killed.stderr, killed.stderr[-3000:]
    assert not (out / "run.json").exists()
    rerun = torchrun(_extract_args(tiny_dir, out), cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    stats = json.loads((out / "run.json").read_text())["stats"]
    assert 0 < stats["n_cached"] < stats["n_unique"], stats  # resumed from the cache, computed the rest
    _same_run(single, out)


FAIL_CHILD = textwrap.dedent(
    """
    import os, sys
    from steerkit.capture import engine
    if os.environ["RANK"] == "1":
        def broken(*a, **k):
            raise RuntimeError("disk on fire")
        engine.hooks_runner = broken
    from steerkit.cli import main
    main(sys.argv[1:], prog_name="steerkit")
    """
)


def test_a_failing_rank_fails_the_launch_with_one_line_naming_it(tmp_path, tiny_dir):
    child = tmp_path / "child.py"
    child.write_text(FAIL_CHILD)
    proc = torchrun(_extract_args(tiny_dir, tmp_path / "run", "--no-cache"), tmp_path / "cache", script=str(child))
    assert proc.returncode != 0
    assert "error: rank 1 of 2: RuntimeError: disk on fire" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "run.json").exists()


# ---- steer-eval and intervene ------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torchrun gives each rank one intra-op thread; the reference runs with the same count (CPU GEMMs
    sum in another order with another thread count: last-bit differences in NLLs)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _same_report(a: Path, b: Path, name: str) -> None:
    ra, rb = json.loads((a / name).read_text()), json.loads((b / name).read_text())
    for r in (ra, rb):
        for k in ("created", "seconds"):
            r.pop(k, None)
        r.get("stats", {}).pop("seconds", None)
    assert ra == rb


def test_steer_eval_under_torchrun_equals_one_process(tmp_path, single):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat and\nShe made tea for her friend while\nHe opened the letter at\n")
    args = ["steer-eval", "--vectors", str(single), "--prompts", str(prompts), "--alphas", "0,4", "--layers", "1,3",
            "--seeds", "2", "--max-new-tokens", "6", "--random-draws", "3", "--batch-rows", "12"]  # fmt: skip
    with _threads(1):
        res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one"), "--no-cache"])
    assert res.exit_code == 0, res.output
    proc = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("steerable:") == 1
    _same_report(tmp_path / "one", tmp_path / "two", "steer_eval.json")
    # the rows of both ranks are in the shared row cache: a rerun computes nothing
    again = torchrun([*args, "--out", str(tmp_path / "again")], tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "steer_eval.json").read_text())["stats"]["computed"] == 0


def test_intervene_under_torchrun_equals_one_process(tmp_path, tiny_dir, single):
    from experiments.helpers import WORDS, word_prompts

    from steerkit.phase import CouplingConfig
    from steerkit.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    stories = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(12)]
    (tmp_path / "texts.txt").write_text("\n---\n".join(stories))
    cfg = TrainConfig(model=str(tiny_dir), texts=(str(tmp_path / "texts.txt"),), seq_len=16, batch_size=2, steps=3,
                      val_every=3, val_fraction=0.2, layer="0.5", coupling=CouplingConfig("additive", alpha=0.5))  # fmt: skip
    train(cfg, tmp_path / "phase1", handle_signals=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.text, "continuation": p.continuation}) + "\n"
                               for p in word_prompts(5)))  # fmt: skip
    # `--` after `-m steerkit`: torchrun would take `--run` for its own `--run-path`
    args = ["--", "intervene", "--run", str(tmp_path / "phase1"), "--force-R", "0.2", "--force-R", "0.9",
            "--prompts", str(prompts), "--seeds", "2", "--max-new-tokens", "5", "--permutations", "1000",
            "--bootstrap", "200", "--batch-prompts", "2", "--readout", str(single)]  # fmt: skip
    with _threads(1):
        res = CliRunner().invoke(main, [*args[1:], "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    proc = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report:") == 1
    _same_report(tmp_path / "one", tmp_path / "two", "intervention.json")


def test_quality_report_recapture_under_torchrun(tmp_path, tiny_dir, single):
    """quality-report -m on a run without activations: the ranks share the recapture, rank 0 writes."""
    import shutil

    for name in ("one", "two"):
        shutil.copytree(single, tmp_path / name)
        (tmp_path / name / "activations.safetensors").unlink()
    res = CliRunner().invoke(main, ["quality-report", str(tmp_path / "one"), "-m", str(tiny_dir)])
    assert res.exit_code == 0, res.output
    proc = torchrun(["quality-report", str(tmp_path / "two"), "-m", str(tiny_dir)], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("quality report:") == 1
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "activations.safetensors").read_bytes() == (two / "activations.safetensors").read_bytes()
    qa, qb = (json.loads((d / "quality.json").read_text()) for d in (one, two))
    assert {k: v for k, v in qa.items() if k not in ("run", "seconds")} == {
        k: v for k, v in qb.items() if k not in ("run", "seconds")
    }
