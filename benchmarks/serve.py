"""`steerkit serve` speed, as ratios within one run: a real uvicorn server on loopback, real HTTP clients
(closed loop: each client sends its next request when the last one finished), greedy, the same prompts.

(a) aggregate generated tokens/s and p50/p99 request latency at 1, 4, 8 (and 16) concurrent clients;
(b) batched serving at 8 clients vs one request at a time (--max-batch 1);
(c) steered vs unsteered throughput at 8 clients (each request steers a different concept);
(d) readout on (all concepts) vs off at 8 clients;
(e) time to first token at 1 client vs a bare generate() prefill + first token of the same prompt;
(f) the embedded engine at 8 clients vs a bare left-padded generate() of the same 8 prompts;
(g) with --engines embedded,vllm (in .venv-vllm): the vLLM engine's (a)-(d), and vLLM vs embedded at 8;
(h) with --peers: `transformers serve` (with and without --continuous-batching) at 8 clients, same prompts,
    same client, non-streamed (tokens from its usage).

    .venv/bin/python benchmarks/serve.py [--vectors RUN] [--max-tokens 64] [--rounds 2] [--peers] [--json out.json]
    .venv-vllm/bin/python benchmarks/serve.py --engines embedded,vllm
(default --vectors: a temporary extract of tests/fixtures/corpus_small on smollm2-135m, 2 layers)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPTS = ["The meeting began", "She opened the letter and", "It was late at night when", "The old man said",
           "After the storm, the village", "My first day at the new job", "The train stopped suddenly and",
           "When I got home, I found"]  # fmt: skip


def clients(url: str, n: int, rounds: int, body: dict[str, Any], steer: list[Any] | None,
            stream: bool = True) -> dict[str, Any]:  # fmt: skip
    """n closed-loop clients, each sending `rounds` requests; tokens/s over the whole wall time."""
    lat: list[float] = []
    ttft: list[float] = []
    toks = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client(timeout=600) as c:
            for k in range(rounds):
                b = {**body, "prompt": PROMPTS[(i + k) % len(PROMPTS)], "stream": stream}
                if steer:
                    b["steer"] = steer[i % len(steer)]
                t0 = time.perf_counter()
                first = None
                n_tok = 0
                if not stream:
                    b.pop("stream_options", None)
                    resp = c.post(url + "/v1/completions", json=b)
                    resp.raise_for_status()
                    n_tok = resp.json()["usage"]["completion_tokens"]
                    first = time.perf_counter() - t0
                    with lock:
                        lat.append(first)
                        ttft.append(first)
                        toks[0] += n_tok
                    continue
                with c.stream("POST", url + "/v1/completions", json=b) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            if first is None:
                                first = time.perf_counter() - t0
                            ch = json.loads(line[6:])
                            if ch.get("usage"):
                                n_tok = ch["usage"]["completion_tokens"]
                with lock:
                    lat.append(time.perf_counter() - t0)
                    ttft.append(first or 0.0)
                    toks[0] += n_tok

    t0 = time.perf_counter()
    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": n, "tok_s": toks[0] / wall, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "ttft_p50": statistics.median(ttft)}  # fmt: skip


def serve(lm: Any, cv: Any, run: Path, max_batch: int, engine: str = "embedded") -> Any:
    from steerkit.serve.app import create_app
    from steerkit.serve.context import Limits, ServeContext
    from steerkit.serve.engine import EmbeddedEngine
    from tests.serve.server import ServerThread

    ctx = ServeContext(lm, cv, run, "bench", cv.layers[len(cv.layers) // 2], limits=Limits(max_batch=max_batch))
    if engine == "vllm":
        from steerkit.serve.vllm_engine import VllmEngine

        return ServerThread(create_app(ctx, VllmEngine(ctx, max_batch=max_batch, max_queue=256, kv_cache_gb=0.5)))
    return ServerThread(create_app(ctx, EmbeddedEngine(lm, max_batch=max_batch, max_queue=256)))


def transformers_serve(model_dir: str, continuous: bool, max_tokens: int, rounds: int) -> dict[str, Any]:
    """`transformers serve` (the server a user of transformers would pick) at 8 clients, non-streamed."""
    import os
    import shutil
    import socket
    import subprocess

    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    args = [exe, "serve", model_dir, "--port", str(port), "--host", "127.0.0.1"]
    args += ["--continuous-batching"] if continuous else []
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": model_dir, "max_tokens": max_tokens, "temperature": 0}
        clients(url, 1, 1, body, None, stream=False)  # loads the model
        return clients(url, 8, rounds, body, None, stream=False)
    finally:
        proc.terminate()
        proc.wait(30)


def bare(lm: Any, max_tokens: int) -> dict[str, float]:
    """A bare left-padded generate() of the 8 prompts; and prefill + first token of one prompt."""
    from steerkit.generation import left_pad, pad_id

    tok = lm.tokenizer
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], pad_id(lm))
    with torch.inference_mode():
        walls = []
        for _ in range(3):  # the first is a warm-up; the median of the other two counts
            t0 = time.perf_counter()
            out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                    pad_token_id=pad_id(lm), min_new_tokens=max_tokens)  # fmt: skip
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls[1:])
        one = tok(PROMPTS[0], return_tensors="pt").input_ids
        firsts = []
        for _ in range(5):
            t0 = time.perf_counter()
            lm.model.generate(one, max_new_tokens=1, do_sample=False, pad_token_id=pad_id(lm))
            firsts.append(time.perf_counter() - t0)
    return {"tok_s": (out.shape[1] - ids.shape[1]) * len(PROMPTS) / wall, "ttft": statistics.median(firsts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", default=None)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--engines", default="embedded", help="embedded and/or vllm (vllm needs .venv-vllm)")
    ap.add_argument("--peers", action="store_true", help="also time `transformers serve` (with/without CB)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from click.testing import CliRunner

    from steerkit.cli import main as cli
    from steerkit.models import load
    from steerkit.vectors import ConceptVectors

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.vectors) if args.vectors else Path(tmp.name) / "run"
    if not args.vectors:
        r = CliRunner().invoke(cli, ["extract", "--stories", str(ROOT / "tests/fixtures/corpus_small"), "-m",
                                     args.model, "--layers", "10,15", "--out", str(run)])  # fmt: skip
        assert r.exit_code == 0, r.output
    cv = ConceptVectors.load(run)
    lm = load(args.model)
    body = {"max_tokens": args.max_tokens, "temperature": 0, "stream_options": {"include_usage": True}}
    steer = [{"concepts": {c: 4.0}} for c in cv.concepts]
    res: dict[str, Any] = {"bare": bare(lm, args.max_tokens)}
    for engine in args.engines.split(","):
        res[engine] = one_engine(engine, lm, cv, run, body, steer, args)
    if args.peers:
        res["transformers_serve"] = transformers_serve(lm.info["path"], False, args.max_tokens, args.rounds)
        res["transformers_serve_cb"] = transformers_serve(lm.info["path"], True, args.max_tokens, args.rounds)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def one_engine(engine: str, lm: Any, cv: Any, run: Path, body: dict[str, Any], steer: list[Any], args: Any
               ) -> dict[str, Any]:  # fmt: skip
    res: dict[str, Any] = {}
    with serve(lm, cv, run, 8, engine) as s:
        clients(s.url, 2, 1, body, None)  # warm-up
        res["scaling"] = [clients(s.url, n, args.rounds, body, None) for n in map(int, args.clients.split(","))]
        res["steered8"] = clients(s.url, 8, args.rounds, body, steer)
        res["plain8"] = clients(s.url, 8, args.rounds, body, None)
        res["readout8"] = clients(s.url, 8, args.rounds, {**body, "readout": True}, None)
        res["one"] = clients(s.url, 1, 3, {**body, "max_tokens": 1}, None)
    with serve(lm, cv, run, 1, engine) as s:
        res["serial8"] = clients(s.url, 8, 1, body, None)
    return res


def report(res: dict[str, Any]) -> None:
    bare_ = res["bare"]
    print(f"bare left-padded generate() of 8: {bare_['tok_s']:.1f} tok/s; prefill + first token {bare_['ttft']:.3f} s")
    for engine in ("embedded", "vllm"):
        if engine not in res:
            continue
        r = res[engine]
        at8 = next(x for x in r["scaling"] if x["clients"] == 8)
        print(f"\n{engine} engine\n| clients | tok/s | p50 s | p99 s |\n|---|---|---|---|")
        for x in r["scaling"]:
            print(f"| {x['clients']} | {x['tok_s']:.1f} | {x['p50']:.2f} | {x['p99']:.2f} |")
        r["ratios"] = {
            "batched8_vs_one_at_a_time": at8["tok_s"] / r["serial8"]["tok_s"],
            "steered_vs_unsteered": r["steered8"]["tok_s"] / r["plain8"]["tok_s"],
            "readout_on_vs_off": r["readout8"]["tok_s"] / r["plain8"]["tok_s"],
            "ttft_vs_bare_prefill": r["one"]["ttft_p50"] / bare_["ttft"],
            "engine8_vs_bare_batch": at8["tok_s"] / bare_["tok_s"],
        }
        for k, v in r["ratios"].items():
            print(f"{k}: {v:.3f}")
    if "embedded" in res and "vllm" in res:
        print(
            f"vllm / embedded at 8 clients: {res['vllm']['plain8']['tok_s'] / res['embedded']['plain8']['tok_s']:.2f}"
        )
    for k in ("transformers_serve", "transformers_serve_cb"):
        if k in res:
            emb = res.get("embedded", {}).get("plain8", {}).get("tok_s")
            ratio = f" (embedded / it: {emb / res[k]['tok_s']:.2f})" if emb else ""
            print(f"{k} at 8 clients: {res[k]['tok_s']:.1f} tok/s{ratio}")


if __name__ == "__main__":
    main()
