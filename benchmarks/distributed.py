"""torchrun benchmark: the same extract and a reduced steer-eval grid at world size 1 and 2 on this CPU.

World 1 is a plain `python -m steerkit` with OMP_NUM_THREADS=2 (two intra-op threads in one process);
world 2 is `torchrun --standalone --nproc-per-node 2 -m steerkit` (one thread per rank, gloo). Each
command starts from an empty activation / row cache (everything computed). Reported per command: wall
time of the whole launch (process start to exit, model loading included), the ratio world-1 / world-2,
and the share of each rank's command time spent inside collectives (gather, all_gather; waiting for the
slower rank included), read from STEERKIT_DIST_STATS. Goal: collectives < 5% of wall time. The
outputs of both world sizes are compared too (vectors byte-equal; steer-eval JSON equal up to the last
bits, as the thread counts differ).

    .venv/bin/python benchmarks/distributed.py [--model tiny|smollm2-135m] [--stories corpora] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def tiny_model(folder: Path) -> str:
    import tiny_models
    import tiny_tokenizer

    tiny_models.build("llama").save_pretrained(folder)
    tiny_tokenizer.build().save_pretrained(folder)
    return str(folder)


def launch(world: int, args: list[str], tmp: Path, tag: str) -> dict[str, object]:
    stats = tmp / f"{tag}.stats.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "STEERKIT_DIST_STATS": str(stats),
           "STEERKIT_CACHE": str(tmp / f"cache-{tag}")}  # fmt: skip
    env.pop("WORLD_SIZE", None)
    if world == 1:
        cmd = [sys.executable, "-m", "steerkit", *args]
        env["OMP_NUM_THREADS"] = "2"
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               "-m", "steerkit", "--", *args]  # fmt: skip
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(x) for x in stats.read_text().splitlines()] if stats.exists() else []
    comm = max((r["comm_s"] / r["wall_s"] for r in ranks), default=0.0)
    return {"wall_s": round(wall, 2), "ranks": ranks, "comm_share": round(comm, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="tiny (a random 4-block Llama) or a model spec")
    ap.add_argument("--stories", default=str(ROOT / "corpora"))
    ap.add_argument("--layers", default="1,3")
    ap.add_argument("--out", default=None, help="Write the results as JSON here.")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="steerkit-dist-bench-"))
    model = tiny_model(tmp / "tiny-llama") if a.model == "tiny" else a.model
    rows: dict[str, dict[str, object]] = {}
    for world in (1, 2):
        run = tmp / f"extract-w{world}"
        ex = ["extract", "--stories", a.stories, "--model", model, "--layers", a.layers, "--out", str(run),
              "--allow-untrained"]  # fmt: skip
        rows[f"extract w{world}"] = launch(world, ex, tmp, f"extract-w{world}")
        rows[f"extract w{world}"]["capture_s"] = json.loads((run / "run.json").read_text())["stats"]["capture_seconds"]
    same = (tmp / "extract-w1" / "readout.safetensors").read_bytes() == (
        tmp / "extract-w2" / "readout.safetensors"
    ).read_bytes()
    prompts = tmp / "prompts.txt"
    prompts.write_text("The cat sat on the mat and\nShe made tea for her friend while\nHe opened the letter at\n"
                       "The train left the station\nOnce upon a time a baker\nThe meeting began\n")  # fmt: skip
    for world in (1, 2):
        se = ["steer-eval", "--vectors", str(tmp / "extract-w1"), "--prompts", str(prompts), "--concepts",
              "calm,afraid,happy,sad", "--layers", a.layers.split(",")[0], "--alphas", "0,4,8", "--seeds", "2",
              "--max-new-tokens", "16", "--random-draws", "4", "--batch-rows", "24", "--out", str(tmp / f"se-w{world}")]  # fmt: skip
        rows[f"steer-eval w{world}"] = launch(world, se, tmp, f"se-w{world}")
    se1, se2 = (json.loads((tmp / f"se-w{w}" / "steer_eval.json").read_text()) for w in (1, 2))
    print(
        f"model {a.model}, stories {a.stories}; world 1 = one process with 2 threads, world 2 = torchrun, 1 thread/rank"
    )
    print(f"{'command':<16} {'wall s':>8} {'ratio w1/w2':>12} {'collectives':>12}")
    for cmd in ("extract", "steer-eval"):
        w1, w2 = rows[f"{cmd} w1"], rows[f"{cmd} w2"]
        ratio = float(w1["wall_s"]) / float(w2["wall_s"])  # type: ignore[arg-type]
        print(f"{cmd + ' w1':<16} {w1['wall_s']:>8} {'':>12} {'-':>12}")
        print(f"{cmd + ' w2':<16} {w2['wall_s']:>8} {ratio:>12.2f} {float(w2['comm_share']):>11.1%}")  # type: ignore[arg-type]
    print(f"extract vectors byte-equal across world sizes: {same}; steer-eval rows {se2['stats']['rows']}, "
          f"cells equal: {se1['cells'] == se2['cells']}")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "rows": rows, "vectors_equal": same}, indent=1))


if __name__ == "__main__":
    main()
