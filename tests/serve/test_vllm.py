"""The vLLM engine gives the embedded engine's answers: the same API over a real server, on SmolLM2-135M.

Runs in .venv-vllm (`make test-vllm`, CI's vLLM step, where STEERKIT_REQUIRE_VLLM=1 turns a missing vLLM
into a failure); in the main venv, which has no vLLM, it skips with that reason."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import pytest
import torch

try:
    import vllm  # noqa: F401
except ImportError:
    if os.environ.get("STEERKIT_REQUIRE_VLLM"):
        raise
    pytest.skip("vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm", allow_module_level=True)

from steerkit.serve.app import create_app
from steerkit.serve.context import Limits, load_context
from steerkit.serve.engine import EmbeddedEngine
from steerkit.serve.vllm_engine import VllmEngine

from .server import ServerThread

FIXTURE = Path(__file__).parents[1] / "fixtures" / "corpus_small"
PROMPTS = ["The meeting began", "She opened the letter and", "It was late at night when the phone"]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    from click.testing import CliRunner

    from steerkit.cli import main
    from steerkit.models import zoo

    if not zoo.is_present("smollm2-135m"):
        pytest.fail("smollm2-135m is not cached: run `make model` first")
    out = tmp_path_factory.mktemp("vllm") / "run"
    r = CliRunner().invoke(main, ["extract", "--stories", str(FIXTURE), "-m", "smollm2-135m", "--layers", "10,15",
                                  "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def servers(smol_run):
    ctx = load_context(str(smol_run), None, {}, Limits(max_new_tokens=64), None)
    vl = VllmEngine(ctx, max_batch=8, kv_cache_gb=0.25)
    with ServerThread(create_app(ctx, vl)) as v, ServerThread(create_app(ctx, EmbeddedEngine(ctx.lm))) as h:
        v.engine = vl
        yield v, h


def ask(s, **body):
    r = httpx.post(s.url + "/v1/completions", content=json.dumps({"temperature": 0, "max_tokens": 16, **body}),
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def close(a, b, rel=1e-5):
    """Readout rows equal within a relative tolerance of each row's scale (the first token's residual is huge)."""
    x, y = torch.tensor([t["scores"] for t in a]), torch.tensor([t["scores"] for t in b])
    assert x.shape == y.shape
    scale = y.abs().amax(-1, keepdim=True).clamp_min(1.0)
    err = float(((x - y).abs() / scale).max())
    assert err <= rel, f"relative readout error {err:.2e} > {rel:g}"
    return err


STEERS = [None, {"concepts": {"calm": 6.0}}, {"concepts": {"sad": 4.0, "happy": -2.0}, "layers": [10, 15]},
          {"concepts": {"angry": 3.0}, "mode": "ablate_then_add", "layers": [15]}]  # fmt: skip


@pytest.mark.parametrize("steer", STEERS, ids=["plain", "calm", "two", "ablate"])
def test_same_text_and_readouts_as_the_embedded_engine(servers, steer):
    v, h = servers
    for p in PROMPTS:
        body = {"prompt": p, "readout": {"prompt": True}, **({"steer": steer} if steer else {})}
        a, b = ask(v, **body), ask(h, **body)
        assert a["text"] == b["text"]
        assert [t["id"] for t in a["readout"]["tokens"]] == [t["id"] for t in b["readout"]["tokens"]]
        close(a["readout"]["prompt"][1:], b["readout"]["prompt"][1:])
        close(a["readout"]["tokens"], b["readout"]["tokens"])


def test_alpha_zero_is_bit_identical_and_mixed_batches_change_only_the_steered(servers):
    v, _ = servers
    base = [ask(v, prompt=p, readout=True) for p in PROMPTS]
    zero = ask(v, prompt=PROMPTS[0], readout=True, steer={"concepts": {"calm": 0.0}})
    assert zero == {**zero, "text": base[0]["text"], "readout": base[0]["readout"]}
    out: list = [None] * 3
    bodies = [{"prompt": PROMPTS[0], "readout": True, "steer": {"concepts": {"calm": 8.0}}},
              {"prompt": PROMPTS[1], "readout": True}, {"prompt": PROMPTS[2], "readout": True}]  # fmt: skip
    gate = threading.Barrier(3)

    def go(i):
        gate.wait()
        out[i] = ask(v, **bodies[i])

    th = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in th:
        t.start()
    for t in th:
        t.join(120)
    assert out[0]["text"] != base[0]["text"]
    for i in (1, 2):
        assert out[i]["text"] == base[i]["text"]
        close(out[i]["readout"]["tokens"], base[i]["readout"]["tokens"], rel=1e-5)


def test_streaming_chunks_carry_their_rows(servers):
    v, _ = servers
    whole = ask(v, prompt=PROMPTS[1], readout=True)
    with httpx.stream("POST", v.url + "/v1/completions", timeout=120,
                      json={"prompt": PROMPTS[1], "temperature": 0, "max_tokens": 16, "readout": True, "stream": True}) as r:  # fmt: skip
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert [t for c in chunks for t in c["choices"][0]["readout"]["tokens"]] == whole["readout"]["tokens"]


def test_cli_serves_with_vllm_and_stops_on_sigterm(smol_run):
    import signal

    from .test_cli import _start

    proc, url, lines = _start(["--vectors", str(smol_run), "--engine", "vllm", "--kv-cache-gb", "0.25"])
    try:
        assert any("engine: vLLM in-process" in ln for ln in lines)
        r = httpx.post(url + "/v1/completions", json={"prompt": "The meeting began", "max_tokens": 5,
                                                       "temperature": 0, "steer": {"concepts": {"calm": 4}}}, timeout=120)  # fmt: skip
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_steer_eval_on_vllm_equals_the_hf_path_greedy(smol_run, tmp_path):
    """`steer-eval --engine vllm`: the grid's greedy generations through the vLLM engine (concept and random
    arms, each row its own direction) give the same report as steerkit's own generation."""
    from click.testing import CliRunner

    from steerkit.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The meeting began\nShe opened the letter and\nIt was late at night when\n")
    reps = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        args = ["steer-eval", "--vectors", str(smol_run), "--concepts", "calm,sad", "--layers", "15", "--alphas",
                "0,6", "--greedy", "--seeds", "1", "--random-draws", "2", "--max-new-tokens", "10", "--prompts",
                str(prompts), "--out", str(out), "--no-cache", "--engine", engine]  # fmt: skip
        if engine == "vllm":
            args += ["--kv-cache-gb", "0.25"]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        reps[engine] = json.loads((out / "steer_eval.json").read_text())
    assert reps["vllm"]["source"]["engine"] == "vllm"
    for rep in reps.values():
        rep.pop("stats", None)
        rep["source"].pop("engine")
        rep.pop("sampler")
    assert reps["vllm"] == reps["hf"]
